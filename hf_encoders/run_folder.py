"""One run per folder: what a training run keeps in its `output_dir`, and the rules that keep it from being corrupted.

    run = start_run(training, {"script": "pretrain_mlm", "model": ..., "data": ...}, metric_names=[...])
    tokenizer = run.tokenizer(data.tokenizer, lambda: train_tokenizer(...))
    train(model, dataset, collator, run, tokenizer, evaluate)

- A folder holds one run, and one run at a time: the run's main process holds `run.lock` (its pid, host, start and
  command, under an exclusive `flock`) until it ends, and a second run into the folder, resumed or not, is refused
  with who holds it. A lock whose holder is gone (a killed run) is stale: the next run names it and takes it over.
- Without `resume`, a folder that already holds a run is refused; `overwrite_output_dir` deletes that run's files
  first (and only those: anything else in the folder is left alone, and named).
- config.json records where the run was started (`working_directory`) and its local data by absolute path, with
  each file's size and modification time (`data_sources`); the data folder's SOURCE.md (provenance, licence) is
  copied into `sources/` when the run starts, so that its card is the same from any folder. A resume whose data
  files changed size, appeared or disappeared is refused by name; one whose files were only modified is warned
  about.
- `resume` continues the run in the folder with the settings it was started with: a setting that changes the run
  (model, data, tokenizer, batch size, seed, evaluation, ...) is refused by name; the budget (`max_steps`,
  `num_epochs`, `max_minutes`), the bookkeeping (`eval_every`, `save_every`, `keep_checkpoints`, `log_every`), the
  checkpoint averaging (`average_last`) and the test's decoding (beams, length penalty) may change. A run resumed
  at the end of its budget trains no more and says so: its end (evaluation, averaging, export, test) runs again.
  `metrics.jsonl` is cut back to the resumed step, so no step is logged twice.
- A run saves its tokenizer once, in `tokenizer/`; every resume (and every other process) loads that one.
- Every checkpoint gets a manifest (each file's size and SHA-256) written last; resume takes the newest checkpoint
  whose files match it, and says which newer ones it skipped and why.
- The run folder is the training loop's checkpoint manager: `write_checkpoint` (atomic, the K newest kept),
  `resume_from` and `load_checkpoint`, and `export` of the final and the best model (`save_pretrained`).
- The seed is set before anything random happens (tokenizer training, model initialisation, data order, masks).
- `average_checkpoints` averages the weights of the newest checkpoints, as fairseq's `average_checkpoints.py` does
  (the loop's `average_last`).
"""

import errno
import fcntl
import glob
import hashlib
import json
import logging
import os
import pickle
import shlex
import shutil
import socket
import sys
import time
import weakref
from collections.abc import Callable, Collection
from dataclasses import MISSING, asdict, fields, is_dataclass
from pathlib import Path

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import broadcast_object_list, parse_flag_from_env, set_seed
from safetensors.torch import load_file
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from .data.loading import _local_files
from .exports import remove_stale_exports

logger = logging.getLogger(__name__)

# what a run writes into its folder (the demo adds its summary and Hub cache); `overwrite_output_dir` deletes these
RUN_FILES = ("config.json", "metrics.jsonl", "results.json", "curves.png", "README.md", "demo_summary.json")
RUN_FOLDERS = ("tokenizer", "final", "best", "logs", "hub_cache", "sources")
LOCK_FILE = "run.lock"  # held by the run's main process while it runs: pid, host, start, command
# training settings a resumed run may change: its budget and its bookkeeping
RESUMABLE_SETTINGS = frozenset(
    {"output_dir", "resume", "overwrite_output_dir"}
    | {"max_steps", "num_epochs", "max_minutes"}
    | {"eval_every", "save_every", "keep_checkpoints", "log_every", "average_last"}
)
# settings of the other sections that do not change what is trained or chosen: how fast the data is prepared, and
# how the chosen model is decoded for the test (max_new_tokens is not one: validation BLEU decodes with it too)
NOT_THE_RUN = frozenset({"num_proc", "test_num_beams", "length_penalty", "tune_num_beams", "tune_length_penalty"})
MANIFEST = "manifest.json"
MODEL_WEIGHTS = "model.safetensors"  # the model's weights in a checkpoint (`save_state` of one unsharded model)
DATA_STATE = "data_state_{}.pkl"  # a process's position in a streamed training set, in each checkpoint


class CheckpointError(RuntimeError):
    """A checkpoint could not be written, or no intact one is left to resume from."""


class RunFolderInUseError(RuntimeError):
    """Another run (another process, here or on another host) holds the run folder."""


def describe_holder(text: str) -> str:
    """Who holds a lock, from its file's content (as `FolderLock` writes it)."""
    try:
        holder = json.loads(text)
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder["started"]))
        return f"pid {holder['pid']} on host {holder['host']}, started {started}: {holder['command']}"
    except (json.JSONDecodeError, KeyError, TypeError):
        return "a process that has not written who it is yet"


class FolderLock:
    """This process's hold on a run folder: `run.lock`, opened and locked with an exclusive `flock` (which the
    kernel releases when the process dies, however it dies), holding the holder's pid, host, start and command.
    Released (the file removed) when the run ends (`RunFolder.close`, as each task's `main` does), else when the last
    run of this process that uses it is gone, or at exit, whichever comes first. One process holds a folder once: a
    second run of the same process in the folder (a resume after a run, in a notebook or a test) shares the lock."""

    held: "weakref.WeakValueDictionary[Path, FolderLock]" = weakref.WeakValueDictionary()

    def __init__(self, path: Path, handle: int):
        self.path = path
        self.release_now = weakref.finalize(self, FolderLock.release, path, handle)  # at most once

    @classmethod
    def acquire(cls, folder: Path) -> "FolderLock":
        """Hold `folder` (made if needed): a RunFolderInUseError names the run that holds it; a stale lock (its
        holder is gone) is named and taken over."""
        folder = folder.resolve()
        if (lock := cls.held.get(folder)) is not None:
            return lock
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / LOCK_FILE
        while True:
            handle = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = describe_holder(os.pread(handle, 4096, 0).decode(errors="replace"))
                os.close(handle)
                raise RunFolderInUseError(
                    f"output_dir {folder} is in use by another run ({holder}). Wait for it to end (or stop it), "
                    "or choose another --output_dir."
                ) from None
            except OSError as error:  # a file system without locks (some network file systems)
                logger.warning(
                    "Cannot lock %s (%s): a second run started into %s would not be refused.", path, error, folder
                )
                break
            try:
                if os.stat(path).st_ino == os.fstat(handle).st_ino:
                    break  # else the holder removed the file between our open and our lock: lock the new one
            except FileNotFoundError:
                pass
            os.close(handle)
        if previous := os.pread(handle, 4096, 0).decode(errors="replace").strip():
            logger.warning(
                "%s: taking over the stale lock of a run that is gone (%s)", path, describe_holder(previous)
            )
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        holder["command"] = shlex.join(sys.argv)
        os.ftruncate(handle, 0)
        os.pwrite(handle, (json.dumps(holder) + "\n").encode(), 0)
        lock = cls.held[folder] = cls(path, handle)
        return lock

    @staticmethod
    def release(path: Path, handle: int) -> None:
        """Remove the lock file, then unlock it (a run that opened it meanwhile sees it removed and locks anew)."""
        try:
            if os.stat(path).st_ino == os.fstat(handle).st_ino:
                path.unlink()
        except OSError:
            pass  # the folder is gone (a test's temporary folder), or the file with it
        os.close(handle)


def checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (folders still being written end in .tmp and are not listed)."""
    found = [p for p in Path(output_dir).glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()]
    return sorted(found, key=lambda p: int(p.name.split("-")[-1]))


def run_entries(output_dir: Path) -> list[Path]:
    """The files and folders of a run in `output_dir` (empty when it holds none)."""
    named = [output_dir / name for name in (*RUN_FILES, *RUN_FOLDERS)]
    return (
        [p for p in named if p.exists()]
        + sorted(output_dir.glob("checkpoint-*"))
        + sorted(p for p in output_dir.glob("averaged_*") if p.is_dir())
    )


def average_checkpoints(folders: list[Path]) -> dict[str, torch.Tensor]:
    """The element-wise mean of the model weights in the checkpoints `folders` (accumulated in float64, returned
    in each tensor's own dtype), as fairseq's `average_checkpoints.py` does. Every checkpoint must be intact (its
    manifest) and hold the same tensors; integer buffers must be equal in all of them."""
    if not folders:
        raise CheckpointError("No checkpoints to average.")
    total: dict[str, torch.Tensor] = {}
    for folder in folders:
        if (problem := checkpoint_problem(folder)) is not None:
            raise CheckpointError(f"Cannot average {folder}: {problem}.")
        if not (folder / MODEL_WEIGHTS).is_file():
            raise CheckpointError(
                f"{folder} holds no {MODEL_WEIGHTS} (a sharded FSDP checkpoint?): only whole models are averaged."
            )
        weights = load_file(folder / MODEL_WEIGHTS)
        if total and weights.keys() != total.keys():
            raise CheckpointError(f"{folder} holds other tensors than {folders[0]}: they are not one run's.")
        for name, value in weights.items():
            if not value.is_floating_point():
                if name in total and not torch.equal(total[name], value):
                    raise CheckpointError(f"{name} (not a float) differs between {folders[0]} and {folder}.")
                total[name] = value
            else:
                total[name] = total[name] + value.double() if name in total else value.double()
    dtypes = {name: value.dtype for name, value in weights.items()}
    return {
        name: (value / len(folders)).to(dtypes[name]) if dtypes[name].is_floating_point else value
        for name, value in total.items()
    }


def write_manifest(folder: Path) -> None:
    """Record every file's size and SHA-256; written last, so a checkpoint with a manifest was written whole."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)
    entries = {}
    for path in files:
        with path.open("rb") as handle:
            entries[path.relative_to(folder).as_posix()] = {
                "size": path.stat().st_size,
                "sha256": hashlib.file_digest(handle, "sha256").hexdigest(),
            }
    (folder / MANIFEST).write_text(json.dumps(entries, indent=1) + "\n")


def checkpoint_problem(folder: Path) -> str | None:
    """Why the checkpoint `folder` cannot be trusted, or None when every file matches its manifest."""
    manifest = folder / MANIFEST
    if not manifest.is_file():
        return f"it has no {MANIFEST} (it was not written whole)"
    try:
        entries = json.loads(manifest.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        return f"its {MANIFEST} is unreadable ({error})"
    for name, expected in entries.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if (size := path.stat().st_size) != expected["size"]:
            return f"{name} is {size:,} bytes, the manifest says {expected['size']:,}"
        with path.open("rb") as handle:
            if hashlib.file_digest(handle, "sha256").hexdigest() != expected["sha256"]:
                return f"{name} does not match its SHA-256 in the manifest"
    return None


def write_failure(folder: Path, error: BaseException) -> CheckpointError:
    """A clear error for a checkpoint that could not be written (a full disk names itself)."""
    chain, cause = [], error
    while cause is not None:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    full = any(isinstance(e, OSError) and e.errno == errno.ENOSPC for e in chain)
    free = shutil.disk_usage(folder.parent).free
    if full or free < 64 * 2**20:
        return CheckpointError(
            f"No space left on device while writing the checkpoint {folder} ({free:,} bytes free on that disk). "
            "Free some space (or lower keep_checkpoints) and continue with --resume."
        )
    return CheckpointError(f"Writing the checkpoint {folder} failed: {error}")


class RunFolder:
    """A training run's folder: its settings, tokenizer, checkpoints, exported models and metrics. Open one with
    `start_run`."""

    def __init__(self, config, settings: dict):
        self.config = config
        self.path = Path(config.output_dir)
        self.settings = {name: asdict(value) if is_dataclass(value) else value for name, value in settings.items()}
        # each dataclass section's defaults: a setting added to the package after a run started is absent from its
        # config.json, and the run trained as the setting's default does
        self.defaults = {name: field_defaults(value) for name, value in settings.items() if is_dataclass(value)}
        self.defaults["training"] = field_defaults(config)
        self.resuming = bool(config.resume) and (self.path / "config.json").is_file()
        self.corpora = corpus_paths(settings)
        self.lock: FolderLock | None = None  # the main process's, once `hold` has taken it
        self.precision = resolve_mixed_precision(
            config.mixed_precision, "cuda" if torch.cuda.is_available() else "cpu"
        )

    @property
    def metrics_file(self) -> Path:
        return self.path / "metrics.jsonl"

    def training_settings(self) -> dict:
        """The training config as config.json records it (with the precision the run really trains in)."""
        return {**asdict(self.config), "mixed_precision": self.precision}

    def hold(self) -> None:
        """The main process makes the folder and locks it for this run (`FolderLock`); every process raises if
        another run holds it, or if it cannot be written."""
        state, problem = PartialState(), [None]
        if state.is_main_process:
            try:
                self.lock = FolderLock.acquire(self.path)
            except RunFolderInUseError as error:
                problem = [error]
            except OSError as error:
                reason = error.strerror or str(error)
                problem = [
                    PermissionError(f"Cannot write to output_dir {self.path}: {reason}. Choose another --output_dir.")
                ]
        if state.num_processes > 1:
            broadcast_object_list(problem)
        if problem[0] is not None:
            raise problem[0]

    def close(self) -> None:
        """The run is over: let go of the folder (`run.lock` is removed), so that another process may run in it while
        this one goes on (a notebook, a test, a script that trains twice)."""
        if self.lock is not None:
            FolderLock.held.pop(self.lock.path.parent, None)
            self.lock.release_now()
            self.lock = None

    def check(self) -> None:
        """Refuse a folder that holds another run, or a resume that changes the run's settings or its data."""
        if self.config.resume:
            if self.resuming:
                self.check_resumed_settings()
            return
        if (entries := run_entries(self.path)) and not self.config.overwrite_output_dir:
            names = ", ".join(p.name for p in entries[:6]) + (", ..." if len(entries) > 6 else "")
            raise FileExistsError(
                f"output_dir {self.path} already holds a run ({names}). Continue it with --resume, delete it with "
                "--overwrite_output_dir, or choose another --output_dir."
            )

    def check_resumed_settings(self) -> None:
        saved = json.loads((self.path / "config.json").read_text())
        current = {
            **self.settings,
            "training": self.training_settings(),
            "num_processes": PartialState().num_processes,
        }
        changed = []
        for section, values in current.items():
            before = saved.get(section)
            if isinstance(values, dict) and isinstance(before, dict):
                skip = RESUMABLE_SETTINGS if section == "training" else NOT_THE_RUN
                defaults = self.defaults.get(section, {})
                for key, value in values.items():
                    if key in skip or json_value(value) == before.get(key, defaults.get(key, MISSING)):
                        continue
                    old = repr(before[key]) if key in before else "(not in its config.json: a newer setting)"
                    changed.append(f"{section}.{key}: {old} -> {value!r}")
            elif json_value(values) != before:
                changed.append(f"{section}: {before!r} -> {values!r}")
        if changed:
            raise ValueError(
                f"--resume continues the run in {self.path} with its own settings, but these differ from its "
                f"config.json: {'; '.join(changed)}. Drop them, or start a new run in another --output_dir."
            )
        self.check_resumed_data(saved.get("data_sources", {}))

    def check_resumed_data(self, saved: dict) -> None:
        """Refuse a resume whose local data is not what the run started on (files of another size, new or gone, or
        the data elsewhere); warn about files modified since, at the same size."""
        changed, touched = [], []
        for spec, now in self.data_sources().items():
            if (before := saved.get(spec)) is None:
                continue  # a run from before data sources were recorded
            if before["path"] != now["path"]:
                changed.append(f"{spec} is {now['path']} from here, the run read {before['path']}")
                continue
            for name in sorted(before["files"].keys() | now["files"].keys()):
                old, new = before["files"].get(name), now["files"].get(name)
                if old is None or new is None:
                    changed.append(f"{name} {'appeared' if old is None else 'is gone'}")
                elif old["size"] != new["size"]:
                    changed.append(f"{name} is {new['size']:,} bytes, it was {old['size']:,}")
                elif old["mtime_ns"] != new["mtime_ns"]:
                    touched.append(name)
        if changed:
            raise ValueError(
                f"--resume continues the run in {self.path} on the data it started with, but the data changed: "
                f"{'; '.join(changed)}. Restore it (or resume from the folder the run was started in), or start a "
                "new run in another --output_dir."
            )
        if touched:
            logger.warning(
                "resume: %s modified since the run started (same size): if the content changed, the resumed run "
                "trains on other data than the checkpoints did.",
                ", ".join(touched),
            )

    def data_sources(self) -> dict:
        """What config.json records of the run's local data (`corpus_paths`): its absolute path, each file's size
        and modification time, and where the copy of its SOURCE.md is (`sources/<folder name>.md`)."""
        sources = {}
        for spec, path in self.corpora.items():
            files = {}
            for file in _local_files(path):
                stat = file.stat()
                files[str(file.resolve())] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
            sources[spec] = {"path": str(path), "files": files}
            if (path / "SOURCE.md").is_file():
                taken = {source.get("source_file") for source in sources.values()}
                name = f"sources/{path.name}.md"
                sources[spec]["source_file"] = name if name not in taken else f"sources/{path.name}-{len(taken)}.md"
        return sources

    def copy_data_descriptions(self) -> None:
        """The SOURCE.md of each local data folder, copied into `sources/` when the run starts (a resume keeps the
        copies the run started with)."""
        for source in self.data_sources().values():
            if "source_file" in source and not (copy := self.path / source["source_file"]).is_file():
                copy.parent.mkdir(exist_ok=True)
                shutil.copyfile(Path(source["path"]) / "SOURCE.md", copy)

    def prepare(self) -> None:
        """The main process deletes the old run with overwrite_output_dir, and copies the data's descriptions."""
        if self.config.overwrite_output_dir and not self.config.resume and (entries := run_entries(self.path)):
            for entry in entries:
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
            logger.warning("overwrite_output_dir: deleted the run that was in %s", self.path)
            if others := sorted(p.name for p in self.path.iterdir() if p.name != LOCK_FILE):
                logger.warning("%s also holds files that are not a run's, left alone: %s", self.path, others)
        self.copy_data_descriptions()

    def tokenizer(self, source: str | None, train: Callable[[], PreTrainedTokenizerBase]) -> PreTrainedTokenizerBase:
        """The run's tokenizer: on resume (and in every process but the main one) the one saved in the run's
        `tokenizer/`; else loaded from `source`, or trained by `train()`, and saved there once."""
        saved = self.path / "tokenizer"
        state = PartialState()
        with state.main_process_first():
            if (self.resuming or not state.is_main_process) and saved.is_dir():
                logger.info("tokenizer: the run's own, %s", saved)
                return AutoTokenizer.from_pretrained(saved)
            if self.resuming:
                logger.warning("%s has no tokenizer/ (a run of an older hf_encoders?): making it again", self.path)
            tokenizer = AutoTokenizer.from_pretrained(source) if source else train()
            tokenizer.save_pretrained(saved)
            origin = f"from {source}" if source else "trained"
            logger.info("tokenizer: %s, %d tokens; saved to %s", origin, len(tokenizer), saved)
            return tokenizer

    def write_settings(self, settings: dict) -> None:
        """config.json: `settings`, where the run was started and its local data (`data_sources`)."""
        record = {**settings, "working_directory": str(Path.cwd()), "data_sources": self.data_sources()}
        (self.path / "config.json").write_text(json.dumps(record, indent=2, default=str) + "\n")

    def newest_intact_checkpoint(self) -> Path | None:
        """The newest checkpoint whose files match its manifest; the newer ones that do not are named and
        skipped. An error if there are checkpoints but none is intact."""
        found = checkpoints(self.path)
        for folder in reversed(found):
            if (problem := checkpoint_problem(folder)) is None:
                return folder
            logger.warning("resume: skipping %s: %s", folder, problem)
        if found:
            raise CheckpointError(f"No intact checkpoint to resume from in {self.path}: all {len(found)} are damaged.")
        return None

    def resume_from(self) -> Path | None:
        """The checkpoint to resume from (checked by the main process, the same for all), or None to start."""
        if not self.config.resume:
            return None
        state = PartialState()
        chosen = [self.newest_intact_checkpoint() if state.is_main_process else None]
        if state.num_processes > 1:
            broadcast_object_list(chosen)
        if chosen[0] is None:
            logger.warning("resume was asked for, but %s holds no checkpoint: starting afresh", self.path)
        return chosen[0]

    def write_checkpoint(self, accelerator: Accelerator, step: int, progress: dict, data: dict | None = None) -> None:
        """`save_state` into checkpoint-STEP.tmp, progress and manifest, then the rename that makes it complete
        (a crash mid-save leaves the previous checkpoints); the `keep_checkpoints` newest are kept. `data`: this
        process's position in a streamed training set (`StreamedExamples.state_dict()`)."""
        final, temporary = self.path / f"checkpoint-{step}", self.path / f"checkpoint-{step}.tmp"
        accelerator.wait_for_everyone()
        try:
            accelerator.save_state(str(temporary))
            if data is not None:
                with (temporary / DATA_STATE.format(accelerator.process_index)).open("wb") as handle:
                    pickle.dump(data, handle)
            accelerator.wait_for_everyone()  # every process's files are there before the manifest lists them
            if accelerator.is_main_process:
                (temporary / "progress.json").write_text(json.dumps({"step": step, **progress}))
                write_manifest(temporary)
        except (OSError, RuntimeError) as error:
            shutil.rmtree(temporary, ignore_errors=True)
            raise write_failure(temporary, error) from error
        if accelerator.is_main_process:
            shutil.rmtree(final, ignore_errors=True)
            temporary.rename(final)  # complete, or absent: resume never sees half a checkpoint
            for old in checkpoints(self.path)[: -self.config.keep_checkpoints]:
                shutil.rmtree(old)
        accelerator.wait_for_everyone()

    def update_best(self, best: float) -> None:
        """Record `best` (an average's validation score, found after the last checkpoint was written) in the newest
        checkpoint's progress, so that a resumed run measures its new evaluations against it."""
        if PartialState().is_main_process and (found := checkpoints(self.path)):
            progress_file = found[-1] / "progress.json"
            progress_file.write_text(json.dumps({**json.loads(progress_file.read_text()), "best": best}))
            write_manifest(found[-1])
        PartialState().wait_for_everyone()

    def load_checkpoint(self, accelerator: Accelerator, checkpoint: Path) -> dict:
        """Load the state saved in `checkpoint` into the prepared objects; its progress.json (step, best, ...)."""
        accelerator.load_state(str(checkpoint))
        return json.loads((checkpoint / "progress.json").read_text())

    def load_data_state(self, checkpoint: Path, process_index: int) -> dict:
        """This process's position in the streamed training set, saved with `checkpoint`."""
        path = checkpoint / DATA_STATE.format(process_index)
        if not path.is_file():
            raise CheckpointError(
                f"{checkpoint} holds no position of a streamed training set ({path.name}): it was written by a run "
                "that did not stream its data. Resume it without --streaming."
            )
        with path.open("rb") as handle:  # written by this run's own processes (the manifest checked it)
            return pickle.load(handle)

    def export(
        self, accelerator: Accelerator, model: torch.nn.Module, name: str, tokenizer: PreTrainedTokenizerBase | None
    ) -> None:
        """`save_pretrained` of the model (unwrapped) and of the tokenizer into the run's `name/` (final, best); the
        serving exports there that these weights make stale are removed (`hf_encoders.exports`)."""
        accelerator.wait_for_everyone()
        folder = self.path / name
        unwrapped = accelerator.unwrap_model(model)
        unwrapped.save_pretrained(folder, is_main_process=accelerator.is_main_process, save_function=accelerator.save)
        if tokenizer is not None and accelerator.is_main_process:
            tokenizer.save_pretrained(folder)
        if accelerator.is_main_process:
            remove_stale_exports(folder)

    def last_logged(self, key: str) -> float:
        """The last value of `key` in metrics.jsonl (NaN when it was never logged)."""
        values = [row[key] for row in map(json.loads, self.metrics_file.read_text().splitlines()) if key in row]
        return values[-1] if values else float("nan")

    def record(self, step: int, values: dict) -> None:
        with self.metrics_file.open("a") as handle:
            handle.write(json.dumps({"step": step, **values}) + "\n")

    def truncate_metrics(self, step: int, keep_last_evaluations: bool = True) -> None:
        """Drop the rows logged after `step` (by a run killed before its next checkpoint): resumed, they come again.
        Without `keep_last_evaluations`, the evaluations of `step` itself go too (a finished run's end, done again).
        """
        if not self.metrics_file.is_file():
            return
        lines = self.metrics_file.read_text().splitlines()
        rows = [(line, json.loads(line)) for line in lines if line.strip()]
        kept = [
            line
            for line, row in rows
            if row["step"] < step or (row["step"] == step and (keep_last_evaluations or "train/loss" in row))
        ]
        if len(kept) < len(lines):
            logger.info(
                "resume: dropped %d rows after step %d from %s", len(lines) - len(kept), step, self.metrics_file
            )
        self.metrics_file.write_text("".join(line + "\n" for line in kept))


def corpus_paths(settings: dict) -> dict[str, Path]:
    """The local data a run's settings name: of every section, the settings its class lists in `corpus_settings`,
    each a `path`, `name=path` or `name=path:split` entry or a list of them. The path as given -> its absolute path;
    Hub ids are left out."""
    found = {}
    for section in settings.values():
        named = [getattr(section, name) for name in getattr(section, "corpus_settings", ())]
        for entry in (entry for value in named for entry in ([value] if isinstance(value, str) else value or [])):
            after = entry.partition("=")[2]
            for spec in (entry, after, after.rpartition(":")[0]):
                if spec and (Path(spec).expanduser().exists() or (glob.has_magic(spec) and glob.glob(spec))):
                    found[spec] = Path(spec).expanduser().resolve()
                    break
    return found


def field_defaults(instance) -> dict:
    """The defaults of a dataclass instance's fields, as config.json stores them (fields without one left out)."""
    defaults = {}
    for item in fields(instance):
        if item.default is not MISSING:
            defaults[item.name] = json_value(item.default)
        elif item.default_factory is not MISSING:
            defaults[item.name] = json_value(item.default_factory())
    return defaults


def json_value(value):
    """`value` as config.json stores it (tuples as lists, paths as strings)."""
    return json.loads(json.dumps(value, default=str))


def resolve_mixed_precision(requested: str, device_type: str) -> str:
    """fp16 autocast does not exist on CPUs (Accelerate ignores it there): run bf16 instead, and say so."""
    if requested == "fp16" and device_type == "cpu":
        logger.warning("fp16 mixed precision was asked for on a CPU, which cannot run it: training in bf16 instead.")
        return "bf16"
    return requested


def start_run(config, settings: dict | None = None, metric_names: Collection[str] | None = None) -> RunFolder:
    """Open the run in `config.output_dir`, before anything expensive or random happens: seed every generator,
    refuse a folder that holds another run (or delete it, with overwrite_output_dir), check a resume's settings
    against the run's config.json, check that the best metric is one the evaluation reports, and check that the
    folder is writable. `settings` describe the run (script, and model, data, ... as the dataclasses parsed from the
    command line, whose defaults let a resume accept a setting added since the run started); `metric_names` are the
    names the evaluation returns."""
    if config.best_metric and metric_names is not None and config.best_metric not in metric_names:
        raise ValueError(
            f"best_metric={config.best_metric!r} is not among the evaluation's metrics {sorted(metric_names)}."
        )
    # the first state of the process: on CPUs `accelerate launch` asks for it in ACCELERATE_USE_CPU, which a plain
    # PartialState() ignores (every process would then train alone, as if it were the only one)
    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))
    run = RunFolder(config, dict(settings or {}))
    run.hold()
    run.check()
    state.wait_for_everyone()  # every process checked the folder before the main one writes into it (`sources/`)
    if state.is_main_process:
        run.prepare()
    state.wait_for_everyone()
    set_seed(config.seed)
    return run


__all__ = [
    "RunFolder",
    "start_run",
    "checkpoints",
    "average_checkpoints",
    "CheckpointError",
    "RunFolderInUseError",
    "resolve_mixed_precision",
]
