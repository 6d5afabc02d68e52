"""Everything between raw text and batches, shared by every training script.

- Loading with `datasets`: `load_text_dataset` and `load_parallel_dataset` take a Hub id (with config and split) or
  local files: a directory, a glob or a file of `.txt[.gz]` (one text per line), `.jsonl[.gz]`, `.tsv[.gz]` or
  `.parquet`; for parallel data also aligned `{split}.{lang}[.gz]` files (the Multi30k layout) or Hub sets with a
  `translation` column. Splits come out as a `DatasetDict` with a `validation` split (carved from train, seeded,
  where the data has none). Files load through `datasets`, so later runs reuse its cache, tokenization included.
  `load_monolingual_dataset` reads one language: a side of aligned parallel files, or any text data.
- Preparation: `pack_for_mlm` tokenizes documents and packs them into blocks that remember where each document
  starts; `prepare_translation` tokenizes pairs and truncates or drops over-long ones, saying how many;
  `prepare_denoising` cuts documents into segments of whole sentences for denoising autoencoders. Each result is
  cached under a fingerprint of the data, the tokenizer's content and the settings, so a later run reads it back and
  a different tokenizer never does. Empty data is refused by source and split, not passed on.
- Collators: `MLMCollator` (dynamic masking, 80/10/10, optional whole-word masking, padded or padding-free
  batches), `Seq2SeqCollator` (labels padded with -100, or padding-free) and `DenoisingCollator` (BART's sentence
  permutation and text infilling); `build_dataloader` batches, optionally grouping examples of similar length.

Nothing is dropped or cut silently: every such step logs its count.
"""

import csv
import glob
import gzip
import inspect
import json
import logging
import os
import re
import socket
import zlib
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import datasets.config
import pyarrow
import pyarrow.parquet
import tokenizers
import torch
import transformers
from datasets import Dataset, DatasetDict, concatenate_datasets, load_dataset
from datasets.fingerprint import Hasher
from transformers import DataCollatorForSeq2Seq, PreTrainedTokenizerBase
from transformers.trainer_pt_utils import LengthGroupedSampler

from .tokenization import language_tag, target_language_token

logger = logging.getLogger(__name__)

SPLIT_ALIASES = {"val": "validation", "valid": "validation", "dev": "validation"}
FORMATS = {".txt": "text", ".jsonl": "json", ".json": "json", ".tsv": "csv", ".parquet": "parquet"}
NOT_DATA = ("readme", "license", "source", "citation")  # documentation files that sit beside data


# --------------------------------------------------------------------------------------------------------------------
# Locating data


def _file_format(path: Path) -> str | None:
    if path.name.lower().startswith(NOT_DATA):
        return None
    suffixes = path.suffixes[-2:] if path.suffix == ".gz" else path.suffixes[-1:]
    return FORMATS.get(suffixes[0]) if suffixes else None


def _split_name(path: Path) -> str:
    name = path.name.split(".")[0]
    return SPLIT_ALIASES.get(name, name)


def is_local(spec: str | os.PathLike) -> bool:
    """A path that exists, or one that can only be meant as a path (absolute, relative with ./, a glob, a file
    name with an extension); anything else is taken for a Hub id."""
    text = str(spec)
    if Path(text).expanduser().exists() or glob.has_magic(text):
        return True
    return text.startswith(("/", "./", "../", "~")) or text.count("/") > 1 or Path(text).suffix in (*FORMATS, ".gz")


def _local_files(spec: str | os.PathLike) -> list[Path]:
    path = Path(spec).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file())
    elif path.is_file():
        files = [path]
    else:
        files = sorted(Path(p) for p in glob.glob(str(path)))
        if not files:
            raise FileNotFoundError(f"No such file or directory, and no file matches: {str(spec)!r}")
    return files


def _hub_offline() -> bool:
    """HF_HUB_OFFLINE, as huggingface_hub or datasets read it (each when imported)."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE or datasets.config.HF_HUB_OFFLINE)


def _hub_reachable(timeout: float = 3.0) -> bool:
    from huggingface_hub import constants

    endpoint = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((endpoint.hostname, endpoint.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _load_hub(spec: str, name: str | None, split: str | None) -> DatasetDict:
    """A Hub data set; offline (HF_HUB_OFFLINE=1), the copy in the datasets cache."""
    if _hub_offline():
        try:
            loaded = load_dataset(spec, name, split=split)
        except (ConnectionError, FileNotFoundError, ValueError) as error:
            raise ConnectionError(
                f"Cannot load the data set {spec!r} offline (HF_HUB_OFFLINE is set): it is no local path, and it is "
                f"not in the datasets cache ({datasets.config.HF_DATASETS_CACHE}; {error}). Load it once with the "
                "Hub reachable, or give a local directory or files instead (e.g. ../shared/data/multi30k)."
            ) from error
    elif not _hub_reachable():
        raise ConnectionError(
            f"Cannot load the data set {spec!r}: it is no local path, and the Hugging Face Hub cannot be reached "
            "(no network, or a firewall). Give a local directory or files instead (e.g. ../shared/data/multi30k); a "
            "data set already in your datasets cache loads with HF_HUB_OFFLINE=1."
        )
    else:
        loaded = load_dataset(spec, name, split=split)
    return DatasetDict({split: loaded}) if split is not None else loaded


def _open_bytes(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb")


def _unreadable(path: Path, error: Exception) -> ValueError:
    """The error to raise for a file that cannot be read through (its cause: `error`)."""
    what = "a truncated or corrupt gzip file" if path.suffix == ".gz" else "corrupt, or not what its name says"
    return ValueError(
        f"Cannot read {path}: it is {what} ({type(error).__name__}: {error}). Download or write it again."
    )


def _check_file(path: Path, builder: str) -> None:
    """Read `path` through and raise a ValueError naming it (and the line of the first undecodable bytes of a text
    file) where it is truncated or corrupt: `datasets` says what went wrong, but not in which file."""
    try:
        if builder == "parquet":
            if path.suffix == ".gz":
                with _open_bytes(path) as handle:
                    while handle.read(1 << 20):
                        pass
            else:
                pyarrow.parquet.ParquetFile(path).close()
            return
        with _open_bytes(path) as handle:
            for number, line in enumerate(handle, start=1):
                try:
                    line.decode("utf-8")
                except UnicodeDecodeError as error:
                    raise ValueError(
                        f"{path}: line {number} is not valid UTF-8 ({error.reason} at byte {error.start} of the line)."
                    ) from None
    except (EOFError, OSError, zlib.error, pyarrow.ArrowException) as error:
        raise _unreadable(path, error) from error


def _load_files(files: list[Path], builder: str | None = None) -> Dataset:
    """One split from files of one format (`builder`, or the files' own), through `datasets` (and its cache)."""
    formats = {builder} if builder else {_file_format(path) for path in files}
    if len(formats) != 1 or None in formats:
        names = ", ".join(path.name for path in files)
        raise ValueError(
            f"Cannot read {names}: a split needs files of one format among {', '.join(FORMATS)} (.gz too)."
        )
    builder = formats.pop()
    for path in files:  # `datasets` fails on an empty file with a bare StopIteration
        try:
            with _open_bytes(path) as handle:
                empty = not handle.read(1)
        except (EOFError, OSError, zlib.error) as error:
            raise _unreadable(path, error) from error
        if empty:
            raise ValueError(f"{path} is empty: its split would hold no examples.")
    options = {"delimiter": "\t", "quoting": csv.QUOTE_NONE, "keep_default_na": False} if builder == "csv" else {}
    try:
        return load_dataset(builder, data_files=[str(path) for path in files], split="train", **options)
    except Exception as error:
        for path in files:
            _check_file(path, builder)
        names = ", ".join(str(path) for path in files)
        cause = error.__cause__ or error
        raise ValueError(f"Cannot load {names} as {builder} data: {type(cause).__name__}: {cause}") from error


def _drop_empty(dataset: DatasetDict, columns: list[str], what: str) -> DatasetDict:
    """Drop (and count) the rows with an empty text in `columns`; refuse a split left with none."""
    for split, data in dataset.items():
        kept = data.filter(lambda row: all(row[c] is not None and str(row[c]).strip() for c in columns))
        if len(kept) == 0:
            held = (
                f"all its {len(data)} rows have an empty {' or '.join(map(repr, columns))}" if len(data) else "no rows"
            )
            raise ValueError(
                f"{what}: split {split!r} holds no text ({held}); give data with text, or leave the split out."
            )
        if len(kept) < len(data):
            logger.warning("%s %s: dropped %d empty rows of %d", what, split, len(data) - len(kept), len(data))
        dataset[split] = kept
    return dataset


def _ensure_validation(
    dataset: DatasetDict, validation_fraction: float, seed: int, train: str = "train"
) -> DatasetDict:
    """Carve a seeded validation split from the `train` split where the data has none."""
    if "validation" in dataset or train not in dataset:
        return dataset
    parts = dataset[train].train_test_split(test_size=validation_fraction, seed=seed)
    logger.info("No validation split: took %d of %d %s rows (seed %d)", len(parts["test"]), len(dataset[train]), train,
                seed)  # fmt: skip
    return DatasetDict({**dataset, train: parts["train"], "validation": parts["test"]})


# --------------------------------------------------------------------------------------------------------------------
# Loading


def load_text_dataset(
    spec: str | os.PathLike,
    name: str | None = None,
    split: str | None = None,
    text_column: str | None = "text",
    validation_fraction: float = 0.05,
    seed: int = 0,
) -> DatasetDict:
    """Texts (and whatever columns come with them, labels say) as a `DatasetDict` with a validation split.

    Args:
        spec: a Hub id, or a local file, directory or glob. In a directory each file is a split named by its stem:
            `train.jsonl.gz` -> train, `unsup.txt.gz` -> unsup, `dev.tsv` -> validation.
        name: the Hub config (Hub ids only). split: load only this split (for local data too).
        text_column: the column that must hold text in every split; empty texts are dropped and counted (None:
            no check, no validation split; for callers that check columns themselves).
        validation_fraction, seed: how the validation split is carved from train when there is none.
    """
    if is_local(spec):
        by_split: dict[str, list[Path]] = defaultdict(list)
        for path in _local_files(spec):
            if _file_format(path) is not None:
                by_split[_split_name(path) if Path(spec).is_dir() else "train"].append(path)
        if not by_split:
            raise FileNotFoundError(f"{str(spec)!r} holds no {', '.join(FORMATS)} files (.gz too).")
        if split is not None:  # one split, as for a Hub id
            if split not in by_split:
                raise ValueError(f"{str(spec)!r} has no split {split!r}; its files give {sorted(by_split)}.")
            by_split = {split: by_split[split]}
        dataset = DatasetDict({split_name: _load_files(files) for split_name, files in by_split.items()})
    else:
        dataset = _load_hub(str(spec), name, split)
    if text_column is None:  # the caller checks the columns (parallel data)
        return dataset
    for split_name, data in dataset.items():
        if text_column not in data.column_names:
            raise ValueError(
                f"Split {split_name!r} of {str(spec)!r} has no {text_column!r} column; it has {data.column_names}."
            )
    return _ensure_validation(_drop_empty(dataset, [text_column], str(spec)), validation_fraction, seed)


def _aligned_files(spec: str | os.PathLike) -> dict[str, dict[str, Path]]:
    """{split: {language: file}} for files named {split}.{language}[.gz]."""
    files: dict[str, dict[str, Path]] = defaultdict(dict)
    for path in _local_files(spec):
        parts = path.name.removesuffix(".gz").split(".")
        if len(parts) == 2 and parts[1].isalpha() and f".{parts[1]}" not in FORMATS and parts[1] != "md":
            files[SPLIT_ALIASES.get(parts[0], parts[0])][parts[1]] = path
    tests = [split_name for split_name in files if split_name.startswith("test")]
    if len(tests) == 1 and tests[0] != "test":  # e.g. Multi30k's test_2016_flickr
        files["test"] = files.pop(tests[0])
    return files


def _load_aligned(spec: str | os.PathLike, files: dict[str, dict[str, Path]], src: str, tgt: str) -> DatasetDict:
    languages = sorted({language for by_language in files.values() for language in by_language})
    for language in (src, tgt):
        if language not in languages:
            raise ValueError(
                f"{str(spec)!r} has no {language!r} side: its files give languages {', '.join(languages)} "
                "(aligned files are named {split}.{language}[.gz])."
            )
    splits = {}
    for split_name, by_language in files.items():
        if src not in by_language or tgt not in by_language:
            logger.warning("%s: split %r lacks the %s-%s pair, left out", spec, split_name, src, tgt)
            continue
        sides = [_load_files([by_language[language]], builder="text") for language in (src, tgt)]
        if len(sides[0]) != len(sides[1]):
            raise ValueError(
                f"Parallel files differ in length: {by_language[src]} has {len(sides[0])} lines, "
                f"{by_language[tgt]} has {len(sides[1])}."
            )
        splits[split_name] = concatenate_datasets(
            [side.rename_column("text", language) for side, language in zip(sides, (src, tgt), strict=True)], axis=1
        )
    return DatasetDict(splits)


def _pair_columns(data: Dataset, src: str, tgt: str, spec: str | os.PathLike) -> Dataset:
    """Columns `src` and `tgt` from a `translation` column of {language: text} dicts, or from language columns."""
    if "translation" in data.column_names:
        languages = sorted(data[0]["translation"])
        if src not in languages or tgt not in languages:
            raise ValueError(f"{str(spec)!r} translates between {', '.join(languages)}; it has no {src}-{tgt} pair.")
        return data.map(
            lambda batch: {language: [pair[language] for pair in batch["translation"]] for language in (src, tgt)},
            batched=True,
            remove_columns=data.column_names,
        )
    if src not in data.column_names or tgt not in data.column_names:
        raise ValueError(f"{str(spec)!r} has no {src}-{tgt} pair: its columns are {data.column_names}.")
    return data.select_columns([src, tgt])


def load_parallel_dataset(
    spec: str | os.PathLike,
    src: str,
    tgt: str,
    name: str | None = None,
    validation_fraction: float = 0.05,
    seed: int = 0,
) -> DatasetDict:
    """Sentence pairs as a `DatasetDict` whose columns are the two language codes (`en`, `de`).

    Args:
        spec: a directory of aligned `{split}.{lang}[.gz]` files (train.en.gz <-> train.de.gz); or a Hub id, or local
            jsonl/parquet/tsv files, with a `translation` column of `{lang: text}` dicts or one column per language.
        src, tgt: language codes. Pairs with an empty side are dropped and counted.
    """
    if src == tgt:
        raise ValueError(f"Source and target language are both {src!r}.")
    aligned = _aligned_files(spec) if is_local(spec) else {}
    if aligned:
        dataset = _load_aligned(spec, aligned, src, tgt)
    else:  # a Hub id, or local jsonl/parquet/tsv files with a `translation` column or one column per language
        dataset = (
            load_text_dataset(spec, name=name, text_column=None)
            if is_local(spec)
            else _load_hub(str(spec), name, None)
        )
        dataset = DatasetDict({split: _pair_columns(data, src, tgt, spec) for split, data in dataset.items()})
    return _ensure_validation(_drop_empty(dataset, [src, tgt], str(spec)), validation_fraction, seed)


def parse_named_source(entry: str, default_split: str | None = None, what: str = "name") -> tuple[str, str, str]:
    """`name=path-or-hub-id:split` (as scripts take data sets on the command line) -> (name, spec, split). The split
    may be left out when there is a `default_split`; a `:` followed by a `/` belongs to the path, not a split."""
    name, _, spec = entry.partition("=")
    split = default_split
    if ":" in spec and "/" not in spec.rpartition(":")[2]:
        spec, _, split = spec.rpartition(":")
    if not name or not spec or not split:
        form = f"{what}=path-or-hub-id" + ("[:split]" if default_split else ":split")
        raise ValueError(f"{entry!r} is not of the form {form}.")
    return name, spec, split


def monolingual_source_name(language: str, spec: str | os.PathLike) -> str:
    """The name of a `language=path-or-hub-id` text source in a run's metrics: `<last part of the path>.<language>`."""
    return f"{Path(str(spec).rstrip('/')).name}.{language}"


def load_monolingual_dataset(spec: str | os.PathLike, language: str, split: str | None = None) -> DatasetDict:
    """Texts in one language, as a `DatasetDict` with a `text` column and a validation split: the `language` side of
    aligned parallel files (`train.de.gz`, `val.de.gz`, ... of Multi30k), or any data `load_text_dataset` reads.
    `split`: only that split (plus the validation split, carved from it where the data has none)."""
    aligned = _aligned_files(spec) if is_local(spec) else {}
    if aligned:
        languages = sorted({lang for by_language in aligned.values() for lang in by_language})
        if language not in languages:
            raise ValueError(
                f"{str(spec)!r} has no {language!r} side: its files give languages {', '.join(languages)}."
            )
        dataset = DatasetDict({name: _load_files([by_language[language]], builder="text")
                               for name, by_language in aligned.items() if language in by_language})  # fmt: skip
        dataset = _ensure_validation(_drop_empty(dataset, ["text"], str(spec)), 0.05, 0)
    else:
        dataset = load_text_dataset(spec)
    if split is not None:
        if split not in dataset:
            raise ValueError(f"{str(spec)!r} has no split {split!r}; it has {sorted(dataset)}.")
        held_out = {"validation": dataset["validation"]} if "validation" in dataset else {}
        dataset = _ensure_validation(DatasetDict({split: dataset[split], **held_out}), 0.05, 0, train=split)
    return dataset


# --------------------------------------------------------------------------------------------------------------------
# Preparation


def _tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """A hash of what decides the ids that `tokenizer` gives: its class, its backend's whole state (normalizer,
    pre-tokenizer, model, post-processor, added tokens) less the truncation and padding that each call sets anew, its
    special tokens, and the tokenizers and transformers releases. Copies of one tokenizer hash alike, wherever they
    were loaded from and however they were used; two tokenizers that differ in one id do not."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:  # a slow (Python) tokenizer: `datasets`' hash of the object
        return Hasher.hash(tokenizer)
    state = json.loads(backend.to_str())
    state["truncation"] = state["padding"] = None
    return Hasher.hash([
        type(tokenizer).__module__, type(tokenizer).__qualname__, json.dumps(state, sort_keys=True),
        tokenizer.special_tokens_map, getattr(tokenizer, "split_special_tokens", None),
        tokenizers.__version__, transformers.__version__,
    ])  # fmt: skip


def _step_fingerprint(data: Dataset, function: Callable, fn_kwargs: dict, **options) -> str:
    """The fingerprint of `data.map(function, fn_kwargs=...)` (or of a filter), from what decides its result: the
    input's fingerprint, the function's source, its arguments (tokenizers by content, see `_tokenizer_fingerprint`)
    and `options` (batch size, processes: packing is per batch). `datasets`' own hashes the tokenizer object, which
    differs between copies of one tokenizer (loaded from another folder, or trained and then loaded); with this one a
    later run reads the cache whatever copy it holds, and any change to data, tokenizer or settings misses it."""
    try:
        source = inspect.getsource(function)
    except OSError:  # no source files (a frozen install): the byte code
        source = function.__code__.co_code.hex()
    arguments = {
        name: _tokenizer_fingerprint(value) if isinstance(value, PreTrainedTokenizerBase) else value
        for name, value in fn_kwargs.items()
    }
    return Hasher.hash([data._fingerprint, function.__module__, function.__qualname__, source, arguments, options])


def _map_splits(
    dataset: DatasetDict | Dataset, function: Callable, fn_kwargs: dict, batch_size: int = 1000,
    num_proc: int | None = None, desc: str | None = None,
) -> DatasetDict | Dataset:  # fmt: skip
    """Batched `Dataset.map` on each split, replacing the split's own columns (splits may differ: test sets lack
    labels), under a fingerprint that a later run with the same data, tokenizer and settings finds in the cache."""
    if isinstance(dataset, DatasetDict):
        return DatasetDict({name: _map_splits(split, function, fn_kwargs, batch_size, num_proc, desc)
                            for name, split in dataset.items()})  # fmt: skip
    fingerprint = _step_fingerprint(dataset, function, fn_kwargs, batch_size=batch_size, processes=num_proc or 1)
    return dataset.map(function, batched=True, batch_size=batch_size, remove_columns=dataset.column_names,
                       fn_kwargs=fn_kwargs, num_proc=num_proc, desc=desc, new_fingerprint=fingerprint)  # fmt: skip


def _refuse_empty(dataset: DatasetDict | Dataset, what: str) -> None:
    """A ValueError for a split without rows (`datasets` maps it to a table without columns)."""
    for name, data in dataset.items() if isinstance(dataset, DatasetDict) else [("data", dataset)]:
        if len(data) == 0:
            raise ValueError(
                f"Nothing to tokenize: split {name!r} has no {what} (0 rows). Give it data, or leave the split out."
            )


def _pack_documents(batch: dict, tokenizer: PreTrainedTokenizerBase, block_size: int, text_column: str) -> dict:
    documents = tokenizer(batch[text_column], add_special_tokens=False, verbose=False)["input_ids"]
    cls, sep, room = tokenizer.cls_token_id, tokenizer.sep_token_id, block_size - 2
    blocks, lengths, split_documents = [], [], 0
    for ids in documents:
        split_documents += len(ids) > room
        for start in range(0, len(ids), room):
            piece = [cls, *ids[start : start + room], sep]
            if not blocks or len(blocks[-1]) + len(piece) > block_size:
                blocks.append([])
                lengths.append([])
            blocks[-1].extend(piece)
            lengths[-1].append(len(piece))
    return {"input_ids": blocks, "lengths": lengths, "split_documents": [split_documents] + [0] * (len(blocks) - 1)}


def pack_for_mlm(
    dataset: DatasetDict | Dataset,
    tokenizer: PreTrainedTokenizerBase,
    block_size: int = 512,
    text_column: str = "text",
    num_proc: int | None = None,
) -> DatasetDict | Dataset:
    """Tokenize documents and pack them, each as `[CLS] ... [SEP]`, into blocks of at most `block_size` tokens.

    Every block keeps its documents' `lengths`, so the collators can hand them to the model as separate sequences
    (padding-free) or separate rows (padded); nothing is ever attended across a document boundary. A document
    longer than a block is cut into pieces of `block_size` tokens, each its own sequence (counted and logged).
    """
    if tokenizer.cls_token_id is None or tokenizer.sep_token_id is None:
        raise ValueError("pack_for_mlm needs an encoder tokenizer with [CLS] and [SEP] tokens.")
    if block_size < 3:
        raise ValueError(f"block_size={block_size} leaves no room for a token between [CLS] and [SEP].")
    _refuse_empty(dataset, "documents")
    packed = _map_splits(
        dataset,
        _pack_documents,
        {"tokenizer": tokenizer, "block_size": block_size, "text_column": text_column},
        num_proc=num_proc,
        desc="Tokenizing and packing",
    )
    for split_name, data in packed.items() if isinstance(packed, DatasetDict) else [("data", packed)]:
        split_documents = sum(data["split_documents"])
        if split_documents:
            logger.info("%s: %d documents longer than %d tokens were cut into pieces", split_name, split_documents,
                        block_size)  # fmt: skip
    return packed.remove_columns("split_documents")


def _tokenize_pairs(batch: dict, tokenizer: PreTrainedTokenizerBase, src: str, tgt: str, tag: int) -> dict:
    sources = tokenizer(batch[src])["input_ids"]
    targets = [[tag, *ids] for ids in tokenizer(batch[tgt])["input_ids"]]
    return {"input_ids": sources, "labels": targets}


def _pair_fits(row: dict, max_source_length: int, max_target_length: int) -> bool:
    return len(row["input_ids"]) <= max_source_length and len(row["labels"]) <= max_target_length


def _truncate_pair(row: dict, max_source_length: int, max_target_length: int) -> dict:  # keeps the final </s>
    cut = {"input_ids": max_source_length, "labels": max_target_length}
    return {key: ids if len(ids) <= cut[key] else ids[: cut[key] - 1] + ids[-1:] for key, ids in row.items()}


def prepare_translation(
    dataset: DatasetDict | Dataset,
    tokenizer: PreTrainedTokenizerBase,
    src: str,
    tgt: str,
    max_source_length: int = 128,
    max_target_length: int = 128,
    overlong: str = "truncate",
    num_proc: int | None = None,
) -> DatasetDict | Dataset:
    """Tokenize pairs: `input_ids` = source + `</s>`; `labels` = `<2tgt>` + target + `</s>`.

    Pairs longer than the limits are cut to them (`overlong="truncate"`, keeping the final `</s>`) or left out
    (`"drop"`); either way their number is logged.
    """
    if overlong not in ("truncate", "drop"):
        raise ValueError(f"overlong={overlong!r} is not supported; choose 'truncate' or 'drop'.")
    tag = target_language_token(tokenizer, tgt)
    if tag is None:
        raise ValueError(f"Unknown target language {tgt!r}: the tokenizer has no {language_tag(tgt)!r} tag.")
    _refuse_empty(dataset, "pairs")
    tokenized = _map_splits(dataset, _tokenize_pairs, {"tokenizer": tokenizer, "src": src, "tgt": tgt, "tag": tag},
                            num_proc=num_proc, desc="Tokenizing pairs")  # fmt: skip
    limits = {"max_source_length": max_source_length, "max_target_length": max_target_length}
    splits = tokenized.items() if isinstance(tokenized, DatasetDict) else [(None, tokenized)]
    result = {}
    for split_name, data in splits:
        kept = data.filter(_pair_fits, fn_kwargs=limits, num_proc=num_proc,
                           new_fingerprint=_step_fingerprint(data, _pair_fits, limits))  # fmt: skip
        if too_long := len(data) - len(kept):
            logger.warning("%s: %d of %d pairs exceed %d source / %d target tokens and were %s", split_name or "data",
                           too_long, len(data), max_source_length, max_target_length,
                           "truncated" if overlong == "truncate" else "dropped")  # fmt: skip
            if overlong == "truncate":
                kept = data.map(_truncate_pair, fn_kwargs=limits, num_proc=num_proc,
                                new_fingerprint=_step_fingerprint(data, _truncate_pair, limits))  # fmt: skip
        result[split_name] = kept
    return DatasetDict(result) if isinstance(tokenized, DatasetDict) else result[None]


SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def _denoising_segments(
    batch: dict, tokenizer: PreTrainedTokenizerBase, tag: int, max_length: int, text_column: str,
    sentence_end: re.Pattern,
) -> dict:  # fmt: skip
    room = max_length - 2  # the target's language tag and </s>
    segments, cut = {"input_ids": [], "labels": [], "sentence_lengths": []}, 0
    for text in batch[text_column]:
        sentences = tokenizer(sentence_end.split(text.strip()), add_special_tokens=False, verbose=False)["input_ids"]
        pieces = []
        for ids in sentences:
            cut += len(ids) > room
            pieces.extend(ids[start : start + room] for start in range(0, len(ids), room))
        current: list[list[int]] = []
        length = 0  # tokens in `current`
        for piece in [*pieces, None]:  # None closes the last segment
            if piece is None or (current and length + len(piece) > room):
                if current:
                    tokens = [token for sentence in current for token in sentence]
                    segments["input_ids"].append([*tokens, tokenizer.eos_token_id])
                    segments["labels"].append([tag, *tokens, tokenizer.eos_token_id])
                    segments["sentence_lengths"].append([len(sentence) for sentence in current])
                current, length = [], 0
            if piece:
                current.append(piece)
                length += len(piece)
    count = len(segments["input_ids"])
    segments["cut_sentences"] = ([cut] + [0] * (count - 1)) if count else []
    return segments


def prepare_denoising(
    dataset: DatasetDict | Dataset,
    tokenizer: PreTrainedTokenizerBase,
    language: str,
    max_length: int = 128,
    text_column: str = "text",
    num_proc: int | None = None,
) -> DatasetDict | Dataset:
    """Tokenize monolingual documents for denoising autoencoding (`DenoisingCollator` adds the noise).

    Each document is split into sentences, and consecutive sentences are gathered into segments of at most
    `max_length` tokens: `input_ids` = segment + `</s>` (clean; the collator corrupts it), `labels` = `<2lang>` +
    segment + `</s>` (the target-language tag first, as in translation, so a denoised model already knows how
    to start a sentence in each language), `sentence_lengths` for sentence permutation. A sentence longer than a
    segment is cut into pieces (counted and logged); nothing else is left out.
    """
    tag = target_language_token(tokenizer, language)
    if tag is None:
        raise ValueError(f"Unknown language {language!r}: the tokenizer has no {language_tag(language)!r} tag.")
    if max_length < 3:
        raise ValueError(f"max_length={max_length} leaves no room for a token beside the tag and </s>.")
    _refuse_empty(dataset, "documents")
    segments = _map_splits(
        dataset,
        _denoising_segments,
        {"tokenizer": tokenizer, "tag": tag, "max_length": max_length, "text_column": text_column,
         "sentence_end": SENTENCE_END},
        num_proc=num_proc,
        desc=f"Segmenting {language} text",
    )  # fmt: skip
    for split_name, data in segments.items() if isinstance(segments, DatasetDict) else [("data", segments)]:
        if cut := sum(data["cut_sentences"]):
            logger.info("%s: %d sentences longer than %d tokens were cut into pieces", split_name, cut, max_length - 2)
    return segments.remove_columns("cut_sentences")


# --------------------------------------------------------------------------------------------------------------------
# Collators and batching


def _sequences(examples: list[dict], key: str = "input_ids") -> list[list[int]]:
    """Split packed blocks into their documents (a block without `lengths` is one sequence)."""
    sequences = []
    for example in examples:
        ids, start = list(example[key]), 0
        for length in example.get("lengths") or [len(ids)]:
            sequences.append(ids[start : start + length])
            start += length
    return sequences


def _flatten(sequences: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.tensor([token for sequence in sequences for token in sequence])[None]
    positions = torch.cat([torch.arange(len(sequence)) for sequence in sequences])[None]
    return ids, positions


def _pad(sequences: list[list[int]], value: int, multiple: int | None = None) -> torch.Tensor:
    longest = max(map(len, sequences))
    if multiple:
        longest = -(-longest // multiple) * multiple
    padded = torch.full((len(sequences), longest), value)
    for row, sequence in enumerate(sequences):
        padded[row, : len(sequence)] = torch.tensor(sequence)
    return padded


def _call_generator(collator) -> torch.Generator | None:
    """The generator of a noise-drawing collator's next call: seeded by (seed, calls), so that a run is reproducible
    and a resumed one, its `calls` set to the batches already used, draws what an uninterrupted one would."""
    generator = (
        None if collator.seed is None else torch.Generator().manual_seed(collator.seed * 1_000_003 + collator.calls)
    )
    collator.calls += 1
    return generator


def special_token_table(tokenizer: PreTrainedTokenizerBase) -> torch.Tensor:
    """A boolean per vocabulary id: is it a special token?"""
    special = torch.zeros(len(tokenizer), dtype=torch.bool)
    special[tokenizer.all_special_ids] = True
    return special


def word_start_table(tokenizer: PreTrainedTokenizerBase) -> torch.Tensor:
    """A boolean per vocabulary id: does the token start a word? A token continues the word before it if WordPiece
    marks it with "##", or if the vocabulary marks word starts with "▁" (SentencePiece-style BPE/Unigram) and it has
    none. Special tokens start words."""
    vocab, special = tokenizer.get_vocab(), special_token_table(tokenizer)
    metaspace = any(token.startswith("▁") for token in vocab)
    starts_word = torch.ones(len(tokenizer), dtype=torch.bool)
    for token, index in vocab.items():
        if token.startswith("##") or (metaspace and not token.startswith("▁") and not special[index]):
            starts_word[index] = False
    return starts_word


@dataclass
class MLMCollator:
    """Dynamic masking for masked-LM training: each call draws new masks.

    `mlm_probability` of the non-special tokens are chosen (whole words with `whole_word_mask`); of those,
    `mask_replace_prob` become `[MASK]`, `random_replace_prob` a random non-special token, the rest stay; labels
    hold the original ids at chosen positions and -100 elsewhere. Special tokens are never chosen.

    With `padding_free` (the default), all documents of the batch go into one row with `position_ids` restarting at
    each document (what the encoder's padding-free path reads); otherwise each document is a padded row with an
    `attention_mask`. Either way documents never see each other.

    With a `seed`, the k-th call draws its masks from a generator seeded by (seed, k), so a run is reproducible, and a
    resumed run draws the same masks as an uninterrupted one once `calls` is set to the batches already used.
    """

    tokenizer: PreTrainedTokenizerBase
    mlm_probability: float = 0.3
    mask_replace_prob: float = 0.8
    random_replace_prob: float = 0.1
    whole_word_mask: bool = False
    padding_free: bool = True
    pad_to_multiple_of: int | None = None
    seed: int | None = None
    calls: int = 0

    def __post_init__(self):
        if not 0.0 < self.mlm_probability < 1.0:
            raise ValueError(f"mlm_probability must lie in (0, 1), got {self.mlm_probability}.")
        if (
            self.mask_replace_prob < 0
            or self.random_replace_prob < 0
            or self.mask_replace_prob + self.random_replace_prob > 1
        ):
            raise ValueError("mask_replace_prob and random_replace_prob must be >= 0 and add up to at most 1.")
        if self.tokenizer.mask_token_id is None:
            raise ValueError("Masked-LM training needs a tokenizer with a mask token.")
        self.special = special_token_table(self.tokenizer)
        self.replacements = (~self.special).nonzero().flatten()
        self.starts_word = word_start_table(self.tokenizer)

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        generator = _call_generator(self)
        sequences = _sequences(examples)
        if self.padding_free:
            input_ids, position_ids = _flatten(sequences)
            batch = {"position_ids": position_ids}
            starts = position_ids == 0
        else:
            input_ids = _pad(sequences, self.tokenizer.pad_token_id, self.pad_to_multiple_of)
            lengths = torch.tensor([len(sequence) for sequence in sequences])
            batch = {"attention_mask": (torch.arange(input_ids.shape[1]) < lengths[:, None]).long()}
            starts = torch.zeros_like(input_ids, dtype=torch.bool)
            starts[:, 0] = True
        special = self.special[input_ids]
        if "attention_mask" in batch:
            special |= batch["attention_mask"] == 0
        chosen = self._choose(input_ids, special, starts, generator)
        batch["labels"] = input_ids.masked_fill(~chosen, -100)
        batch["input_ids"] = self._replace(input_ids, chosen, generator)
        return batch

    def _choose(
        self, input_ids: torch.Tensor, special: torch.Tensor, starts: torch.Tensor, generator: torch.Generator | None
    ) -> torch.Tensor:
        if not self.whole_word_mask:
            return (torch.rand(input_ids.shape, generator=generator) < self.mlm_probability) & ~special
        word_starts = self.starts_word[input_ids] | special | starts
        words = word_starts.flatten().cumsum(0) - 1  # word index of every token
        chosen_words = torch.rand(int(words[-1]) + 1, generator=generator) < self.mlm_probability
        return chosen_words[words].view(input_ids.shape) & ~special

    def _replace(
        self, input_ids: torch.Tensor, chosen: torch.Tensor, generator: torch.Generator | None
    ) -> torch.Tensor:
        draw = torch.rand(input_ids.shape, generator=generator)
        masked = chosen & (draw < self.mask_replace_prob)
        randomised = (
            chosen & (draw >= self.mask_replace_prob) & (draw < self.mask_replace_prob + self.random_replace_prob)
        )
        picks = torch.randint(len(self.replacements), input_ids.shape, generator=generator)
        input_ids = input_ids.masked_fill(masked, self.tokenizer.mask_token_id)
        return torch.where(randomised, self.replacements[picks], input_ids)


@dataclass
class Seq2SeqCollator:
    """Batches of `input_ids`/`labels` pairs for `Seq2SeqForConditionalGeneration`, which builds the decoder inputs
    by shifting the labels. Padded: sources padded with an `attention_mask`, labels padded with -100 (transformers'
    `DataCollatorForSeq2Seq`). Padding-free: sources in one row and targets in another, with restarting
    `position_ids` and `decoder_position_ids`."""

    tokenizer: PreTrainedTokenizerBase
    padding_free: bool = False
    pad_to_multiple_of: int | None = None

    def __post_init__(self):
        self.padded = DataCollatorForSeq2Seq(self.tokenizer, label_pad_token_id=-100,
                                             pad_to_multiple_of=self.pad_to_multiple_of)  # fmt: skip

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        if not self.padding_free:
            return dict(self.padded([{k: example[k] for k in ("input_ids", "labels")} for example in examples]))
        input_ids, position_ids = _flatten([list(example["input_ids"]) for example in examples])
        labels, decoder_position_ids = _flatten([list(example["labels"]) for example in examples])
        return {"input_ids": input_ids, "position_ids": position_ids, "labels": labels,
                "decoder_position_ids": decoder_position_ids}  # fmt: skip


@dataclass
class DenoisingCollator:
    """BART-style noise for denoising autoencoding (Lewis et al. 2020): sentence permutation, then text infilling.

    With probability `permute_sentence_ratio`, the sentences of a multi-sentence segment are shuffled. Then
    round(`mask_ratio` x its words) of each segment's words are hidden, in spans whose lengths are drawn from a
    Poisson distribution with mean `poisson_lambda`; each span becomes a single `<mask>` (a zero-length span inserts
    one), so the model must also infer how many tokens are missing. Spans cover whole words and never touch each
    other. `labels` (the original segment, from `prepare_denoising`) are left as they are: the model reconstructs
    it. Batches are `Seq2SeqCollator`'s, padded or padding-free; `seed` and `calls` work as in `MLMCollator`.
    """

    tokenizer: PreTrainedTokenizerBase
    mask_ratio: float = 0.3
    poisson_lambda: float = 3.0
    permute_sentence_ratio: float = 1.0
    padding_free: bool = False
    pad_to_multiple_of: int | None = None
    seed: int | None = None
    calls: int = 0

    def __post_init__(self):
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must lie in [0, 1), got {self.mask_ratio}.")
        if self.poisson_lambda <= 0:
            raise ValueError(f"poisson_lambda must be positive, got {self.poisson_lambda}.")
        if not 0.0 <= self.permute_sentence_ratio <= 1.0:
            raise ValueError(f"permute_sentence_ratio must lie in [0, 1], got {self.permute_sentence_ratio}.")
        if self.mask_ratio > 0 and self.tokenizer.mask_token_id is None:
            raise ValueError("Text infilling needs a tokenizer with a mask token (seq2seq tokenizers have <mask>).")
        self.starts_word = word_start_table(self.tokenizer)
        self.batcher = Seq2SeqCollator(self.tokenizer, self.padding_free, self.pad_to_multiple_of)

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        generator = _call_generator(self)
        noised = [{"input_ids": self.corrupt(example, generator), "labels": example["labels"]} for example in examples]
        return self.batcher(noised)

    def corrupt(self, example: dict, generator: torch.Generator | None = None) -> list[int]:
        """The noised `input_ids` of one example from `prepare_denoising` (its final `</s>` stays in place)."""
        tokens, end = list(example["input_ids"][:-1]), list(example["input_ids"][-1:])
        lengths = example.get("sentence_lengths") or [len(tokens)]
        if len(lengths) > 1 and torch.rand((), generator=generator) < self.permute_sentence_ratio:
            bounds = torch.tensor([0, *lengths]).cumsum(0).tolist()
            order = torch.randperm(len(lengths), generator=generator).tolist()
            tokens = [token for i in order for token in tokens[bounds[i] : bounds[i + 1]]]
        return self.infill(tokens, generator) + end

    def infill(self, tokens: list[int], generator: torch.Generator | None = None) -> list[int]:
        """Text infilling: whole-word spans of Poisson lengths, each replaced by one `<mask>`."""
        if not tokens or self.mask_ratio == 0:
            return tokens
        starts = self.starts_word[torch.tensor(tokens)]
        starts[0] = True
        bounds = [*starts.nonzero().flatten().tolist(), len(tokens)]
        words = [tokens[bounds[i] : bounds[i + 1]] for i in range(len(bounds) - 1)]
        hidden = round(len(words) * self.mask_ratio)
        if hidden == 0:
            return tokens
        spans: list[int] = []
        rate = torch.tensor([self.poisson_lambda])
        while sum(spans) < hidden:
            spans.append(int(torch.poisson(rate, generator=generator)))
        spans[-1] -= sum(spans) - hidden
        kept = len(words) - hidden
        if len(spans) > kept + 1:  # more spans than gaps between kept words: the surplus joins the last span
            spans = [*spans[:kept], sum(spans[kept:])]
        gaps = torch.randperm(kept + 1, generator=generator)[: len(spans)].sort().values.tolist()
        span_at = dict(zip(gaps, spans, strict=True))
        noised, word = [], 0
        for gap in range(kept + 1):
            if gap in span_at:
                noised.append(self.tokenizer.mask_token_id)
                word += span_at[gap]
            if gap < kept:
                noised.extend(words[word])
                word += 1
        return noised


def build_dataloader(
    dataset: Dataset,
    collator: Callable[[list[dict]], dict],
    batch_size: int,
    shuffle: bool = True,
    group_by_length: bool = False,
    seed: int = 0,
    num_workers: int = 0,
) -> torch.utils.data.DataLoader:
    """A `DataLoader` over `dataset`. With `group_by_length`, batches hold examples of similar length (transformers'
    `LengthGroupedSampler`: random mega-batches sorted by length), which keeps padding low."""
    generator = torch.Generator().manual_seed(seed)
    sampler = None
    if group_by_length:
        lengths = [len(ids) for ids in dataset["input_ids"]]
        sampler = LengthGroupedSampler(batch_size, lengths=lengths, generator=generator)
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle and sampler is None,
        sampler=sampler,
        collate_fn=collator,
        generator=generator,
        num_workers=num_workers,
    )


__all__ = [
    "load_text_dataset",
    "load_parallel_dataset",
    "pack_for_mlm",
    "prepare_translation",
    "load_monolingual_dataset",
    "prepare_denoising",
    "MLMCollator",
    "Seq2SeqCollator",
    "DenoisingCollator",
    "build_dataloader",
]
