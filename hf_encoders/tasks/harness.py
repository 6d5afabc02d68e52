"""What every task's `main(argv)` does around its own work: read the settings, set up logging, get the run's
tokenizer, cut datasets short, count parameters, write `results.json`.

    model_args, data_args, training = parse_arguments((ModelArguments, DataArguments, TrainingConfig), argv)
    run = start_run(training, {"script": "pretrain_mlm", ...}, metric_names)
    tokenizer = run_tokenizer(run, data_args.tokenizer, [documents], ["text"], data_args.vocab_size)
    validation = first_n(validation, eval_args.eval_max_examples or None)       # 0: all

`--config NAME` finds the packaged hf_encoders/configs/NAME.yaml (as `hf-encoders` does), `--config FILE` a file.
"""

import json
import logging
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported where used: `hf-encoders` sets up its logging with this module, and stays quick
    import torch
    from datasets import Dataset, IterableDataset
    from transformers import PreTrainedTokenizerBase

    from ..run_folder import RunFolder

CONFIGS = Path(__file__).resolve().parents[1] / "configs"  # the training configs that ship with the package
SCRIPT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
COMMAND_FORMAT = "%(levelname)s %(name)s: %(message)s"


def configure_logging(show: Iterable[str] | None = None) -> None:
    """Logging for a task's run; the first call sets the format, later ones only levels.

    Run as a script (`show=None`): everything at INFO with timestamps, but accelerate's chatter. Run by the
    `hf-encoders` command (`show`: the loggers whose progress to show, e.g. `("hf_encoders", "pretrain_mlm")`):
    warnings and errors on stderr, and the INFO lines of `show` only; the task's own later call changes nothing
    but accelerate's level, as the root already has its handler then."""
    if show is None:
        logging.basicConfig(format=SCRIPT_FORMAT, level=logging.INFO)
        logging.getLogger("accelerate").setLevel(logging.WARNING)
        return
    logging.basicConfig(format=COMMAND_FORMAT, level=logging.WARNING)
    for name in show:
        logging.getLogger(name).setLevel(logging.INFO)


def packaged_config(argv: list[str]) -> list[str]:
    """`--config NAME` -> the packaged hf_encoders/configs/NAME.yaml when NAME is not a file."""
    argv = list(argv)
    for i, arg in enumerate(argv[:-1]):
        if arg == "--config" and not Path(argv[i + 1]).is_file():
            packaged = CONFIGS / f"{Path(argv[i + 1]).stem}.yaml"
            if not packaged.is_file():
                known = sorted(path.stem for path in CONFIGS.glob("*.yaml"))
                raise FileNotFoundError(f"--config {argv[i + 1]}: no such file, nor a packaged config {known}.")
            argv[i + 1] = str(packaged)
    return argv


def parse_arguments(dataclass_types: tuple[type, ...], argv: list[str] | None = None) -> tuple:
    """The task's settings (`--config FILE_OR_NAME` and flags, see `parse_config`), then logging set up for the
    run."""
    from ..training import parse_config

    parsed = parse_config(dataclass_types, packaged_config(sys.argv[1:] if argv is None else argv))
    configure_logging()
    return parsed


def check_heads(hidden_size: int, num_attention_heads: int) -> None:
    """Refuse a width the attention heads do not divide, where the settings are read: every architecture of the
    tasks splits `hidden_size` into `num_attention_heads` equal heads, and the baselines' (BERT, Marian) would say so
    only when the model is built, after the data and the tokenizer."""
    if num_attention_heads <= 0 or hidden_size % num_attention_heads:
        raise ValueError(
            f"--hidden_size {hidden_size} must be a multiple of --num_attention_heads {num_attention_heads}: each "
            "head gets an equal share of the width."
        )


def first_n(dataset: "Dataset | IterableDataset", n: int | None) -> "Dataset | IterableDataset":
    """The first `n` rows of `dataset` (all of them if it has fewer); `None`: the dataset itself."""
    if n is None:
        return dataset
    if not hasattr(dataset, "__len__"):  # a stream (`datasets.IterableDataset`)
        return dataset.take(n)
    return dataset.select(range(min(n, len(dataset))))


def run_tokenizer(
    run: "RunFolder",
    source: str | None,
    datasets: "Sequence[Dataset]",
    columns: Sequence[str],
    vocab_size: int,
    max_rows: int | None = None,
    **options,
) -> "PreTrainedTokenizerBase":
    """The run's tokenizer (`RunFolder.tokenizer`): its own on resume, else the one saved at `source`, else one
    trained (`train_tokenizer(..., **options)`) on the `columns` of the first `max_rows` rows of each dataset
    (None: all rows), read dataset by dataset, column by column."""

    from accelerate import PartialState

    from ..tokenization import train_tokenizer

    def train() -> "PreTrainedTokenizerBase":
        samples = [first_n(dataset, max_rows) for dataset in datasets]
        texts = (batch[column] for dataset in samples for column in columns for batch in dataset.iter(batch_size=1000))
        return train_tokenizer(texts, vocab_size, show_progress=PartialState().is_main_process, **options)

    return run.tokenizer(source, train)


def parameter_count(model: "torch.nn.Module", trainable: bool = False) -> int:
    """The model's parameters (`trainable`: those that train), each counted once."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable)


def chosen_model(run: "RunFolder") -> Path:
    """The exported model a run is judged by: `best/` when it has a best_metric, else `final/`."""
    return run.path / ("best" if run.config.best_metric else "final")


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def write_results(folder: str | Path, results: dict) -> Path:
    """`folder/results.json`: the figures a task's run (or evaluation) ends with."""
    path = Path(folder) / "results.json"
    path.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    return path


__all__ = [
    "CONFIGS",
    "configure_logging",
    "packaged_config",
    "parse_arguments",
    "first_n",
    "run_tokenizer",
    "parameter_count",
    "chosen_model",
    "default_device",
    "write_results",
]
