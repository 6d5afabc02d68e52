"""Loading with `datasets`: raw text and sentence pairs, local or from the Hub, as a `DatasetDict`.

`load_text_dataset` and `load_parallel_dataset` take a Hub id (with config and split) or local files: a directory, a
glob or a file of `.txt[.gz]` (one text per line), `.jsonl[.gz]`, `.tsv[.gz]` or `.parquet`; for parallel data also
aligned `{split}.{lang}[.gz]` files (the Multi30k layout, see `aligned_files`) or Hub sets with a `translation` column.
Splits come out as a `DatasetDict` with a `validation` split (carved from train, seeded, where the data has none).
Files load through `datasets`, so later runs reuse its cache, tokenization included. `load_monolingual_dataset` reads
one language: a side of aligned parallel files, or any text data. A Hub id is loaded only where the Hub answers (a
socket probe of its endpoint first) or, offline (HF_HUB_OFFLINE=1), from the datasets cache; either failure says what
to give instead. Empty texts are dropped and counted, never silently; a split left with none is refused.
"""

import csv
import glob
import gzip
import logging
import os
import socket
import zlib
from collections import defaultdict
from collections.abc import Collection
from pathlib import Path
from urllib.parse import urlparse

import datasets.config
import pyarrow
import pyarrow.parquet
from datasets import Dataset, DatasetDict, concatenate_datasets, load_dataset

logger = logging.getLogger(__name__)

SPLIT_ALIASES = {"val": "validation", "valid": "validation", "dev": "validation"}
FORMATS = {".txt": "text", ".jsonl": "json", ".json": "json", ".tsv": "csv", ".parquet": "parquet"}
NOT_DATA = ("readme", "license", "source", "citation")  # documentation files that sit beside data


# --------------------------------------------------------------------------------------------------------------------
# Locating data


def _aligned_side(path: Path) -> bool:
    """One side of aligned parallel files, `{split}.{language}[.gz]` (Multi30k's `train.de.gz`): lines of text."""
    parts = path.name.removesuffix(".gz").split(".")
    return len(parts) == 2 and parts[1].isalpha() and f".{parts[1]}" not in FORMATS and parts[1] != "md"


def _file_format(path: Path, named: bool = False) -> str | None:
    """The `datasets` builder of a data file, by its extension; a side of aligned parallel files is text where it
    was `named` (a path or glob such as `multi30k/train.[de][en].gz`; found in a folder, it is parallel data)."""
    if path.name.lower().startswith(NOT_DATA):
        return None
    suffixes = path.suffixes[-2:] if path.suffix == ".gz" else path.suffixes[-1:]
    builder = FORMATS.get(suffixes[0]) if suffixes else None
    return "text" if builder is None and named and _aligned_side(path) else builder


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
    logger.info(
        "No validation split: took %d of %d %s rows (seed %d)", len(parts["test"]), len(dataset[train]), train, seed
    )
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
            `train.jsonl.gz` -> train, `unsup.txt.gz` -> unsup, `dev.tsv` -> validation. A file or glob is the
            `train` split; sides of aligned parallel files (`multi30k/train.[de][en].gz`) read as lines of text.
        name: the Hub config (Hub ids only). split: load only this split (for local data too).
        text_column: the column that must hold text in every split; empty texts are dropped and counted (None:
            no check, no validation split; for callers that check columns themselves).
        validation_fraction, seed: how the validation split is carved from train when there is none.
    """
    if is_local(spec):
        named = not Path(spec).is_dir()  # a file or glob: one `train` split of what it names
        by_split: dict[str, list[Path]] = defaultdict(list)
        for path in _local_files(spec):
            if _file_format(path, named) is not None:
                by_split["train" if named else _split_name(path)].append(path)
        if not by_split:
            raise FileNotFoundError(f"{str(spec)!r} holds no {', '.join(FORMATS)} files (.gz too).")
        if split is not None:  # one split, as for a Hub id
            if split not in by_split:
                raise ValueError(f"{str(spec)!r} has no split {split!r}; its files give {sorted(by_split)}.")
            by_split = {split: by_split[split]}
        dataset = DatasetDict(
            {split_name: _load_files(files, _file_format(files[0], named)) for split_name, files in by_split.items()}
        )
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


def aligned_files(spec: str | os.PathLike) -> dict[str, dict[str, Path]]:
    """{split: {language: file}} for files named {split}.{language}[.gz]."""
    files: dict[str, dict[str, Path]] = defaultdict(dict)
    for path in _local_files(spec):
        if _aligned_side(path):
            split, language = path.name.removesuffix(".gz").split(".")
            files[SPLIT_ALIASES.get(split, split)][language] = path
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
    splits: Collection[str] | None = None,
) -> DatasetDict:
    """Sentence pairs as a `DatasetDict` whose columns are the two language codes (`en`, `de`).

    Args:
        spec: a directory of aligned `{split}.{lang}[.gz]` files (train.en.gz <-> train.de.gz); or a Hub id, or local
            jsonl/parquet/tsv files, with a `translation` column of `{lang: text}` dicts or one column per language.
        src, tgt: language codes. Pairs with an empty side are dropped and counted.
        splits: read only these splits of aligned files (a streamed run reads its training split elsewhere).
    """
    if src == tgt:
        raise ValueError(f"Source and target language are both {src!r}.")
    aligned = aligned_files(spec) if is_local(spec) else {}
    if aligned:
        wanted = {split: files for split, files in aligned.items() if splits is None or split in splits}
        dataset = _load_aligned(spec, wanted, src, tgt)
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
    aligned = aligned_files(spec) if is_local(spec) else {}
    if aligned:
        languages = sorted({lang for by_language in aligned.values() for lang in by_language})
        if language not in languages:
            raise ValueError(
                f"{str(spec)!r} has no {language!r} side: its files give languages {', '.join(languages)}."
            )
        dataset = DatasetDict(
            {
                name: _load_files([by_language[language]], builder="text")
                for name, by_language in aligned.items()
                if language in by_language
            }
        )
        dataset = _ensure_validation(_drop_empty(dataset, ["text"], str(spec)), 0.05, 0)
    else:
        dataset = load_text_dataset(spec)
    if split is not None:
        if split not in dataset:
            raise ValueError(f"{str(spec)!r} has no split {split!r}; it has {sorted(dataset)}.")
        held_out = {"validation": dataset["validation"]} if "validation" in dataset else {}
        dataset = _ensure_validation(DatasetDict({split: dataset[split], **held_out}), 0.05, 0, train=split)
    return dataset


__all__ = [
    "aligned_files",
    "is_local",
    "load_monolingual_dataset",
    "load_parallel_dataset",
    "load_text_dataset",
    "monolingual_source_name",
    "parse_named_source",
]
