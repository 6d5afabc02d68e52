"""The shared training loop: distribution, accumulation, resume, crash safety, precision, the non-finite guard."""

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
import tiny_training_job
import torch
from conftest import ScriptRun, run_main
from safetensors.torch import load_file, save_file
from transformers import AutoModelForMaskedLM

from hf_encoders.run_folder import (
    CheckpointError,
    average_checkpoints,
    checkpoint_problem,
    checkpoints,
    resolve_mixed_precision,
    write_manifest,
)
from hf_encoders.training import (
    NonFiniteLossError,
    StopConditions,
    TrainingConfig,
    build_optimizer,
    parameter_groups,
    parse_config,
    smoothed_cross_entropy,
)

ROOT = Path(__file__).resolve().parents[1]
JOB = ROOT / "tests" / "tiny_training_job.py"
ACCELERATE = Path(sys.executable).with_name("accelerate")


def run_job(output_dir: Path, *flags: str, env: dict | None = None) -> ScriptRun:
    """tests/tiny_training_job.py with these flags and environment switches, in this process."""
    with mock.patch.dict(os.environ, env or {}):
        return run_main(tiny_training_job.main, "--output_dir", str(output_dir), "--log_every", "1", *flags)


def launch_job(output_dir: Path, *flags: str, launcher: list[str], env: dict) -> subprocess.CompletedProcess:
    """tests/tiny_training_job.py under a launcher, in processes of its own."""
    command = [*launcher, str(JOB), "--output_dir", str(output_dir), "--log_every", "1", *flags]
    done = subprocess.run(command, capture_output=True, text=True, timeout=180, cwd=ROOT, env={**os.environ, **env})
    assert done.returncode == 0, done.stderr[-4000:]
    return done


def losses(output_dir: Path) -> dict[int, float]:
    """The train loss of every logged step; a step logged twice (a resumed run repeating itself) is an error."""
    rows = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [row["step"] for row in rows if "train/loss" in row]
    assert len(steps) == len(set(steps)), f"steps logged twice in {output_dir}: {steps}"
    return {row["step"]: row["train/loss"] for row in rows if "train/loss" in row}


def test_two_processes_follow_one_process_with_the_same_global_batch(tmp_path):
    run_job(tmp_path / "one", "--per_device_batch_size", "8", "--max_steps", "6")
    # two CPU processes over gloo: this accelerate's `--cpu` flag starts a single process, so the multi-process
    # launcher (torchrun) is used with ACCELERATE_USE_CPU
    launcher = [
        str(ACCELERATE),
        *"launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no --dynamo_backend no".split(),
        *("--main_process_port", "29517"),
    ]
    flags = ["--per_device_batch_size", "4", "--max_steps", "6"]
    launch_job(tmp_path / "two", *flags, launcher=launcher, env={"ACCELERATE_USE_CPU": "1"})
    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert len(one) == 6 and one.keys() == two.keys()
    for step in one:
        assert two[step] == pytest.approx(one[step], rel=1e-4), (step, one, two)
    assert one[6] < one[1]
    config = json.loads((tmp_path / "two" / "config.json").read_text())
    assert config["num_processes"] == 2


@pytest.mark.skipif(sys.platform != "linux", reason="starves gloo's threads with Linux's idle scheduling class")
def test_two_processes_exit_cleanly_when_gloo_is_late_to_drop_their_last_collective(tmp_path):
    """A run that succeeded used to abort at exit under load: a rank's interpreter was already finalizing when
    gloo's worker thread dropped the last collective's tensors, which needs the GIL, and the process died with
    "terminate called without an active exception" (SIGABRT). The job starves gloo's threads to make that certain,
    after collectives of its own that follow `train()` (as the scripts' test evaluations do)."""
    launcher = [
        str(ACCELERATE),
        *"launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no --dynamo_backend no".split(),
        *("--main_process_port", "29547"),
    ]
    env = {"ACCELERATE_USE_CPU": "1", "HF_ENCODERS_TEST_REDUCES_AFTER": "8"}
    done = launch_job(tmp_path, "--per_device_batch_size", "4", "--max_steps", "2", launcher=launcher, env=env)
    assert "terminate called" not in done.stderr


def launch_machines(output_dir: Path, flags: list[str], port: int, extra: tuple[str, ...] = ()) -> str:
    """tests/tiny_training_job.py as two "machines" on this host (`accelerate launch --num_machines 2 --machine_rank
    0/1`, one CPU process each, gloo), as on a cluster where each node runs the same command with its own rank."""
    machines, logs = [], []
    for rank in (0, 1):
        command = [
            str(ACCELERATE),
            *"launch --num_machines 2 --num_processes 2 --mixed_precision no --dynamo_backend no".split(),
            *("--machine_rank", str(rank), "--main_process_ip", "127.0.0.1", "--main_process_port", str(port)),
            *extra,
            str(JOB),
            *("--output_dir", str(output_dir), "--log_every", "1", *flags),
        ]
        env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
        machines.append(subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    for machine in machines:
        _, stderr = machine.communicate(timeout=240)
        assert machine.returncode == 0, stderr.decode()[-4000:]
        logs.append(stderr.decode())
    return "".join(logs)


@pytest.mark.parametrize("fsdp", [False, True], ids=["ddp", "fsdp2"])
def test_two_machines_on_one_host_follow_one_process(fsdp, tmp_path):
    """DDP across two machines equals one process. FSDP2: accelerate shards on accelerators only, so on CPU
    processes `--use_fsdp` runs as DDP (MULTI_CPU), and the loop says so: sharded training needs GPUs to test."""
    run_job(tmp_path / "one", "--per_device_batch_size", "8", "--max_steps", "4")
    extra = ("--use_fsdp", "--fsdp_version", "2") if fsdp else ("--multi_gpu",)  # the multi-process launcher
    flags = ["--per_device_batch_size", "4", "--max_steps", "4"]
    logs = launch_machines(tmp_path / "two", flags, port=29527 + fsdp, extra=extra)
    assert ("FSDP was asked for (--use_fsdp), but accelerate runs these processes as MULTI_CPU" in logs) == fsdp
    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert len(one) == 4 and one.keys() == two.keys()
    for step in one:
        assert two[step] == pytest.approx(one[step], rel=1e-4), (step, one, two)
    config = json.loads((tmp_path / "two" / "config.json").read_text())
    assert config["num_processes"] == 2 and config["distributed_type"] == "MULTI_CPU"
    reloaded = AutoModelForMaskedLM.from_pretrained(tmp_path / "two" / "final")
    assert sum(p.numel() for p in reloaded.parameters()) == config["parameters"]


@pytest.mark.parametrize("label_smoothing", ["0", "0.1"])
def test_gradient_accumulation_4x2_equals_a_batch_of_8(label_smoothing, tmp_path):
    smoothing = ["--label_smoothing", label_smoothing]
    run_job(tmp_path / "big", "--per_device_batch_size", "8", "--max_steps", "5", *smoothing)
    four_by_two = ["--per_device_batch_size", "2", "--gradient_accumulation_steps", "4", "--max_steps", "5"]
    run_job(tmp_path / "accumulated", *four_by_two, *smoothing)
    big, accumulated = losses(tmp_path / "big"), losses(tmp_path / "accumulated")
    for step in big:
        assert accumulated[step] == pytest.approx(big[step], rel=1e-4), (step, big, accumulated)
    a = AutoModelForMaskedLM.from_pretrained(tmp_path / "big" / "final")
    b = AutoModelForMaskedLM.from_pretrained(tmp_path / "accumulated" / "final")
    for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q, atol=1e-5, rtol=1e-4, msg=name)


def test_resume_after_a_kill_and_after_a_crash_mid_checkpoint(tmp_path):
    flags = "--per_device_batch_size 4 --max_steps 8 --save_every 3 --lr_schedule cosine --warmup_steps 2".split()
    dynamic = {"HF_ENCODERS_TEST_MASKING": "dynamic"}
    uninterrupted = run_job(tmp_path / "straight", *flags, env=dynamic).result
    straight = losses(tmp_path / "straight")
    assert len(straight) == 8

    # killed while fetching the 5th batch: checkpoint-3 is the last one
    with pytest.raises(SystemExit, match="killed"):
        run_job(tmp_path / "killed", *flags, env={**dynamic, "HF_ENCODERS_TEST_CRASH_AT_BATCH": "5"})
    assert [p.name for p in checkpoints(tmp_path / "killed")] == ["checkpoint-3"]
    result = run_job(tmp_path / "killed", *flags, "--resume", env=dynamic).result
    resumed = losses(tmp_path / "killed")  # steps 4 (logged before the kill) and 5-8 once each
    for step in range(4, 9):
        assert resumed[step] == pytest.approx(straight[step], rel=1e-5), (step, straight, resumed)
    # the whole run is counted, not only its last segment
    assert (result.steps, result.tokens_seen) == (uninterrupted.steps, uninterrupted.tokens_seen)
    progress = json.loads((tmp_path / "killed" / "checkpoint-6" / "progress.json").read_text())
    assert 0 < progress["seconds"] < result.seconds

    # crashed while writing checkpoint-6: its folder stays .tmp and resume starts from checkpoint-3
    with pytest.raises(SystemExit, match="crashed while writing a checkpoint"):
        run_job(tmp_path / "crashed", *flags, env={**dynamic, "HF_ENCODERS_TEST_FAIL_SAVE_AT_STEP": "6"})
    assert (tmp_path / "crashed" / "checkpoint-6.tmp").is_dir()
    assert [p.name for p in checkpoints(tmp_path / "crashed")] == ["checkpoint-3"]
    run_job(tmp_path / "crashed", *flags, "--resume", env=dynamic)
    resumed = losses(tmp_path / "crashed")
    for step in range(4, 9):
        assert resumed[step] == pytest.approx(straight[step], rel=1e-5), (step, straight, resumed)
    assert [p.name for p in checkpoints(tmp_path / "crashed")] == ["checkpoint-6", "checkpoint-8"]  # keeps 2


def test_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
    flags = ["--per_device_batch_size", "4", "--max_steps", "8", "--save_every", "2"]
    with pytest.raises(NonFiniteLossError) as error:
        run_job(tmp_path, *flags, env={"HF_ENCODERS_TEST_NAN_AT_STEP": "5"})
    assert "The training loss became nan by step 5" in str(error.value)
    assert f"The last good checkpoint is {tmp_path / 'checkpoint-4'}" in str(error.value)
    assert [p.name for p in checkpoints(tmp_path)] == ["checkpoint-2", "checkpoint-4"]
    assert not (tmp_path / "final").exists()  # nothing exported from the broken weights


def test_the_newest_checkpoints_are_averaged_evaluated_and_chosen_on_validation(tmp_path):
    flags = "--per_device_batch_size 4 --max_steps 8 --save_every 2 --keep_checkpoints 3 --eval_every 2".split()
    job = run_job(
        tmp_path,
        *flags,
        *("--average_last", "2", "3", "--best_metric", "held_out/loss"),
        env={"HF_ENCODERS_TEST_EVALUATE": "1"},
    )
    kept = checkpoints(tmp_path)
    assert [p.name for p in kept] == ["checkpoint-4", "checkpoint-6", "checkpoint-8"]
    saved = [load_file(folder / "model.safetensors") for folder in kept]
    for n in (2, 3):
        averaged = load_file(tmp_path / f"averaged_{n}" / "model.safetensors")
        for name in saved[0]:
            expected = torch.stack([weights[name] for weights in saved[-n:]]).mean(0)
            assert torch.allclose(averaged[name], expected, atol=1e-6), name
        assert (tmp_path / f"averaged_{n}" / "tokenizer.json").is_file()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    candidates = {
        f"checkpoint-{row['step']}" if key == "held_out/loss" else key.split("/")[0]: row[key]
        for row in rows
        for key in row
        if key.endswith("held_out/loss")
    }
    assert len(candidates) == 6  # steps 2, 4, 6, 8 and the two averages
    for name, evaluation in job.result.averaged.items():
        assert candidates[name] == evaluation["held_out/loss"]
    chosen = min(candidates, key=candidates.get)  # the lowest validation loss is the best model
    expected = load_file(tmp_path / chosen / "model.safetensors")
    best = AutoModelForMaskedLM.from_pretrained(tmp_path / "best").state_dict()
    assert all(torch.equal(best[name], value) for name, value in expected.items()), (chosen, candidates)
    progress = json.loads((kept[-1] / "progress.json").read_text())  # what a resumed run measures itself against
    assert progress["best"] == candidates[chosen] and checkpoint_problem(kept[-1]) is None

    run_job(tmp_path, "--max_steps", "2", "--overwrite_output_dir")  # a new run there: the averages were the old one's
    assert not list(tmp_path.glob("averaged_*"))


def test_averaging_refuses_what_cannot_be_averaged(tmp_path):
    with pytest.raises(ValueError, match=r"average_last=\[2, 5\]: each N must lie in \[2, keep_checkpoints=3\]"):
        TrainingConfig(average_last=[2, 5], keep_checkpoints=3, save_every=2)
    with pytest.raises(ValueError, match="average_last averages the run's checkpoints: give save_every"):
        TrainingConfig(average_last=[2])
    with pytest.raises(ValueError, match=r"but 4 steps with save_every=4 leave 1 checkpoints: save more often"):
        run_job(tmp_path / "few", "--max_steps", "4", "--save_every", "4", "--average_last", "2")
    assert not (tmp_path / "few" / "checkpoint-4").exists()  # refused before the first step

    run_job(tmp_path / "run", "--per_device_batch_size", "4", "--max_steps", "4", "--save_every", "2")
    first, second = checkpoints(tmp_path / "run")
    alone, saved = average_checkpoints([first]), load_file(first / "model.safetensors")
    assert alone.keys() == saved.keys() and all(alone[name].equal(saved[name]) for name in saved)
    save_file({**load_file(second / "model.safetensors"), "extra": torch.zeros(2)}, second / "model.safetensors")
    with pytest.raises(CheckpointError, match=f"Cannot average {second}: model.safetensors is .* the manifest says"):
        average_checkpoints([first, second])
    write_manifest(second)
    with pytest.raises(CheckpointError, match=f"{second} holds other tensors than {first}: they are not one run's"):
        average_checkpoints([first, second])
    with pytest.raises(CheckpointError, match="No checkpoints to average"):
        average_checkpoints([])

    by_epochs = StopConditions.from_config(TrainingConfig(num_epochs=2.5), steps_per_epoch=4)
    assert by_epochs.total_steps == 10 and by_epochs.reached(9, 1e9) is None
    assert by_epochs.reached(10, 0.0) == "max_steps"
    timed = StopConditions.from_config(TrainingConfig(max_steps=5, max_minutes=0.5), steps_per_epoch=4)
    assert timed.total_steps == 5 and timed.reached(1, 29.0) is None and timed.reached(1, 31.0) == "max_minutes"
    assert timed.reached(5, 31.0) == "max_minutes"  # both reached: the time budget is named


def test_the_time_budget_stops_the_run_with_a_checkpoint_and_an_export(tmp_path):
    result = run_job(tmp_path, "--per_device_batch_size", "4", "--max_steps", "50", "--max_minutes", "0.00001").result
    assert (result.steps, result.stopped_by) == (1, "max_minutes")
    assert [p.name for p in checkpoints(tmp_path)] == ["checkpoint-1"] and (tmp_path / "final").is_dir()


def test_bf16_on_cpu_trains_and_the_export_loads(tmp_path):
    run_job(tmp_path, "--per_device_batch_size", "8", "--max_steps", "4", "--mixed_precision", "bf16")
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["training"]["mixed_precision"] == "bf16"
    assert all(torch.isfinite(torch.tensor(v)) for v in losses(tmp_path).values())
    model = AutoModelForMaskedLM.from_pretrained(tmp_path / "final")
    assert type(model).__name__ == "EncoderForMaskedLM"
    tokenizer_files = {p.name for p in (tmp_path / "final").iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "modeling_encoder.py"} <= tokenizer_files
    assert (tmp_path / "logs").is_dir() and any((tmp_path / "logs").rglob("events.out.tfevents.*"))
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("label_smoothing", ["0", "0.1"])
def test_a_compiled_run_trains_as_the_eager_one(label_smoothing, tmp_path):
    """`--torch_compile` (dynamo's aot_eager backend here: inductor's code generation is the benchmarks' business)
    gives the eager run's losses, and its export loads without the compiled wrapper's `_orig_mod.` prefixes. With
    label smoothing the loop asks the compiled model for its logits (`skip_logits=False` through the wrapper)."""
    flags = ["--per_device_batch_size", "8", "--max_steps", "3", "--label_smoothing", label_smoothing]
    run_job(tmp_path / "eager", *flags)
    run_job(tmp_path / "compiled", *flags, "--torch_compile", "--torch_compile_backend", "aot_eager")
    eager, compiled = losses(tmp_path / "eager"), losses(tmp_path / "compiled")
    assert compiled == pytest.approx(eager, rel=1e-5)
    config = json.loads((tmp_path / "compiled" / "config.json").read_text())
    assert config["training"]["torch_compile"] is True
    loaded = AutoModelForMaskedLM.from_pretrained(tmp_path / "compiled" / "final")
    reference = AutoModelForMaskedLM.from_pretrained(tmp_path / "eager" / "final")
    for (name, p), q in zip(loaded.named_parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q, atol=1e-5, rtol=1e-4, msg=name)


def test_a_best_metric_without_an_evaluation_is_refused_before_the_first_step(tmp_path):
    with pytest.raises(ValueError, match=r"best_metric='imdb/loss' needs an evaluation, and this run has none"):
        run_job(tmp_path, "--max_steps", "2", "--best_metric", "imdb/loss")
    assert not (tmp_path / "metrics.jsonl").exists()


def test_training_curves_plot(tmp_path):
    from hf_encoders.plots import plot_training_curves

    metrics = tmp_path / "metrics.jsonl"
    rows = [{"step": s, "train/loss": 5 - s / 10, "train/lr": 1e-3} for s in range(1, 11)]
    rows += [
        {"step": 5, "imdb/loss": 4.5, "imdb/accuracy": 0.2, "wiki/loss": 5.5, "wiki/accuracy": 0.1},
        {"step": 10, "imdb/loss": 4.1, "imdb/accuracy": 0.3, "wiki/loss": 5.2, "wiki/accuracy": 0.15},
    ]
    metrics.write_text("".join(json.dumps(row) + "\n" for row in rows))
    png = plot_training_curves(metrics, tmp_path / "curves.png", title="run")
    assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"
    empty = tmp_path / "empty.jsonl"
    empty.write_text(json.dumps({"step": 1}) + "\n")
    with pytest.raises(ValueError, match="holds no metrics to plot"):
        plot_training_curves(empty, tmp_path / "none.png")


def test_fp16_on_cpu_is_switched_to_bf16_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="hf_encoders.training"):
        assert resolve_mixed_precision("fp16", "cpu") == "bf16"
    assert "fp16 mixed precision was asked for on a CPU" in caplog.text
    assert resolve_mixed_precision("fp16", "cuda") == "fp16"


def test_weight_decay_spares_norms_and_biases():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    decay, no_decay = parameter_groups(model, 0.1)
    assert [p.shape for p in decay["params"]] == [(4, 4)] and decay["weight_decay"] == 0.1
    assert len(no_decay["params"]) == 3 and no_decay["weight_decay"] == 0.0


def test_inverse_sqrt_schedule_warms_up_then_decays_as_one_over_the_root_of_the_step():
    config = TrainingConfig(lr_schedule="inverse_sqrt", learning_rate=1e-3, warmup_steps=4, max_steps=100)
    optimizer, scheduler = build_optimizer(torch.nn.Linear(2, 2), config, total_steps=100, num_processes=1)
    rates = []
    for _ in range(100):
        rates.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    assert rates[:5] == pytest.approx([0.0, 2.5e-4, 5e-4, 7.5e-4, 1e-3])
    assert rates[16] == pytest.approx(5e-4) and rates[64] == pytest.approx(2.5e-4)  # 1e-3 * sqrt(4 / step)
    assert rates[99] > 0  # it never anneals to 0: the last checkpoints differ, averaging has something to average


def test_non_finite_settings_are_refused_by_name():
    for setting, value in [("learning_rate", "inf"), ("learning_rate", "nan"), ("max_grad_norm", "inf")]:
        with pytest.raises(ValueError, match=f"^{setting}={value}: it must be a finite number"):
            parse_config((TrainingConfig,), [f"--{setting}", value])
    for setting in ("weight_decay", "num_epochs", "max_minutes", "adam_beta2", "label_smoothing", "decay_fraction"):
        with pytest.raises(ValueError, match=f"^{setting}=inf: it must be a finite number"):
            TrainingConfig(**{setting: float("inf")})
    with pytest.raises(ValueError, match="torch_compile_backend='inductr': choose one of eager, aot_eager, inductor"):
        TrainingConfig(torch_compile=True, torch_compile_backend="inductr")


def test_config_file_and_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("learning_rate: 0.01\nmax_steps: 7\nlr_schedule: wsd\n")
    (config,) = parse_config((TrainingConfig,), ["--config", str(path), "--max_steps", "9"])
    assert config.learning_rate == 0.01 and config.max_steps == 9 and config.lr_schedule == "wsd"
    path.write_text("learning_rat: 0.01\n")
    with pytest.raises(ValueError, match=r"unknown settings \['learning_rat'\]"):
        parse_config((TrainingConfig,), ["--config", str(path)])
    with pytest.raises(ValueError, match="mixed_precision='fp8'"):
        TrainingConfig(mixed_precision="fp8")
    with pytest.raises(
        ValueError, match=r"argument --max_steps/--max-steps: invalid int value: 'many' \(--help lists"
    ):
        parse_config((TrainingConfig,), ["--max_steps", "many"])
    with pytest.raises(ValueError, match=r"unknown arguments \['--max_step', '9'\]"):
        parse_config((TrainingConfig,), ["--max_step", "9"])


def test_label_smoothed_loss_on_dense_and_sparse_logits():
    torch.manual_seed(0)
    logits, labels = torch.randn(2, 5, 11), torch.randint(0, 11, (2, 5))
    labels[0, 3:] = -100
    labelled = labels != -100
    expected = torch.nn.functional.cross_entropy(logits[labelled], labels[labelled], label_smoothing=0.1)
    log_probs = logits[labelled].log_softmax(-1)  # (1 - eps) * NLL + eps * the mean over the vocabulary
    by_hand = -(0.9 * log_probs.gather(1, labels[labelled][:, None]).mean() + 0.1 * log_probs.mean())
    torch.testing.assert_close(expected, by_hand)
    torch.testing.assert_close(smoothed_cross_entropy(logits, labels, 0.1), expected)  # logits at every position
    torch.testing.assert_close(smoothed_cross_entropy(logits[labelled], labels, 0.1), expected)  # sparse prediction
    global_tokens = torch.tensor(4 * int(labelled.sum()))  # the batch is a quarter of the global batch
    torch.testing.assert_close(smoothed_cross_entropy(logits, labels, 0.1, global_tokens), expected / 4)
    with pytest.raises(ValueError, match="label_smoothing must lie in"):
        TrainingConfig(label_smoothing=1.0)
