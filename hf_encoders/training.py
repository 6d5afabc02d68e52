"""The one Accelerate training loop that every script uses (masked-LM pretraining, translation, fine-tuning).

`accelerate launch script.py ...` runs it on one CPU, one GPU, several GPUs (DDP, FSDP) or several machines; the code
is the same. What it does:

- mixed precision (`no`, `bf16`, `fp16`; fp16 on a CPU, which Accelerate would quietly ignore, is switched to bf16
  with a warning), gradient accumulation, AdamW without weight decay on norms and biases, warmup then linear,
  cosine or warmup-stable-decay schedules, gradient clipping;
- token-level losses averaged over the whole global batch (every labelled token of the accumulation window on every
  process counts once), so 4 x 2 accumulation equals a batch of 8 and two processes equal one;
- a map-style training set (shuffled, length-grouped if asked, split across processes by accelerate), or a streamed
  one (`hf_encoders.data.StreamedExamples`: each process reads its own part; a budget in steps; its position saved
  with every checkpoint);
- a budget in steps, epochs and/or wall-clock minutes; evaluation every N steps; a non-finite loss stops the run
  with the step named, before any checkpoint is written from the broken weights;
- checkpoints every N steps with `save_state`, verified by a manifest and renamed when complete (a crash mid-save
  leaves the previous one), the K newest kept; `resume` continues from the newest intact one, skipping the batches
  already seen, and steps, tokens and time go on counting (the run folder's rules: hf_encoders/run_folder.py);
- the final and the best model (by the chosen validation metric) exported with `save_pretrained` and the tokenizer;
  at the end, the weights of the N newest checkpoints averaged (`average_last`, as fairseq does), evaluated, and
  the average made the best model when it scores better;
- a progress bar on the main process, metrics to tensorboard and to `metrics.jsonl`, their curves in `curves.png`,
  the resolved config beside them;
- an orderly end: SIGTERM stops the run as an error does, a stream's dataloader workers end with their process
  (even one killed with SIGKILL), and the process group is destroyed at exit, before the interpreter's teardown.

`train()` reads top to bottom, as accelerate's examples do; its parts: `StopConditions` (the budget as a value),
`build_optimizer`, `resume`, `MapStyleData` / `StreamedData` (the micro-batches of each step, resumable mid-epoch
or mid-stream), `optimizer_step` (one accumulation window: loss normalisation, label smoothing, clipping),
`TrainLoss` (logging and the non-finite guard), `Evaluation` (the metrics and the best model). The run folder (`RunFolder`) writes, verifies
and loads the checkpoints and exports the models. Task evaluations live with their task (hf_encoders/tasks/*).
"""

import argparse
import atexit
import contextlib
import ctypes
import inspect
import itertools
import json
import logging
import math
import os
import platform
import shlex
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path

import accelerate
import torch
import transformers
import yaml
from accelerate import Accelerator
from accelerate.utils import (
    DataLoaderConfiguration,
    DistributedType,
    DynamoBackend,
    ProjectConfiguration,
    TorchDynamoPlugin,
    send_to_device,
    set_seed,
)
from torchdata.stateful_dataloader import StatefulDataLoader
from tqdm.auto import tqdm
from transformers import HfArgumentParser, PreTrainedModel, PreTrainedTokenizerBase, get_scheduler

from .data import ResumableCollator, StreamError, build_dataloader
from .plots import plot_training_curves
from .run_folder import RunFolder, average_checkpoints, checkpoints

logger = logging.getLogger(__name__)

LOSS_METRICS = ("loss", "perplexity", "accuracy")  # what `evaluate_loss` reports
SCHEDULES = {
    "linear": "linear",
    "cosine": "cosine",
    "wsd": "warmup_stable_decay",
    "constant": "constant_with_warmup",
    "inverse_sqrt": "inverse_sqrt",  # fairseq's transformer schedule: lr * sqrt(warmup / step) after warmup
}
PRECISIONS = ("no", "bf16", "fp16")


def refuse_non_finite(settings) -> None:
    """Raise a ValueError naming the first number among the dataclass `settings` that is not finite: `--learning_rate
    inf` would pass the range checks, and the run would stop later on a NaN loss that names no setting."""
    for setting in fields(settings):
        value = getattr(settings, setting.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{setting.name}={value!r}: it must be a finite number.")


@dataclass
class TrainingConfig:
    """How to train; every field can be set in the YAML config or on the command line (`--learning_rate 1e-3`)."""

    output_dir: str = field(default="runs/run", metadata={"help": "Checkpoints, exported models, logs, config."})
    seed: int = field(default=0, metadata={"help": "Seed for weights, data order and masking."})
    mixed_precision: str = field(default="no", metadata={"help": "no, bf16 or fp16."})
    per_device_batch_size: int = field(default=16, metadata={"help": "Examples per device and micro-step."})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Micro-steps per optimizer step."})
    learning_rate: float = 5e-4
    weight_decay: float = field(default=0.01, metadata={"help": "Decoupled; none on norms and biases."})
    adam_beta1: float = 0.9
    adam_beta2: float = 0.98
    adam_epsilon: float = 1e-6
    lr_schedule: str = field(
        default="linear", metadata={"help": "linear, cosine, wsd, constant or inverse_sqrt (after warmup)."}
    )
    warmup_steps: int = 0
    decay_fraction: float = field(default=0.2, metadata={"help": "wsd: fraction of the steps spent decaying."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Clip the gradient norm to this (0: no clipping)."})
    max_steps: int = field(default=0, metadata={"help": "Optimizer steps; 0: as many as num_epochs give."})
    num_epochs: float = 1.0
    max_minutes: float = field(default=0.0, metadata={"help": "Stop (and save) after this wall-clock time; 0: none."})
    eval_every: int = field(default=0, metadata={"help": "Evaluate every N steps (and at the end); 0: at the end."})
    save_every: int = field(default=0, metadata={"help": "Checkpoint every N steps; 0: only at the end."})
    keep_checkpoints: int = 2
    average_last: list[int] = field(
        default_factory=list,
        metadata={
            "help": "At the end, average the weights of the N newest checkpoints (one or more N: 5 10) into "
            "averaged_N/; each is evaluated, and exported to best/ when it scores better."
        },
    )
    log_every: int = 10
    best_metric: str = field(
        default="", metadata={"help": "Validation metric choosing the best model, e.g. imdb/loss."}
    )
    greater_is_better: bool = False
    token_level_loss: bool = field(
        default=True, metadata={"help": "Average the loss over all labelled tokens of the global batch."}
    )
    label_smoothing: float = field(
        default=0.0, metadata={"help": "Label-smoothed cross-entropy on the model's logits (0: the model's own loss)."}
    )
    group_by_length: bool = field(default=False, metadata={"help": "Batch examples of similar length together."})
    torch_compile: bool = field(
        default=False,
        metadata={
            "help": "Wrap the model in torch.compile (through accelerate; as `accelerate launch --dynamo_backend`). "
            "Padded batches keep their unpadding and the sparse head: the batch is read between two graphs."
        },
    )
    torch_compile_backend: str = field(default="inductor", metadata={"help": "The backend of --torch_compile."})
    dataloader_workers: int = field(
        default=0, metadata={"help": "Worker processes that read and tokenize a streamed training set (0: none)."}
    )
    resume: bool = field(
        default=False, metadata={"help": "Continue the run in output_dir from its newest intact checkpoint."}
    )
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Delete the run that output_dir holds and start a new one there."}
    )

    def __post_init__(self):
        refuse_non_finite(self)
        at_least = {
            **dict.fromkeys(
                ("per_device_batch_size", "gradient_accumulation_steps", "keep_checkpoints", "log_every"), 1
            ),
            **dict.fromkeys(("max_steps", "warmup_steps", "eval_every", "save_every", "num_epochs", "max_minutes"), 0),
            "dataloader_workers": 0,
            **dict.fromkeys(("weight_decay", "max_grad_norm"), 0),
        }
        for name, minimum in at_least.items():
            if getattr(self, name) < minimum:
                raise ValueError(f"{name}={getattr(self, name)!r}: it must be at least {minimum}.")
        if not self.learning_rate > 0 or not self.adam_epsilon > 0:
            raise ValueError(
                f"learning_rate and adam_epsilon must be positive ({self.learning_rate}, {self.adam_epsilon})."
            )
        for name in ("adam_beta1", "adam_beta2", "decay_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name}={getattr(self, name)!r}: it must lie in [0, 1].")
        if self.resume and self.overwrite_output_dir:
            raise ValueError("resume continues the run in output_dir, overwrite_output_dir deletes it: choose one.")
        if self.mixed_precision not in PRECISIONS:
            raise ValueError(f"mixed_precision={self.mixed_precision!r}: choose one of {', '.join(PRECISIONS)}.")
        backends = [backend.value.lower() for backend in DynamoBackend if backend != DynamoBackend.NO]
        if self.torch_compile_backend.lower() not in backends:
            raise ValueError(
                f"torch_compile_backend={self.torch_compile_backend!r}: choose one of {', '.join(backends)}."
            )
        if self.lr_schedule not in SCHEDULES:
            raise ValueError(f"lr_schedule={self.lr_schedule!r}: choose one of {', '.join(SCHEDULES)}.")
        if self.max_steps <= 0 and self.num_epochs <= 0:
            raise ValueError("Give a budget: max_steps > 0 or num_epochs > 0.")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must lie in [0, 1), got {self.label_smoothing}.")
        if self.average_last and (min(self.average_last) < 2 or max(self.average_last) > self.keep_checkpoints):
            raise ValueError(
                f"average_last={self.average_last}: each N must lie in [2, keep_checkpoints={self.keep_checkpoints}] "
                "(the run keeps only keep_checkpoints checkpoints to average)."
            )
        if self.average_last and not self.save_every:
            raise ValueError(
                "average_last averages the run's checkpoints: give save_every (a checkpoint every N steps)."
            )


def parse_config(dataclass_types: tuple[type, ...], argv: list[str] | None = None) -> tuple:
    """Fill the dataclasses from `--config file.yaml` (flat `name: value` settings) and command-line flags, which
    override the file. An unknown setting in the file is an error, as it is on the command line; a bad argument
    raises a ValueError that names it (`--help` still prints every setting and exits)."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    config_file = pre.parse_known_args(argv)[0].config
    parser = HfArgumentParser(dataclass_types)
    parser.add_argument("--config", help="YAML file of settings; command-line flags override it.")

    def refuse(message: str):
        raise ValueError(f"{message} (--help lists every setting)")

    parser.error = refuse
    parser.allow_abbrev = False  # `--max_step` is a typo, not `--max_steps`
    if config_file:
        if not Path(config_file).is_file():
            raise FileNotFoundError(f"No config file {config_file!r}.")
        settings = yaml.safe_load(Path(config_file).read_text()) or {}
        if not isinstance(settings, dict):
            raise ValueError(
                f"{config_file}: a config file is a mapping of settings (`name: value` lines), not a "
                f"{type(settings).__name__}."
            )
        known = {f.name for dataclass_type in dataclass_types for f in fields(dataclass_type)}
        if unknown := sorted(set(settings) - known):
            raise ValueError(f"{config_file}: unknown settings {unknown}; known ones are {sorted(known)}.")
        parser.set_defaults(**settings)
    *parsed, unknown = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    if unknown:
        refuse(f"unknown arguments {unknown}")
    return tuple(parsed[: len(dataclass_types)])


class NonFiniteLossError(RuntimeError):
    """Raised when a training loss is NaN or infinite."""


def device_description() -> str:
    """What this process trains on, for the run's record and its model card."""
    if torch.cuda.is_available():
        return f"{torch.cuda.device_count()} x {torch.cuda.get_device_name()}"
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Decay the weight matrices; leave biases, norms and other 1-D parameters alone."""
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            (no_decay if parameter.ndim < 2 or "norm" in name else decay).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def logits_for_labels(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The predictions and targets of the labelled positions, whether the model returned logits for every position
    (`(..., vocab)` aligned with `labels`) or, with sparse prediction, one row per labelled position."""
    labelled = labels != -100
    if logits.shape[:-1] == labels.shape:
        logits = logits[labelled]
    return logits, labels[labelled]


def logits_wanted(model: PreTrainedModel) -> dict[str, bool]:
    """The keyword arguments that make `model` return logits in training with labels: `skip_logits=False` for a
    model whose training loss skips them (`EncoderForMaskedLM`), none for the others."""
    return {"skip_logits": False} if "skip_logits" in inspect.signature(model.forward).parameters else {}


def smoothed_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float, num_items_in_batch: torch.Tensor | None = None
) -> torch.Tensor:
    """Label-smoothed cross-entropy over the labelled tokens, divided by `num_items_in_batch` (the labelled tokens
    of the global batch) when given, else averaged over this batch's labelled tokens."""
    logits, targets = logits_for_labels(logits, labels)
    loss = torch.nn.functional.cross_entropy(logits.float(), targets, label_smoothing=label_smoothing, reduction="sum")
    return loss / (num_items_in_batch if num_items_in_batch is not None else max(targets.numel(), 1))


@torch.no_grad()
def evaluate_loss(
    model: PreTrainedModel,
    dataset,
    collator: Callable[[list[dict]], dict],
    accelerator: Accelerator,
    batch_size: int = 16,
) -> dict[str, float]:
    """Cross-entropy per labelled token, perplexity and token accuracy of `model` on `dataset` batched by `collator`
    (masked-LM, translation, any model whose batches carry `labels`), each process taking its own shard."""
    # each process takes its own shard (not `accelerator.prepare`, which would keep the loader for checkpoints)
    shard = dataset.shard(accelerator.num_processes, accelerator.process_index, contiguous=True)
    model.eval()
    totals = torch.zeros(3, device=accelerator.device)  # summed loss, correct predictions, labelled tokens
    for batch in build_dataloader(shard, collator, batch_size, shuffle=False):
        batch = {key: value.to(accelerator.device) for key, value in batch.items()}
        logits, targets = logits_for_labels(model(**batch).logits.float(), batch["labels"])
        loss = torch.nn.functional.cross_entropy(logits, targets, reduction="sum")
        correct = (logits.argmax(-1) == targets).sum()
        totals += torch.stack([loss, correct.float(), totals.new_tensor(targets.numel())])
    loss_sum, correct, count = accelerator.reduce(totals, reduction="sum").tolist()
    model.train()
    loss = loss_sum / max(count, 1.0)
    scores = loss, math.exp(min(loss, 50.0)), correct / max(count, 1.0)
    return dict(zip(LOSS_METRICS, scores, strict=True))


@dataclass
class TrainResult:
    steps: int
    train_loss: float
    metrics: dict[str, float]
    seconds: float
    tokens_seen: int  # input tokens (without padding) of all processes
    tokens_per_second: float
    stopped_by: str | None
    averaged: dict[str, dict[str, float]] = field(default_factory=dict)  # averaged_N: its evaluation


@dataclass(frozen=True)
class StopConditions:
    """When the run stops: after `total_steps` optimizer steps (from max_steps, or num_epochs), or once this segment
    of the run has trained for more than `max_minutes` (0: no time limit)."""

    total_steps: int
    max_minutes: float = 0.0

    @classmethod
    def from_config(cls, config: TrainingConfig, steps_per_epoch: int) -> "StopConditions":
        return cls(config.max_steps or math.ceil(config.num_epochs * steps_per_epoch), config.max_minutes)

    def reached(self, step: int, elapsed: float) -> str | None:
        """Why the run stops after `step` with `elapsed` seconds of training in this segment, or None to go on."""
        if self.max_minutes > 0 and elapsed > 60 * self.max_minutes:
            return "max_minutes"
        if step >= self.total_steps:
            return "max_steps"
        return None


def end_process_group() -> None:
    """Destroy the process group of a distributed run (registered to run at exit, once the script's last collective
    is done: the scripts evaluate on their test sets after `train()`). Left to the interpreter's own teardown, gloo's
    worker threads may drop their last finished collective after the interpreter began finalizing; the tensors it
    held then need the GIL, which ends the thread mid-destructor, and the process aborts ("terminate called without
    an active exception", SIGABRT) after a run that succeeded. Destroying the group joins those threads while the
    interpreter is whole. Local to this process: no barrier, which would hang an exit whose peers are gone."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def build_accelerator(run: RunFolder) -> Accelerator:
    atexit.unregister(end_process_group)  # registered once, however many runs this process trains
    atexit.register(end_process_group)
    config = run.config
    accelerator = Accelerator(
        mixed_precision=run.precision,
        dynamo_plugin=TorchDynamoPlugin(backend=config.torch_compile_backend) if config.torch_compile else None,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        log_with="tensorboard",
        project_config=ProjectConfiguration(project_dir=str(run.path), logging_dir=str(run.path / "logs")),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )
    fsdp_asked = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    if fsdp_asked and accelerator.distributed_type != DistributedType.FSDP:
        logger.warning(
            "FSDP was asked for (--use_fsdp), but accelerate runs these processes as %s: every process holds the "
            "whole model (accelerate shards with FSDP on accelerators only, not on CPU processes).",
            accelerator.distributed_type.value,
        )
    return accelerator


@contextlib.contextmanager
def stopped_by_sigterm() -> Iterator[None]:
    """Within (on the main thread): SIGTERM, a scheduler's or `kill`'s, raises SystemExit, so that the run unwinds as
    on any error (its dataloader workers shut down, the process group ended at exit) instead of vanishing; the handler
    that was there before comes back after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame) -> None:
        raise SystemExit(f"Stopped by {signal.Signals(signum).name}.")

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def command_line() -> str:
    """How this process was started, as a shell line (an installed command by its name: `hf-encoders finetune ...`)."""
    program = Path(sys.argv[0])
    installed = program.is_absolute() or program.parent.name == "bin"
    return shlex.join([program.name if installed else str(program), *sys.argv[1:]])


def run_settings(run: RunFolder, model: PreTrainedModel, accelerator: Accelerator) -> dict:
    """What config.json records: the run's settings, the training's, what it trains on, and the command lines and
    devices of its segments (a resumed run's earlier ones first)."""
    earlier = {}
    if run.resuming:
        earlier = json.loads((run.path / "config.json").read_text())
    return {
        **run.settings,
        "command": command_line(),
        "commands": [*earlier.get("commands", [earlier["command"]] if "command" in earlier else []), command_line()],
        "parameters": sum(p.numel() for p in model.parameters()),
        "training": run.training_settings(),
        "num_processes": accelerator.num_processes,
        "distributed_type": accelerator.distributed_type.value,
        "device": device_description(),
        "devices": [*earlier.get("devices", [earlier["device"]] if "device" in earlier else []), device_description()],
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "accelerate": accelerate.__version__,
        },
    }


def build_optimizer(
    model: torch.nn.Module, config: TrainingConfig, total_steps: int, num_processes: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """AdamW (no weight decay on norms and biases) and the learning-rate schedule over `total_steps`."""
    optimizer = torch.optim.AdamW(
        parameter_groups(model, config.weight_decay),
        lr=config.learning_rate,
        betas=(config.adam_beta1, config.adam_beta2),
        eps=config.adam_epsilon,
    )
    per_step = num_processes  # a prepared scheduler steps once per process at each optimizer step
    decay = {"num_decay_steps": int(config.decay_fraction * total_steps) * per_step}
    scheduler = get_scheduler(
        SCHEDULES[config.lr_schedule],
        optimizer,
        num_warmup_steps=config.warmup_steps * per_step,
        num_training_steps=total_steps * per_step,
        scheduler_specific_kwargs=decay if config.lr_schedule == "wsd" else None,
    )
    return optimizer, scheduler


def resume(run: RunFolder, accelerator: Accelerator, total_steps: int, data: "TrainingData") -> dict:
    """What earlier segments of a resumed run did (step, best value, tokens, training time), their checkpoint's
    state loaded into the prepared objects (and a stream's position into `data`); the metrics logged after that
    checkpoint are dropped."""
    progress = {"step": 0, "best": None, "tokens_seen": 0, "seconds": 0.0}
    if checkpoint := run.resume_from():
        progress.update(run.load_checkpoint(accelerator, checkpoint))
        if isinstance(data, StreamedData):
            data.load_state_dict(run.load_data_state(checkpoint, accelerator.process_index))
        logger.info("Resumed from %s (step %d)", checkpoint, progress["step"])
    finished = progress["step"] >= total_steps
    if run.config.resume and accelerator.is_main_process:
        run.truncate_metrics(progress["step"], keep_last_evaluations=not finished)
    if finished:
        logger.warning(
            "The run in %s is already at step %d of %d: nothing is trained, its end (evaluation, averaging, export) "
            "runs again. Give a larger --max_steps (or --num_epochs) to train on.",
            run.path,
            progress["step"],
            total_steps,
        )
    return progress


def planned_checkpoints(config: TrainingConfig, total_steps: int) -> int:
    """How many checkpoints a run with `save_every` keeps at its end (every `save_every` steps, and the last
    step's)."""
    return min(math.ceil(total_steps / config.save_every), config.keep_checkpoints)


def load_weights(model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Load `weights` (a checkpoint's, which holds tied tensors once) into `model`; any other missing or unexpected
    tensor is an error."""
    missing, unexpected = model.load_state_dict(weights, strict=False)
    state = model.state_dict()
    loaded = {state[name].data_ptr() for name in weights}
    untied = [name for name in missing if state[name].data_ptr() not in loaded]
    if untied or unexpected:
        raise ValueError(f"The averaged weights do not fit the model: missing {untied}, unexpected {unexpected}.")


def average_last_checkpoints(
    model: torch.nn.Module, run: RunFolder, accelerator: Accelerator, evaluation: "Evaluation", step: int
) -> dict[str, dict[str, float]]:
    """`config.average_last`: for each N, the weights of the run's N newest checkpoints averaged into `model`,
    exported to `averaged_N/` and evaluated (logged as `averaged_N/...`, and exported to `best/` when it scores
    better than the best so far). A run stopped early by its time budget may have fewer: that N is skipped, said."""
    found, results = checkpoints(run.path), {}
    for n in run.config.average_last:
        name = f"averaged_{n}"
        if len(found) < n:
            logger.warning("average_last: %s has %d checkpoints, not %d: no %s", run.path, len(found), n, name)
            continue
        load_weights(accelerator.unwrap_model(model), average_checkpoints(found[-n:]))
        logger.info("%s: the weights of %s", name, ", ".join(folder.name for folder in found[-n:]))
        run.export(accelerator, model, name, evaluation.tokenizer)
        results[name] = evaluation(model, step, label=name)
    return results


def accumulation_windows(
    dataloader, collator, accelerator: Accelerator, step: int, batches_per_epoch: int, steps_per_epoch: int
) -> Iterator[list[dict]]:
    """The micro-batches of each optimizer step from `step` on, epoch after epoch (the rest of an epoch that does
    not fill a window is dropped). A resumed run skips the batches its epoch has already seen."""
    accumulation = accelerator.gradient_accumulation_steps
    epoch = step // steps_per_epoch
    while True:
        dataloader.set_epoch(epoch)
        skip = (step % steps_per_epoch) * accumulation
        if isinstance(collator, ResumableCollator):  # noise-drawing: the same masks as an uninterrupted run
            collator.resume_at(epoch * batches_per_epoch + skip)
        batches = iter(accelerator.skip_first_batches(dataloader, skip) if skip else dataloader)
        while len(window := list(itertools.islice(batches, accumulation))) == accumulation:
            yield window
            step += 1
        epoch += 1


class MapStyleData:
    """A dataset of known length: shuffled batches (grouped by length if asked) that accelerate splits across the
    processes, epoch after epoch; a resumed run skips the batches its epoch has already seen."""

    def __init__(self, dataset, collator: Callable, run: RunFolder, accelerator: Accelerator):
        config = run.config
        dataloader = build_dataloader(
            dataset, collator, config.per_device_batch_size, group_by_length=config.group_by_length, seed=config.seed
        )
        self.batches_per_epoch = math.ceil(len(dataloader) / accelerator.num_processes)
        self.steps_per_epoch = max(self.batches_per_epoch // config.gradient_accumulation_steps, 1)
        self.dataloader, self.collator, self.accelerator = accelerator.prepare(dataloader), collator, accelerator

    def windows(self, step: int) -> Iterator[list[dict]]:
        return accumulation_windows(
            self.dataloader, self.collator, self.accelerator, step, self.batches_per_epoch, self.steps_per_epoch
        )

    def state_dict(self) -> None:
        return None  # the step says where the data is


PR_SET_PDEATHSIG = 1  # prctl(2), Linux: the signal a process gets when its parent dies


def end_with_parent(worker_id: int) -> None:
    """The `worker_init_fn` of a stream's dataloader workers: a worker ends when its parent dies (the training
    process, killed or crashed; or the forkserver that starts workers for it, and ends with it) instead of living on
    with its memory (torch's watchdog lets it leave its loop, but its exit then waits forever to flush a pipe that
    nobody reads). On Linux the kernel kills it (PR_SET_PDEATHSIG); elsewhere a thread looks for the parent every
    second. SIGTERM ends it at once: the run's handler (`stopped_by_sigterm`) is the training process's alone."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    parent = os.getppid()
    if not (sys.platform == "linux" and ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL) == 0):
        threading.Thread(target=exit_without_parent, args=(parent,), daemon=True, name="parent-watchdog").start()
    if os.getppid() != parent:  # it died while the signal was being armed
        os._exit(1)


def exit_without_parent(parent: int, interval: float = 1.0) -> None:
    while os.getppid() == parent:
        time.sleep(interval)
    os._exit(1)


class StreamedData:
    """A stream (`hf_encoders.data.StreamedExamples`): each process reads its own part (split again among its
    `dataloader_workers`, which read and tokenize while the model trains) and batches it, in steps without epochs.
    torchdata's `StatefulDataLoader` tracks the position of every worker as the loop consumes the batches; it goes
    into every checkpoint, so a resumed run reads on from there. The collator runs in the training process, so that
    noise-drawing collators resume with the run."""

    steps_per_epoch = 0  # unknown: a streamed run is measured in steps

    def __init__(self, stream, collator: Callable, run: RunFolder, accelerator: Accelerator):
        config = run.config
        if not config.max_steps:
            raise ValueError("A streamed training set has no known length: give the run's budget as --max_steps.")
        self.collator, self.run, self.accelerator = collator, run, accelerator
        self.dataloader = StatefulDataLoader(  # not prepared: accelerate's would read a batch ahead
            stream,
            batch_size=config.per_device_batch_size,
            collate_fn=list,
            num_workers=config.dataloader_workers,
            worker_init_fn=end_with_parent,
        )

    def windows(self, step: int) -> Iterator[list[dict]]:
        accumulation = self.accelerator.gradient_accumulation_steps
        if isinstance(self.collator, ResumableCollator):  # noise-drawing: the same masks as an uninterrupted run
            self.collator.resume_at(step * accumulation)
        batches = (send_to_device(self.collator(rows), self.accelerator.device) for rows in self.rows())
        while True:
            yield list(itertools.islice(batches, accumulation))

    def rows(self) -> Iterator[list[dict]]:
        """The dataloader's batches of rows; a file that cannot be read stops the run, saying what it can go on from."""
        try:
            yield from self.dataloader
        except StreamError as error:
            then = "resume the run (--resume)" if checkpoints(self.run.path) else "start the run again"
            raise StreamError(f"{str(error).rstrip()} {checkpoint_note(self.run)} Fix the file and {then}.") from error

    def state_dict(self) -> dict:
        return self.dataloader.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.dataloader.load_state_dict(state)


TrainingData = MapStyleData | StreamedData


def optimizer_step(
    model: PreTrainedModel,
    window: list[dict],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    accelerator: Accelerator,
    config: TrainingConfig,
    inputs: dict[str, float],
) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step over the micro-batches of `window`, `inputs` passed to every forward. Returns the step's
    loss (over all processes) and the input tokens (without padding) this process read."""
    extra = {}
    if config.token_level_loss:  # every labelled token of the global batch counts once
        labelled = sum((batch["labels"] != -100).sum() for batch in window)
        extra["num_items_in_batch"] = accelerator.reduce(labelled, reduction="sum")
    step_loss = torch.zeros((), device=accelerator.device)
    tokens = torch.zeros((), dtype=torch.long, device=accelerator.device)
    for batch in window:
        with accelerator.accumulate(model):
            if config.label_smoothing:
                logits = model(
                    **batch, **inputs, **logits_wanted(accelerator.unwrap_model(model, keep_torch_compile=False))
                ).logits
                loss = smoothed_cross_entropy(
                    logits, batch["labels"], config.label_smoothing, extra.get("num_items_in_batch")
                )
            else:
                loss = model(**batch, **extra, **inputs).loss
            step_loss += loss.detach()
            if config.token_level_loss:  # undo the averaging of accumulate() and of DDP
                loss = loss * config.gradient_accumulation_steps * accelerator.num_processes
            accelerator.backward(loss)
            if accelerator.sync_gradients and config.max_grad_norm > 0:
                accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        tokens += batch["attention_mask"].sum() if "attention_mask" in batch else batch["input_ids"].numel()
    if not config.token_level_loss:
        step_loss /= len(window)
    return accelerator.reduce(step_loss, reduction="sum" if config.token_level_loss else "mean"), tokens


def checkpoint_note(run: RunFolder) -> str:
    """What a run stopped by an error can go on from."""
    kept = checkpoints(run.path)
    return f"The last good checkpoint is {kept[-1]}." if kept else "No checkpoint was written."


class TrainLoss:
    """The train loss averaged over the steps since it was last logged, checked to be finite when it is logged
    (before any checkpoint or export of these weights)."""

    def __init__(self, run: RunFolder, accelerator: Accelerator, bar: tqdm):
        self.run, self.accelerator, self.bar = run, accelerator, bar
        self.total, self.steps = torch.zeros((), device=accelerator.device), 0
        self.last = float("nan")

    def add(self, loss: torch.Tensor) -> None:
        """The loss of the step just done (and the progress bar advanced by it)."""
        self.total += loss
        self.steps += 1
        self.bar.update(1)

    def log(self, step: int, learning_rate: float, inputs: dict[str, float], seconds: float) -> None:
        """Log the mean loss since the last log (tensorboard, metrics.jsonl, the bar), with the step's inputs and
        the run's wall-clock seconds so far (`train/seconds`: every segment of a resumed run, evaluations included;
        what time-to-quality curves are drawn against)."""
        self.last = (self.total / self.steps).item()
        if not math.isfinite(self.last):
            raise NonFiniteLossError(
                f"The training loss became {self.last} by step {step}; stopping. {checkpoint_note(self.run)}"
            )
        values = {"train/loss": self.last, "train/lr": learning_rate, "train/seconds": seconds}
        values.update({f"train/{k}": v for k, v in inputs.items()})
        self.accelerator.log(values, step=step)
        if self.accelerator.is_main_process:
            self.run.record(step, values)
        self.bar.set_postfix(loss=f"{self.last:.4f}")
        self.total.zero_()
        self.steps = 0


class Evaluation:
    """The run's evaluation, and its best model: whenever `config.best_metric` improves on the best value so far
    (`best`, from the checkpoint in a resumed run), the model is exported to `best/`."""

    def __init__(
        self,
        evaluate: Callable[[PreTrainedModel, Accelerator], dict[str, float]] | None,
        run: RunFolder,
        accelerator: Accelerator,
        tokenizer: PreTrainedTokenizerBase | None,
        best: float | None = None,
    ):
        self.evaluate, self.run, self.accelerator, self.tokenizer = evaluate, run, accelerator, tokenizer
        self.metric, self.greater_is_better = run.config.best_metric, run.config.greater_is_better
        self.best = best

    def improves(self, value: float) -> bool:
        return self.best is None or (value > self.best if self.greater_is_better else value < self.best)

    def __call__(self, model: PreTrainedModel, step: int, label: str = "") -> dict[str, float]:
        """Evaluate, log the metrics (tensorboard and metrics.jsonl; as `label/...` when a label names the model,
        e.g. `averaged_10`), and export the model if it is the best."""
        metrics = self.evaluate(model, self.accelerator) if self.evaluate else {}
        named = {f"{label}/{k}" if label else k: v for k, v in metrics.items()}
        self.accelerator.log({f"eval/{k}": v for k, v in named.items()}, step=step)
        if self.metric and self.metric not in metrics:
            raise ValueError(f"best_metric={self.metric!r} is not among the evaluation metrics {sorted(metrics)}.")
        if self.metric and self.improves(metrics[self.metric]):
            self.best = metrics[self.metric]
            self.run.export(self.accelerator, model, "best", self.tokenizer)
            logger.info(
                "step %d%s: new best %s = %.4f, exported to %s",
                step,
                f" ({label})" if label else "",
                self.metric,
                self.best,
                self.run.path / "best",
            )
        if self.accelerator.is_main_process and named:
            self.run.record(step, named)
        return metrics


class RunTotals:
    """Tokens and training time of the whole run: what the earlier segments of a resumed run did (`progress`, from
    its checkpoint) and what this segment has done since it started."""

    def __init__(self, progress: dict, accelerator: Accelerator):
        self.earlier, self.accelerator = progress, accelerator
        self.tokens = torch.zeros((), dtype=torch.long, device=accelerator.device)  # this process's, this segment's
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        """Seconds of this segment."""
        return time.perf_counter() - self.start

    def seconds(self) -> float:
        return self.earlier["seconds"] + self.elapsed()

    def tokens_seen(self) -> int:
        return self.earlier["tokens_seen"] + int(self.accelerator.reduce(self.tokens, reduction="sum").item())

    def progress(self, best: float | None, seconds: float | None = None) -> dict:
        """What a checkpoint's progress.json records besides its step."""
        return {
            "best": best,
            "tokens_seen": self.tokens_seen(),
            "seconds": self.seconds() if seconds is None else seconds,
        }


def close_logs(run: RunFolder, accelerator: Accelerator) -> None:
    """The training curves drawn from metrics.jsonl (curves.png), the trackers (tensorboard) closed."""
    if accelerator.is_main_process:
        plot_training_curves(run.metrics_file, run.path / "curves.png", title=run.path.name)
    for tracker in accelerator.trackers:  # not `end_training()`: it ends the process group that DDP still needs
        tracker.finish()


@stopped_by_sigterm()
def train(
    model: PreTrainedModel,
    train_dataset,
    collator: Callable[[list[dict]], dict],
    run: RunFolder,
    tokenizer: PreTrainedTokenizerBase | None = None,
    evaluate: Callable[[PreTrainedModel, Accelerator], dict[str, float]] | None = None,
    step_inputs: Callable[[int], dict[str, float]] | None = None,
) -> TrainResult:
    """Train `model` on `train_dataset` batched by `collator`, as `run.config` says, in the run folder `run`
    (`start_run(config, settings)`; its settings are written to `config.json` with the training's).

    Args:
        evaluate: called every `config.eval_every` steps and at the end with the (prepared) model and the
            accelerator; returns flat metrics such as `{"imdb/loss": ..., "imdb/accuracy": ...}`.
        step_inputs: called with the number of the optimizer step about to run (0, 1, ...; resumed runs go on
            counting) for schedules of the script's own, such as a KL weight: what it returns is passed to the
            model's forward in that step (`model(**batch, kl_weight=...)`) and logged as `train/*`.
    """
    config = run.config
    if config.best_metric and evaluate is None:
        raise ValueError(f"best_metric={config.best_metric!r} needs an evaluation, and this run has none.")
    accelerator = build_accelerator(run)
    if config.average_last and accelerator.distributed_type == DistributedType.FSDP:
        raise ValueError("average_last averages whole models' checkpoints; FSDP saves them sharded: drop one.")
    set_seed(config.seed)  # the training's own randomness does not depend on what the data preparation drew
    if accelerator.is_main_process:
        run.write_settings(run_settings(run, model, accelerator))
    streamed = isinstance(train_dataset, torch.utils.data.IterableDataset)
    data = (StreamedData if streamed else MapStyleData)(train_dataset, collator, run, accelerator)
    stop = StopConditions.from_config(config, data.steps_per_epoch)
    if config.average_last and (kept := planned_checkpoints(config, stop.total_steps)) < max(config.average_last):
        raise ValueError(
            f"average_last={config.average_last}, but {stop.total_steps} steps with save_every={config.save_every} "
            f"leave {kept} checkpoints: save more often or average fewer."
        )
    optimizer, scheduler = build_optimizer(model, config, stop.total_steps, accelerator.num_processes)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    accelerator.init_trackers("tb")
    progress = resume(run, accelerator, stop.total_steps, data)
    evaluation = Evaluation(evaluate, run, accelerator, tokenizer, best=progress["best"])

    model.train()
    step = progress["step"]
    bar = tqdm(total=stop.total_steps, initial=step, disable=not accelerator.is_local_main_process, desc="training")
    totals, train_loss = RunTotals(progress, accelerator), TrainLoss(run, accelerator, bar)
    stopped_by = stop.reached(step, 0.0)  # a resumed run at the end of its budget: nothing to train
    for window in data.windows(step) if stopped_by is None else ():
        inputs = step_inputs(step) if step_inputs else {}
        loss, tokens = optimizer_step(model, window, optimizer, scheduler, accelerator, config, inputs)
        step += 1
        train_loss.add(loss)
        totals.tokens += tokens
        stopped_by = stop.reached(step, totals.elapsed())
        save = config.save_every and step % config.save_every == 0
        if step % config.log_every == 0 or save or stopped_by:
            train_loss.log(step, scheduler.get_last_lr()[0], inputs, totals.seconds())
        if stopped_by:
            break  # the final evaluation, checkpoint and export follow
        if config.eval_every and step % config.eval_every == 0:
            evaluation(model, step)
        if save:
            run.write_checkpoint(accelerator, step, totals.progress(evaluation.best), data.state_dict())
    bar.close()

    seconds = totals.seconds()
    trained = step > progress["step"]  # else a resumed run at the end of its budget: its checkpoint is this step's
    metrics = evaluation(model, step)
    if trained:
        run.write_checkpoint(accelerator, step, totals.progress(evaluation.best, seconds), data.state_dict())
    run.export(accelerator, model, "final", tokenizer)
    best_of_checkpoints = evaluation.best
    averaged = average_last_checkpoints(model, run, accelerator, evaluation, step)
    if evaluation.best != best_of_checkpoints:  # an average is the best model now
        run.update_best(evaluation.best)
    tokens_seen = totals.tokens_seen()
    close_logs(run, accelerator)
    train_loss_last = train_loss.last if trained else run.last_logged("train/loss")
    throughput = tokens_seen / max(seconds, 1e-9)
    return TrainResult(step, train_loss_last, metrics, seconds, tokens_seen, throughput, stopped_by, averaged)


__all__ = [
    "TrainingConfig",
    "TrainResult",
    "LOSS_METRICS",
    "NonFiniteLossError",
    "StopConditions",
    "parse_config",
    "refuse_non_finite",
    "train",
    "evaluate_loss",
    "smoothed_cross_entropy",
]
