"""The one Accelerate training loop that every script uses (masked-LM pretraining, translation, fine-tuning).

`accelerate launch script.py ...` runs it on one CPU, one GPU, several GPUs (DDP, FSDP) or several machines; the code
is the same. What it does:

- mixed precision (`no`, `bf16`, `fp16`; fp16 on a CPU, which Accelerate would quietly ignore, is switched to bf16
  with a warning), gradient accumulation, AdamW without weight decay on norms and biases, warmup then linear,
  cosine or warmup-stable-decay schedules, gradient clipping;
- token-level losses averaged over the whole global batch (every labelled token of the accumulation window on every
  process counts once), so 4 x 2 accumulation equals a batch of 8 and two processes equal one;
- a budget in steps, epochs and/or wall-clock minutes; evaluation every N steps; a non-finite loss stops the run
  with the step named, before any checkpoint is written from the broken weights;
- checkpoints every N steps with `save_state`, verified by a manifest and renamed when complete (a crash mid-save
  leaves the previous one), the K newest kept; `resume` continues from the newest intact one, skipping the batches
  already seen, and steps, tokens and time go on counting (the run folder's rules: hf_encoders/run_folder.py);
- the final and the best model (by the chosen validation metric) exported with `save_pretrained` and the tokenizer;
- a progress bar on the main process, metrics to tensorboard and to `metrics.jsonl`, their curves in `curves.png`,
  the resolved config beside them.
"""

import argparse
import json
import logging
import math
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import accelerate
import torch
import transformers
import yaml
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed
from tqdm.auto import tqdm
from transformers import HfArgumentParser, PreTrainedModel, PreTrainedTokenizerBase, get_scheduler

from .data import MLMCollator, build_dataloader
from .plots import plot_training_curves
from .run_folder import RunFolder, checkpoints

logger = logging.getLogger(__name__)

LOSS_METRICS = ("loss", "perplexity", "accuracy")  # what `evaluate_loss` reports
SCHEDULES = {"linear": "linear", "cosine": "cosine", "wsd": "warmup_stable_decay", "constant": "constant_with_warmup"}
PRECISIONS = ("no", "bf16", "fp16")


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
    lr_schedule: str = field(default="linear", metadata={"help": "linear, cosine, wsd or constant (after warmup)."})
    warmup_steps: int = 0
    decay_fraction: float = field(default=0.2, metadata={"help": "wsd: fraction of the steps spent decaying."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Clip the gradient norm to this (0: no clipping)."})
    max_steps: int = field(default=0, metadata={"help": "Optimizer steps; 0: as many as num_epochs give."})
    num_epochs: float = 1.0
    max_minutes: float = field(default=0.0, metadata={"help": "Stop (and save) after this wall-clock time; 0: none."})
    eval_every: int = field(default=0, metadata={"help": "Evaluate every N steps (and at the end); 0: at the end."})
    save_every: int = field(default=0, metadata={"help": "Checkpoint every N steps; 0: only at the end."})
    keep_checkpoints: int = 2
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
    resume: bool = field(
        default=False, metadata={"help": "Continue the run in output_dir from its newest intact checkpoint."}
    )
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Delete the run that output_dir holds and start a new one there."}
    )

    def __post_init__(self):
        at_least = {"per_device_batch_size": 1, "gradient_accumulation_steps": 1, "keep_checkpoints": 1,
                    "log_every": 1, "max_steps": 0, "warmup_steps": 0, "eval_every": 0, "save_every": 0,
                    "num_epochs": 0, "max_minutes": 0, "weight_decay": 0, "max_grad_norm": 0}  # fmt: skip
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
        if self.lr_schedule not in SCHEDULES:
            raise ValueError(f"lr_schedule={self.lr_schedule!r}: choose one of {', '.join(SCHEDULES)}.")
        if self.max_steps <= 0 and self.num_epochs <= 0:
            raise ValueError("Give a budget: max_steps > 0 or num_epochs > 0.")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must lie in [0, 1), got {self.label_smoothing}.")


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


def evaluate_masked_lm(
    model: PreTrainedModel,
    dataset,
    tokenizer: PreTrainedTokenizerBase,
    accelerator: Accelerator,
    batch_size: int = 16,
    mlm_probability: float = 0.15,
    seed: int = 1234,
    padding_free: bool = True,
) -> dict[str, float]:
    """Masked-LM loss (per masked token), perplexity and masked-token accuracy, with the same masks every time;
    `padding_free=False` for models that read padded rows (BERT, ModernBERT)."""
    collator = MLMCollator(
        tokenizer, mlm_probability=mlm_probability, padding_free=padding_free, seed=seed + accelerator.process_index
    )
    return evaluate_loss(model, dataset, collator, accelerator, batch_size)


@dataclass
class TrainResult:
    steps: int
    train_loss: float
    metrics: dict[str, float]
    seconds: float
    tokens_seen: int  # input tokens (without padding) of all processes
    tokens_per_second: float
    stopped_by: str


def train(
    model: PreTrainedModel,
    train_dataset,
    collator: Callable[[list[dict]], dict],
    run: RunFolder,
    tokenizer: PreTrainedTokenizerBase | None = None,
    evaluate: Callable[[PreTrainedModel, Accelerator], dict[str, float]] | None = None,
    before_step: Callable[[int], dict[str, float] | None] | None = None,
) -> TrainResult:
    """Train `model` on `train_dataset` batched by `collator`, as `run.config` says, in the run folder `run`
    (`start_run(config, settings)`; its settings are written to `config.json` with the training's).

    Args:
        evaluate: called every `config.eval_every` steps and at the end with the (prepared) model and the
            accelerator; returns flat metrics such as `{"imdb/loss": ..., "imdb/accuracy": ...}`.
        before_step: called with the number of the optimizer step about to run (0, 1, ...; resumed runs go on
            counting) for schedules of the script's own, such as a KL weight; what it returns is logged as `train/*`.
    """
    config, output_dir = run.config, run.path
    if config.best_metric and evaluate is None:
        raise ValueError(f"best_metric={config.best_metric!r} needs an evaluation, and this run has none.")
    precision = run.precision
    accelerator = Accelerator(
        mixed_precision=precision,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        log_with="tensorboard",
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "logs")),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )
    set_seed(config.seed)  # the training's own randomness does not depend on what the data preparation drew
    if accelerator.is_main_process:
        run.write_settings({**run.settings, "parameters": sum(p.numel() for p in model.parameters()),
                            "training": {**asdict(config), "mixed_precision": precision},
                            "num_processes": accelerator.num_processes, "device": device_description(),
                            "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                                         "accelerate": accelerate.__version__}})  # fmt: skip

    dataloader = build_dataloader(train_dataset, collator, config.per_device_batch_size,
                                  group_by_length=config.group_by_length, seed=config.seed)  # fmt: skip
    optimizer = torch.optim.AdamW(
        parameter_groups(model, config.weight_decay),
        lr=config.learning_rate,
        betas=(config.adam_beta1, config.adam_beta2),
        eps=config.adam_epsilon,
    )
    batches_per_epoch = math.ceil(len(dataloader) / accelerator.num_processes)
    steps_per_epoch = max(batches_per_epoch // config.gradient_accumulation_steps, 1)
    total_steps = config.max_steps or math.ceil(config.num_epochs * steps_per_epoch)
    processes = accelerator.num_processes  # a prepared scheduler steps once per process at each optimizer step
    scheduler = get_scheduler(
        SCHEDULES[config.lr_schedule],
        optimizer,
        num_warmup_steps=config.warmup_steps * processes,
        num_training_steps=total_steps * processes,
        scheduler_specific_kwargs=(
            {"num_decay_steps": int(config.decay_fraction * total_steps) * processes}
            if config.lr_schedule == "wsd"
            else None
        ),
    )
    model, optimizer, dataloader, scheduler = accelerator.prepare(model, optimizer, dataloader, scheduler)
    accelerator.init_trackers("tb")

    # what earlier segments of a resumed run did: steps, the best value, tokens and training time
    progress = {"step": 0, "best": None, "tokens_seen": 0, "seconds": 0.0}
    if checkpoint := run.resume_from():
        accelerator.load_state(str(checkpoint))
        progress.update(json.loads((checkpoint / "progress.json").read_text()))
        logger.info("Resumed from %s (step %d)", checkpoint, progress["step"])
    if config.resume and accelerator.is_main_process:
        run.truncate_metrics(progress["step"])
    step, best = progress["step"], progress["best"]
    if step >= total_steps:
        raise ValueError(
            f"The run in {output_dir} is already at step {step} of {total_steps}: give a larger --max_steps (or "
            "--num_epochs) to train on."
        )

    def tokens_so_far() -> int:
        return progress["tokens_seen"] + int(accelerator.reduce(tokens_seen, reduction="sum").item())

    def seconds_so_far() -> float:
        return progress["seconds"] + time.perf_counter() - start

    def save_checkpoint(seconds: float | None = None):
        run.write_checkpoint(accelerator, step, {"best": best, "tokens_seen": tokens_so_far(),
                                                 "seconds": seconds_so_far() if seconds is None else seconds})  # fmt: skip

    def export(name: str):
        accelerator.wait_for_everyone()
        unwrapped = accelerator.unwrap_model(model)
        unwrapped.save_pretrained(output_dir / name, is_main_process=accelerator.is_main_process,
                                  save_function=accelerator.save)  # fmt: skip
        if tokenizer is not None and accelerator.is_main_process:
            tokenizer.save_pretrained(output_dir / name)

    def run_evaluation() -> dict[str, float]:
        nonlocal best
        metrics = evaluate(model, accelerator) if evaluate else {}
        accelerator.log({f"eval/{k}": v for k, v in metrics.items()}, step=step)
        if config.best_metric and config.best_metric not in metrics:
            raise ValueError(
                f"best_metric={config.best_metric!r} is not among the evaluation metrics {sorted(metrics)}."
            )
        if config.best_metric:
            value = metrics[config.best_metric]
            if best is None or (value > best if config.greater_is_better else value < best):
                best = value
                export("best")
                logger.info("step %d: new best %s = %.4f, exported to %s", step, config.best_metric, value,
                            output_dir / "best")  # fmt: skip
        return metrics

    def record(values: dict):
        if accelerator.is_main_process:
            run.record(step, values)

    model.train()
    bar = tqdm(total=total_steps, initial=step, disable=not accelerator.is_local_main_process, desc="training")
    start, stopped_by = time.perf_counter(), "max_steps"
    tokens_seen = torch.zeros((), dtype=torch.long, device=accelerator.device)
    window_loss = torch.zeros((), device=accelerator.device)
    window_steps, last_loss = 0, float("nan")
    epoch = step // steps_per_epoch
    while step < total_steps:
        dataloader.set_epoch(epoch)
        skip = (step % steps_per_epoch) * config.gradient_accumulation_steps
        if hasattr(collator, "calls"):  # noise-drawing collators: the same masks as an uninterrupted run
            collator.calls = epoch * batches_per_epoch + skip
        iterator = iter(accelerator.skip_first_batches(dataloader, skip) if skip else dataloader)
        while step < total_steps:
            window = [batch for _, batch in zip(range(config.gradient_accumulation_steps), iterator, strict=False)]
            if len(window) < config.gradient_accumulation_steps:
                break  # the rest of the epoch does not fill a window
            extra = {}
            if config.token_level_loss:  # every labelled token of the global batch counts once
                labelled = sum((batch["labels"] != -100).sum() for batch in window)
                extra["num_items_in_batch"] = accelerator.reduce(labelled, reduction="sum")
            scheduled = (before_step(step) or {}) if before_step else {}
            step_loss = torch.zeros((), device=accelerator.device)
            for batch in window:
                with accelerator.accumulate(model):
                    if config.label_smoothing:
                        loss = smoothed_cross_entropy(model(**batch).logits, batch["labels"], config.label_smoothing,
                                                      extra.get("num_items_in_batch"))  # fmt: skip
                    else:
                        loss = model(**batch, **extra).loss
                    step_loss += loss.detach()
                    if config.token_level_loss:  # undo the averaging of accumulate() and of DDP
                        loss = loss * config.gradient_accumulation_steps * accelerator.num_processes
                    accelerator.backward(loss)
                    if accelerator.sync_gradients and config.max_grad_norm > 0:
                        accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                tokens_seen += (
                    batch["attention_mask"].sum() if "attention_mask" in batch else batch["input_ids"].numel()
                )
            if not config.token_level_loss:
                step_loss /= len(window)
            step += 1
            bar.update(1)
            window_loss += accelerator.reduce(step_loss, reduction="sum" if config.token_level_loss else "mean")
            window_steps += 1
            at_end = step >= total_steps
            out_of_time = config.max_minutes > 0 and time.perf_counter() - start > 60 * config.max_minutes
            if (
                step % config.log_every == 0
                or at_end
                or out_of_time
                or (config.save_every and step % config.save_every == 0)
            ):
                last_loss = (window_loss / window_steps).item()
                if not math.isfinite(last_loss):  # checked before any checkpoint or export of these weights
                    kept = checkpoints(output_dir)
                    raise NonFiniteLossError(
                        f"The training loss became {last_loss} by step {step}; stopping. "
                        + (f"The last good checkpoint is {kept[-1]}." if kept else "No checkpoint was written.")
                    )
                values = {"train/loss": last_loss, "train/lr": scheduler.get_last_lr()[0],
                          **{f"train/{name}": value for name, value in scheduled.items()}}  # fmt: skip
                accelerator.log(values, step=step)
                record(values)
                bar.set_postfix(loss=f"{last_loss:.4f}")
                window_loss.zero_()
                window_steps = 0
            if config.eval_every and step % config.eval_every == 0 and not at_end:
                record(run_evaluation())
            if config.save_every and step % config.save_every == 0 and not at_end:
                save_checkpoint()
            if out_of_time:
                stopped_by = "max_minutes"
                total_steps = step
        epoch += 1
    bar.close()
    seconds = seconds_so_far()
    metrics = run_evaluation()
    record(metrics)
    save_checkpoint(seconds)
    export("final")
    if accelerator.is_main_process:
        plot_training_curves(run.metrics_file, output_dir / "curves.png", title=output_dir.name)
    tokens_total = tokens_so_far()
    for tracker in accelerator.trackers:  # not `end_training()`: it ends the process group that DDP still needs
        tracker.finish()
    return TrainResult(step, last_loss, metrics, seconds, tokens_total, tokens_total / max(seconds, 1e-9), stopped_by)


__all__ = [
    "TrainingConfig",
    "TrainResult",
    "LOSS_METRICS",
    "NonFiniteLossError",
    "parse_config",
    "train",
    "evaluate_loss",
    "evaluate_masked_lm",
    "smoothed_cross_entropy",
]
