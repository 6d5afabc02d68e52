"""Streamed training data: text read, tokenized and packed on the fly, for corpora too big to prepare before step one.

    documents = stream_text_dataset("../shared/data/imdb", split="unsup")     # or a Hub id; nothing is cached
    blocks = StreamedExamples(documents, mlm_blocks(tokenizer, 512), process_index=0, num_processes=1, seed=0)
    train(model, blocks, MLMCollator(tokenizer), run)                        # the shared loop, --max_steps

The examples are those of the map-style path (`pack_for_mlm`, `prepare_translation`, ...: the same functions, on
batches of the same 1,000 documents), shuffled in a seeded buffer of `buffer_size` examples. Each process reads its
own part of the stream (`datasets.distributed.split_dataset_by_node`: whole files where they divide evenly, else
every n-th document), so the processes together read the corpus once per epoch, without overlap; when a process
reaches the end of its part it starts its next epoch, so a streamed run is measured in steps, not epochs.

Its position is a `state_dict()`: the stream's (`datasets`' own: file and row), the examples made but not yet served
and the shuffle buffer's content and generator. The loop saves it with every checkpoint, so a resumed run serves
exactly the examples an uninterrupted one would, without going through the epoch again. A file that turns out to be
truncated or undecodable mid-stream stops the run with its name and the line it cannot read on from.
"""

import csv
import gzip
import itertools
import logging
import os
import random
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from accelerate import PartialState
from datasets import IterableDataset, load_dataset
from datasets.distributed import split_dataset_by_node
from transformers import PreTrainedTokenizerBase

from ..tokenization import language_tag, target_language_token
from .loading import _file_format, _hub_offline, _local_files, _split_name, aligned_files, is_local

logger = logging.getLogger(__name__)

DOCUMENTS_PER_BATCH = 1000  # what `datasets.map(batched=True)` hands the map-style path's functions at a time
LINE_FORMATS = ("text", "json", "csv")  # the builders of files read line by line (not parquet)


def stream_text_dataset(spec: str | os.PathLike, split: str = "train", name: str | None = None) -> IterableDataset:
    """One split of local files (a folder, file or glob, as `load_text_dataset` reads them) or of a Hub data set, as a
    `datasets` stream: nothing is downloaded whole or cached. `StreamedExamples` drops (and counts) the rows with an
    empty text."""
    if not is_local(spec):
        if _hub_offline():
            raise ConnectionError(f"Cannot stream {spec!r}: HF_HUB_OFFLINE is set and streaming needs the Hub.")
        return load_dataset(str(spec), name, split=split, streaming=True)
    named = not Path(spec).is_dir()
    files = [
        path for path in _local_files(spec) if _file_format(path, named) and (named or _split_name(path) == split)
    ]
    if not files:
        raise FileNotFoundError(f"{str(spec)!r} holds no files of split {split!r} to stream.")
    builders = {_file_format(path, named) for path in files}
    if len(builders) != 1:
        raise ValueError(f"Cannot stream {spec}: the split's files are of several formats ({sorted(builders)}).")
    builder = builders.pop()
    options = {"delimiter": "\t", "quoting": csv.QUOTE_NONE, "keep_default_na": False} if builder == "csv" else {}
    stream = load_dataset(
        builder, data_files={split: [str(path) for path in files]}, split=split, streaming=True, **options
    )
    stream.info.description = "\n".join(map(str, files))  # where a row comes from, for errors
    return stream


def _aligned_lines(sources: list[str], targets: list[str], src: str, tgt: str) -> Iterator[dict]:
    """The pairs of aligned files, line by line, both sides in step; files of different lengths are an error."""
    for source, target in zip(sources, targets, strict=True):
        opener = [gzip.open if name.endswith(".gz") else open for name in (source, target)]
        with opener[0](source, "rt", encoding="utf-8") as left, opener[1](target, "rt", encoding="utf-8") as right:
            for number, (line, other) in enumerate(itertools.zip_longest(left, right), start=1):
                if line is None or other is None:
                    raise ValueError(f"Parallel files differ in length: {source} and {target} part at line {number}.")
                yield {src: line.rstrip("\n"), tgt: other.rstrip("\n")}


def stream_parallel_dataset(
    spec: str | os.PathLike, src: str, tgt: str, split: str = "train", name: str | None = None
) -> IterableDataset:
    """One split of sentence pairs as a stream with columns `src` and `tgt`: aligned `{split}.{language}[.gz]` files
    read side by side, or a Hub id / local jsonl or parquet files with a `translation` column or a column per
    language (as `load_parallel_dataset` reads them)."""
    aligned = aligned_files(spec).get(split, {}) if is_local(spec) else {}
    if aligned:
        if src not in aligned or tgt not in aligned:
            raise ValueError(f"{str(spec)!r} has no {src}-{tgt} pair of {split!r} files: {sorted(aligned)}.")
        files = {"sources": [str(aligned[src])], "targets": [str(aligned[tgt])], "src": src, "tgt": tgt}
        stream = IterableDataset.from_generator(_aligned_lines, gen_kwargs=files)
        stream.info.description = str(aligned[src])
        return stream
    stream = stream_text_dataset(spec, split, name)

    def columns(batch: dict) -> dict:
        if "translation" in batch:
            return {language: [pair[language] for pair in batch["translation"]] for language in (src, tgt)}
        return {language: batch[language] for language in (src, tgt)}

    return stream.map(columns, batched=True, remove_columns=stream.column_names)


def translation_pairs(
    tokenizer: PreTrainedTokenizerBase,
    src: str,
    tgt: str,
    max_source_length: int,
    max_target_length: int,
    overlong: str = "truncate",
) -> Callable:
    """What `prepare_translation` makes of a batch of pairs: source + `</s>`, `<2tgt>` + target + `</s>`; pairs over
    the limits cut to them or left out (`overlong`), counted in the log batch by batch."""
    from .preparation import _pair_fits, _tokenize_pairs, _truncate_pair

    if overlong not in ("truncate", "drop"):
        raise ValueError(f"overlong={overlong!r} is not supported; choose 'truncate' or 'drop'.")
    tag = target_language_token(tokenizer, tgt)
    if tag is None:
        raise ValueError(f"Unknown target language {tgt!r}: the tokenizer has no {language_tag(tgt)!r} tag.")
    limits = {"max_source_length": max_source_length, "max_target_length": max_target_length}

    def make(batch: dict) -> list[dict]:
        tokenized = _tokenize_pairs(batch, tokenizer, src, tgt, tag)
        pairs = [dict(zip(tokenized, row, strict=True)) for row in zip(*tokenized.values(), strict=True)]
        fitting = [pair for pair in pairs if _pair_fits(pair, **limits)]
        if too_long := len(pairs) - len(fitting):
            done = "truncated" if overlong == "truncate" else "dropped"
            logger.info("stream: %d of %d pairs over the length limits were %s", too_long, len(pairs), done)
        return [_truncate_pair(pair, **limits) for pair in pairs] if overlong == "truncate" else fitting

    return make


def stream_monolingual_dataset(spec: str | os.PathLike, language: str, split: str = "train") -> IterableDataset:
    """One language's texts as a stream with columns `text` and `language`: the `language` side of aligned parallel
    files, or whatever `stream_text_dataset` reads (as `load_monolingual_dataset` reads them)."""
    aligned = aligned_files(spec).get(split, {}) if is_local(spec) else {}
    if aligned and language not in aligned:
        raise ValueError(f"{str(spec)!r} has no {language!r} side of split {split!r}: {sorted(aligned)}.")
    stream = stream_text_dataset(aligned[language] if aligned else spec, split)
    return stream.map(lambda batch: {"language": [language] * len(batch["text"])}, batched=True)


def denoising_segments(tokenizer: PreTrainedTokenizerBase, max_length: int) -> Callable:
    """What `prepare_denoising` makes of a batch of documents (each with its `language`): sentences gathered into
    segments of at most `max_length` tokens, the target tagged with the language; long sentences cut, and counted."""
    from .preparation import SENTENCE_END, _denoising_segments

    def make(batch: dict) -> list[dict]:
        made = []
        for language in dict.fromkeys(batch["language"]):  # the batch's languages, in order
            tag = target_language_token(tokenizer, language)
            if tag is None:
                raise ValueError(
                    f"Unknown language {language!r}: the tokenizer has no {language_tag(language)!r} tag."
                )
            texts = [text for text, lang in zip(batch["text"], batch["language"], strict=True) if lang == language]
            segments = _denoising_segments({"text": texts}, tokenizer, tag, max_length, "text", SENTENCE_END)
            if cut := sum(segments.pop("cut_sentences")):
                logger.info("stream: %d %s sentences longer than %d tokens were cut", cut, language, max_length - 2)
            made += [dict(zip(segments, row, strict=True)) for row in zip(*segments.values(), strict=True)]
        return made

    return make


def mlm_blocks(tokenizer: PreTrainedTokenizerBase, block_size: int, text_column: str = "text") -> Callable:
    """What `pack_for_mlm` makes of a batch of documents: `[CLS] doc [SEP]` pieces packed into blocks."""
    from .preparation import _pack_documents

    def make(batch: dict) -> list[dict]:
        packed = _pack_documents(batch, tokenizer, block_size, text_column)
        return [
            {"input_ids": ids, "lengths": lengths}
            for ids, lengths in zip(packed["input_ids"], packed["lengths"], strict=True)
        ]

    return make


class StreamError(ValueError):
    """A streamed file could not be read on (truncated, corrupt, undecodable)."""


class StreamedExamples(torch.utils.data.IterableDataset):
    """Training examples made on the fly from a `datasets` stream of documents (this process's part of it), shuffled
    in a seeded buffer; `state_dict()` / `load_state_dict()` save and restore the exact position.

    Args:
        documents: the stream (`stream_text_dataset`), read `DOCUMENTS_PER_BATCH` documents at a time.
        make: a batch of documents (a dict of columns) -> the examples made of them, in order (`mlm_blocks`).
        process_index, num_processes: which part of the stream this process reads (default: this process's, as
            accelerate knows it); its dataloader workers, if any, each read some of that part's files (`datasets`
            splits a stream among workers by files).
        seed: the shuffle buffer's generator (each part draws its own, from `seed` and the part's index).
        buffer_size: examples held for shuffling (0: served in stream order).
        text_column: documents with an empty text here (or in any of several columns) are dropped and counted.
    """

    def __init__(
        self,
        documents: IterableDataset,
        make: Callable[[dict], list[dict]],
        process_index: int | None = None,
        num_processes: int | None = None,
        seed: int = 0,
        buffer_size: int = 10_000,
        text_column: str | tuple[str, ...] = "text",
    ):
        state = PartialState()
        self.process_index = state.process_index if process_index is None else process_index
        self.num_processes = state.num_processes if num_processes is None else num_processes
        self.source, self.seed = documents, seed
        self.files = (documents.info.description or "").splitlines()
        self.make, self.buffer_size = make, buffer_size
        self.text_columns = (text_column,) if isinstance(text_column, str) else tuple(text_column)
        self.documents, self.generator = None, None  # this process's (or worker's) part, set when iterated
        self.epoch, self.pending, self.buffer, self.dropped = 0, [], [], 0
        self.source_state = None  # the stream's position after the documents that made `pending` and `buffer`

    def take_part(self) -> None:
        """This process's part of the stream (which `datasets` splits again by files among the dataloader workers,
        if any), and the shuffle generator of this process's (or worker's) own (unless a restored state brought
        one)."""
        worker = torch.utils.data.get_worker_info()
        part = self.process_index * (worker.num_workers if worker else 1) + (worker.id if worker else 0)
        self.documents = split_dataset_by_node(self.source, self.process_index, self.num_processes)
        if self.generator is None:
            self.generator = random.Random(self.seed * 1_000_003 + part)

    def state_dict(self) -> dict:
        return {
            "epoch": self.epoch,
            "source": self.source_state,
            "pending": [{key: np.asarray(value) for key, value in example.items()} for example in self.pending],
            "buffer": [{key: np.asarray(value) for key, value in example.items()} for example in self.buffer],
            "generator": self.generator and self.generator.getstate(),
            "dropped": self.dropped,
        }

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.source_state, self.dropped = state["epoch"], state["source"], state["dropped"]
        self.pending = [{key: value.tolist() for key, value in example.items()} for example in state["pending"]]
        self.buffer = [{key: value.tolist() for key, value in example.items()} for example in state["buffer"]]
        if state["generator"] is not None:
            self.generator = random.Random()
            self.generator.setstate(state["generator"])

    def __iter__(self) -> Iterator[dict]:
        """The examples, epoch after epoch, without end (none in a dataloader worker that `datasets` gives no file
        of the process's part: more workers than files)."""
        self.take_part()
        worker = torch.utils.data.get_worker_info()
        if worker is not None and worker.id >= self.documents.num_shards:
            logger.warning(
                "stream: dataloader worker %d has no file to read (%d files)", worker.id, self.documents.num_shards
            )
            return
        while True:
            made = 0
            for example in self.made():
                made += 1
                if not self.buffer_size:
                    yield example
                    continue
                self.buffer.append(example)
                if len(self.buffer) >= self.buffer_size:
                    yield self.take()
            if not made and not self.buffer:
                raise ValueError(f"This process's part of the stream holds no documents (epoch {self.epoch}).")
            logger.info("stream: epoch %d done (%d empty documents dropped)", self.epoch, self.dropped)
            self.epoch, self.source_state, self.dropped = self.epoch + 1, None, 0

    def take(self) -> dict:
        """A random example out of the buffer (swapped with the last, which is cheaper than a removal)."""
        index = self.generator.randrange(len(self.buffer))
        self.buffer[index], self.buffer[-1] = self.buffer[-1], self.buffer[index]
        return self.buffer.pop()

    def made(self) -> Iterator[dict]:
        """This epoch's examples in stream order, starting where the state says (`pending` first)."""
        if self.documents is None:
            self.take_part()
        self.documents.set_epoch(self.epoch)
        if self.source_state is not None:
            self.documents.load_state_dict(self.source_state)
        rows = iter(self.documents)
        while True:
            while self.pending:
                yield self.pending.pop(0)
            batch = self.read(rows)
            if not batch:
                return
            self.pending = self.make({column: [row[column] for row in batch] for column in batch[0]})
            self.source_state = self.documents.state_dict()

    def read(self, rows: Iterator[dict]) -> list[dict]:
        """The next documents (up to DOCUMENTS_PER_BATCH, empty texts dropped), or a StreamError naming the file."""
        batch = []
        while len(batch) < DOCUMENTS_PER_BATCH:
            try:
                row = next(rows)
            except StopIteration:
                break
            except (EOFError, OSError, UnicodeDecodeError, zlib.error, gzip.BadGzipFile) as error:
                raise StreamError(self.where(error)) from error
            if any(row.get(column) is None or not str(row[column]).strip() for column in self.text_columns):
                self.dropped += 1
                continue
            batch.append(row)
        return batch

    def where(self, error: Exception) -> str:
        """Which file and line the stream failed in: the file its state names (the shard it was reading) or, when
        that one reads whole, the first other file that does not."""
        state = self.documents.state_dict()
        while "examples_iterable" in state:
            state = state["examples_iterable"]
        shard, row = state.get("shard_idx", 0), state.get("shard_example_idx", 0)
        named = [self.files[shard]] if shard < len(self.files) else []
        problem = f"it is truncated, corrupt or not UTF-8 ({type(error).__name__}: {error})"
        for name in [*named, *(name for name in self.files if name not in named)]:
            if line := unreadable_line(name):
                return f"Cannot read {name} at line {line}: {problem}."
        name = named[0] if named else f"shard {shard} of the stream"
        return f"Cannot read {name} after row {row}: {problem}."


def unreadable_line(path: str) -> int | None:
    """The number of the first line of a local text file (gzipped or not) that cannot be read whole as UTF-8 (not
    UTF-8, or cut off by a truncated or corrupt file), or None when every line reads (or the file is no text).
    datasets reads text files in chunks of megabytes, so its own position says no more than the chunk."""
    if not Path(path).is_file() or _file_format(Path(path), named=True) not in LINE_FORMATS:
        return None
    whole = 0
    try:
        with (gzip.open if path.endswith(".gz") else open)(path, "rb") as file:
            for line in file:
                line.decode("utf-8")
                whole += 1
    except (EOFError, OSError, UnicodeDecodeError, zlib.error):
        return whole + 1
    return None


__all__ = [
    "StreamError",
    "StreamedExamples",
    "denoising_segments",
    "mlm_blocks",
    "stream_monolingual_dataset",
    "stream_parallel_dataset",
    "stream_text_dataset",
    "translation_pairs",
]
