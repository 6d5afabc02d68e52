"""Preparation: tokenized, model-ready splits from the `DatasetDict`s of `hf_encoders.data.loading`.

`pack_for_mlm` tokenizes documents and packs them into blocks that remember where each document starts;
`prepare_translation` tokenizes pairs and truncates or drops over-long ones, saying how many; `prepare_denoising` cuts
documents into segments of whole sentences for denoising autoencoders. Each result is cached under a fingerprint of
the data, the tokenizer's content and the settings (`_step_fingerprint`), so a later run reads it back and a different
tokenizer never does. Empty data is refused by source and split, not passed on; every cut or drop is logged with its
count.
"""

import inspect
import json
import logging
import re
from collections.abc import Callable

import tokenizers
import transformers
from datasets import Dataset, DatasetDict
from datasets.fingerprint import Hasher
from transformers import PreTrainedTokenizerBase

from ..tokenization import language_tag, target_language_token

logger = logging.getLogger(__name__)


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
    return Hasher.hash(
        [
            type(tokenizer).__module__,
            type(tokenizer).__qualname__,
            json.dumps(state, sort_keys=True),
            tokenizer.special_tokens_map,
            getattr(tokenizer, "split_special_tokens", None),
            tokenizers.__version__,
            transformers.__version__,
        ]
    )


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
    dataset: DatasetDict | Dataset,
    function: Callable,
    fn_kwargs: dict,
    batch_size: int = 1000,
    num_proc: int | None = None,
    desc: str | None = None,
) -> DatasetDict | Dataset:
    """Batched `Dataset.map` on each split, replacing the split's own columns (splits may differ: test sets lack
    labels), under a fingerprint that a later run with the same data, tokenizer and settings finds in the cache."""
    if isinstance(dataset, DatasetDict):
        return DatasetDict(
            {
                name: _map_splits(split, function, fn_kwargs, batch_size, num_proc, desc)
                for name, split in dataset.items()
            }
        )
    fingerprint = _step_fingerprint(dataset, function, fn_kwargs, batch_size=batch_size, processes=num_proc or 1)
    return dataset.map(
        function,
        batched=True,
        batch_size=batch_size,
        remove_columns=dataset.column_names,
        fn_kwargs=fn_kwargs,
        num_proc=num_proc,
        desc=desc,
        new_fingerprint=fingerprint,
    )


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
            logger.info(
                "%s: %d documents longer than %d tokens were cut into pieces", split_name, split_documents, block_size
            )
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
    tokenized = _map_splits(
        dataset,
        _tokenize_pairs,
        {"tokenizer": tokenizer, "src": src, "tgt": tgt, "tag": tag},
        num_proc=num_proc,
        desc="Tokenizing pairs",
    )
    limits = {"max_source_length": max_source_length, "max_target_length": max_target_length}
    splits = tokenized.items() if isinstance(tokenized, DatasetDict) else [(None, tokenized)]
    result = {}
    for split_name, data in splits:
        kept = data.filter(
            _pair_fits,
            fn_kwargs=limits,
            num_proc=num_proc,
            new_fingerprint=_step_fingerprint(data, _pair_fits, limits),
        )
        if too_long := len(data) - len(kept):
            logger.warning(
                "%s: %d of %d pairs exceed %d source / %d target tokens and were %s",
                split_name or "data",
                too_long,
                len(data),
                max_source_length,
                max_target_length,
                "truncated" if overlong == "truncate" else "dropped",
            )
            if overlong == "truncate":
                kept = data.map(
                    _truncate_pair,
                    fn_kwargs=limits,
                    num_proc=num_proc,
                    new_fingerprint=_step_fingerprint(data, _truncate_pair, limits),
                )
        result[split_name] = kept
    return DatasetDict(result) if isinstance(tokenized, DatasetDict) else result[None]


SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def _denoising_segments(
    batch: dict,
    tokenizer: PreTrainedTokenizerBase,
    tag: int,
    max_length: int,
    text_column: str,
    sentence_end: re.Pattern,
) -> dict:
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
        {
            "tokenizer": tokenizer,
            "tag": tag,
            "max_length": max_length,
            "text_column": text_column,
            "sentence_end": SENTENCE_END,
        },
        num_proc=num_proc,
        desc=f"Segmenting {language} text",
    )
    for split_name, data in segments.items() if isinstance(segments, DatasetDict) else [("data", segments)]:
        if cut := sum(data["cut_sentences"]):
            logger.info("%s: %d sentences longer than %d tokens were cut into pieces", split_name, cut, max_length - 2)
    return segments.remove_columns("cut_sentences")


__all__ = ["SENTENCE_END", "pack_for_mlm", "prepare_denoising", "prepare_translation"]
