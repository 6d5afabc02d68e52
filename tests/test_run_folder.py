"""One run per folder: refused reuse, overwrite, resume with the run's own settings and tokenizer, seeds, verified
checkpoints, and bad settings refused before the first step."""

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import pytest
from accelerate import Accelerator
from conftest import CONFIGS, ROOT, run_script
from safetensors.torch import load_file
from test_training import ACCELERATE, losses, run_job

from hf_encoders import run_folder, tokenization
from hf_encoders.cards import hardware
from hf_encoders.run_folder import CheckpointError, checkpoints, start_run
from hf_encoders.training import TrainingConfig, device_description, parse_config

CONSTANT = ["--per_device_batch_size", "4", "--lr_schedule", "constant", "--save_every", "2"]


def test_a_folder_that_holds_a_run_is_refused_and_overwrite_deletes_only_that_run(tmp_path):
    run_job(tmp_path, *CONSTANT, "--max_steps", "4")
    with pytest.raises(FileExistsError, match=f"output_dir {tmp_path} already holds a run .*--resume.*--overwrite"):
        run_job(tmp_path, *CONSTANT, "--max_steps", "2")
    (tmp_path / "notes.txt").write_text("mine")
    run_job(tmp_path, *CONSTANT, "--max_steps", "2", "--overwrite_output_dir")
    assert sorted(losses(tmp_path)) == [1, 2]  # only the new run's rows
    assert [p.name for p in checkpoints(tmp_path)] == ["checkpoint-2"]
    assert (tmp_path / "notes.txt").read_text() == "mine"
    with pytest.raises(ValueError, match="resume continues the run in output_dir, overwrite_output_dir deletes it"):
        TrainingConfig(resume=True, overwrite_output_dir=True)


def test_resume_refuses_settings_that_change_the_run_and_allows_a_longer_budget_recording_each_segment(tmp_path):
    run_job(tmp_path, *CONSTANT, "--max_steps", "4")
    with pytest.raises(ValueError, match=r"training.seed: 0 -> 3; training.per_device_batch_size: 4 -> 8\. Drop"):
        run_job(tmp_path, *CONSTANT, "--max_steps", "6", "--resume", "--per_device_batch_size", "8", "--seed", "3")
    with mock.patch("hf_encoders.training.device_description", return_value="1 x NVIDIA H100 80GB HBM3"):
        result = run_job(tmp_path, *CONSTANT, "--max_steps", "6", "--resume", "--eval_every", "3").result
    settings = json.loads((tmp_path / "config.json").read_text())
    commands = settings["commands"]  # one per segment, as the devices
    assert len(commands) == 2 and "--max_steps 4" in commands[0] and "--max_steps 6 --resume" in commands[1]
    assert settings["devices"] == [device_description(), "1 x NVIDIA H100 80GB HBM3"]
    assert hardware(settings) == f"{device_description()}, then 1 x NVIDIA H100 80GB HBM3"
    assert hardware({"device": "1 x H100"}) == "1 x H100" and hardware({}) == "not recorded by this run"
    assert result.steps == 6 and sorted(losses(tmp_path)) == [1, 2, 3, 4, 5, 6]


@dataclass
class DataArguments:
    train_data: str = "corpus"
    streaming: bool = False


def test_a_run_from_before_a_setting_existed_resumes_at_its_default_and_refuses_another_value(tmp_path):
    run_job(tmp_path, *CONSTANT, "--max_steps", "2")
    saved = json.loads((tmp_path / "config.json").read_text())
    del saved["training"]["group_by_length"]  # config.json as an hf_encoders without these settings wrote it
    saved["data"] = {"train_data": "corpus"}
    (tmp_path / "config.json").write_text(json.dumps(saved))
    newer = r"\(not in its config.json: a newer setting\)"
    with pytest.raises(ValueError, match=rf"training.group_by_length: {newer} -> True\. Drop"):
        run_job(tmp_path, *CONSTANT, "--max_steps", "4", "--resume", "--group_by_length", "true")
    training = TrainingConfig(**{**saved["training"], "resume": True})
    with pytest.raises(ValueError, match=rf"data.streaming: {newer} -> True\. Drop"):
        start_run(training, {"script": "tiny_training_job", "data": DataArguments(streaming=True)})
    start_run(training, {"script": "tiny_training_job", "data": DataArguments()})  # the defaults: how it trained
    assert run_job(tmp_path, *CONSTANT, "--max_steps", "4", "--resume").result.steps == 4


def test_a_finished_run_resumed_trains_no_more_and_runs_its_end_again(tmp_path, caplog):
    flags = [*CONSTANT, "--max_steps", "4", "--best_metric", "held_out/loss"]
    evaluated = {"HF_ENCODERS_TEST_EVALUATE": "1"}
    first = run_job(tmp_path, *flags, env=evaluated).result
    before = (tmp_path / "metrics.jsonl").read_text()
    with caplog.at_level(logging.WARNING):
        again = run_job(tmp_path, *flags, "--resume", "--average_last", "2", env=evaluated).result
    assert "is already at step 4 of 4: nothing is trained, its end (evaluation, averaging, export) runs again" in (
        caplog.text
    )
    assert (again.steps, again.train_loss, again.tokens_seen) == (first.steps, first.train_loss, first.tokens_seen)
    assert again.metrics == pytest.approx(first.metrics)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert (tmp_path / "metrics.jsonl").read_text().startswith(before)  # the end's evaluation is not logged twice
    assert [sorted(row) for row in rows[len(before.splitlines()) :]] == [
        ["averaged_2/held_out/accuracy", "averaged_2/held_out/loss", "averaged_2/held_out/perplexity", "step"]
    ]
    assert [p.name for p in checkpoints(tmp_path)] == ["checkpoint-2", "checkpoint-4"] and (
        tmp_path / "averaged_2"
    ).is_dir()


def test_resume_skips_a_damaged_checkpoint_and_says_why(tmp_path, caplog):
    run_job(tmp_path / "straight", *CONSTANT, "--max_steps", "6")
    run_job(tmp_path / "run", *CONSTANT, "--max_steps", "4")
    weights = tmp_path / "run" / "checkpoint-4" / "model.safetensors"
    size = weights.stat().st_size
    weights.write_bytes(weights.read_bytes()[: size // 2])  # a truncated file, as a full disk or a kill leaves it
    with caplog.at_level(logging.INFO):
        run_job(tmp_path / "run", *CONSTANT, "--max_steps", "6", "--resume")
    assert f"skipping {weights.parent}: model.safetensors is {size // 2:,} bytes, the manifest says {size:,}" in (
        caplog.text
    )
    assert f"Resumed from {tmp_path / 'run' / 'checkpoint-2'} (step 2)" in caplog.text
    straight, resumed = losses(tmp_path / "straight"), losses(tmp_path / "run")
    assert resumed.keys() == straight.keys()
    for step in straight:
        assert resumed[step] == pytest.approx(straight[step], rel=1e-5), (step, straight, resumed)

    for folder in checkpoints(tmp_path / "run"):
        (folder / "optimizer.bin").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"No intact checkpoint to resume from in .*: all 2 are damaged"):
        run_job(tmp_path / "run", *CONSTANT, "--max_steps", "8", "--resume")


def test_a_full_disk_while_saving_says_so_and_leaves_no_half_checkpoint(tmp_path):
    def full_disk(self, output_dir=None, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1024 vs 896")

    with (
        mock.patch.object(Accelerator, "save_state", full_disk),
        mock.patch.object(run_folder.shutil, "disk_usage", return_value=mock.Mock(free=4096)),
        pytest.raises(
            CheckpointError, match=r"No space left on device while writing the checkpoint .*checkpoint-2\.tmp"
        ),
    ):
        run_job(tmp_path, *CONSTANT, "--max_steps", "4")
    assert not list(tmp_path.glob("checkpoint-*"))


def test_bad_settings_are_refused_before_the_first_step(tmp_path):
    for flag, value, message in [
        ("max_steps", "-1", "max_steps=-1: it must be at least 0"),
        ("keep_checkpoints", "-1", "keep_checkpoints=-1: it must be at least 1"),
        ("gradient_accumulation_steps", "0", "gradient_accumulation_steps=0: it must be at least 1"),
        ("save_every", "-5", "save_every=-5: it must be at least 0"),
        ("learning_rate", "0", "learning_rate and adam_epsilon must be positive"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_config((TrainingConfig,), [f"--{flag}", value])
    for text, kind in [("- 1\n- 2\n", "list"), ("a string\n", "str")]:
        (tmp_path / "run.yaml").write_text(text)
        with pytest.raises(ValueError, match=f"a config file is a mapping of settings .*, not a {kind}"):
            parse_config((TrainingConfig,), ["--config", str(tmp_path / "run.yaml")])
    in_the_way = tmp_path / "a_file"
    in_the_way.write_text("")
    with pytest.raises(PermissionError, match=f"Cannot write to output_dir {in_the_way / 'run'}"):
        start_run(TrainingConfig(output_dir=str(in_the_way / "run")))
    with pytest.raises(
        ValueError, match=r"best_metric='imdb/loss' is not among the evaluation's metrics \['c/loss'\]"
    ):
        start_run(TrainingConfig(output_dir=str(tmp_path / "run"), best_metric="imdb/loss"), metric_names=["c/loss"])


def mlm_flags(corpus: Path, output: Path, *extra: str) -> list[str]:
    return [
        *("--config", str(CONFIGS / "mlm_tiny.yaml")),
        *("--train_data", str(corpus), "--train_split", "train", "--eval_data", f"corpus={corpus}:validation"),
        *("--output_dir", str(output)),
        *"--vocab_size 200 --block_size 64 --num_proc 1 --best_metric corpus/loss".split(),
        *extra,
    ]


def test_a_resumed_script_keeps_the_tokenizer_it_trained(mlm_corpus, tmp_path, caplog):
    output = tmp_path / "run"
    run_script("pretrain_mlm.py", *mlm_flags(mlm_corpus, output, "--max_steps", "4", "--save_every", "2"))
    trained = (output / "tokenizer" / "tokenizer.json").read_text()
    with (
        mock.patch.object(tokenization, "train_tokenizer", side_effect=AssertionError("trained a tokenizer again")),
        caplog.at_level(logging.INFO),
    ):
        done = run_script("pretrain_mlm.py", *mlm_flags(mlm_corpus, output, "--max_steps", "6", "--resume"))
    assert f"tokenizer: the run's own, {output / 'tokenizer'}" in caplog.text
    assert done.result["steps"] == 6
    assert (output / "final" / "tokenizer.json").read_text() == trained
    with pytest.raises(ValueError, match=r"data.vocab_size: 200 -> 300"):
        run_script(
            "pretrain_mlm.py", *mlm_flags(mlm_corpus, output, "--max_steps", "8", "--resume", "--vocab_size", "300")
        )


def test_a_best_metric_the_evaluation_does_not_report_stops_the_script_at_once(mlm_corpus, tmp_path):
    with pytest.raises(ValueError, match=r"best_metric='imdb/loss' is not among the evaluation's metrics"):
        run_script("pretrain_mlm.py", *mlm_flags(mlm_corpus, tmp_path, "--best_metric", "imdb/loss"))
    assert not any(tmp_path.iterdir())  # nothing prepared, nothing written


def test_one_seed_gives_the_same_run(mlm_run, mlm_corpus, tmp_path):
    def weights(name: str, seed: str) -> dict:
        extra = ["--tokenizer", str(mlm_run / "final"), "--max_steps", "1", "--seed", seed, "--learning_rate", "1e-9"]
        flags = mlm_flags(mlm_corpus, tmp_path / name, *extra)
        run_script("pretrain_mlm.py", *flags)
        return load_file(tmp_path / name / "final" / "model.safetensors")

    first, again, other = weights("first", "3"), weights("again", "3"), weights("other", "4")
    assert first.keys() == again.keys()
    assert all((first[key] == again[key]).all() for key in first)
    assert any((first[key] != other[key]).any() for key in first)


def test_a_script_under_two_cpu_processes_trains_as_one_run_with_one_tokenizer(mlm_corpus, tmp_path):
    """`accelerate launch` on CPUs: the script's processes form one run (a plain PartialState() would leave each
    training alone), and the tokenizer the main process trained is the one every process reads."""
    output = tmp_path / "run"
    launcher = [
        str(ACCELERATE),
        *"launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no --dynamo_backend no".split(),
        *("--main_process_port", "29519"),
    ]
    script = ROOT / "training" / "pretrain_mlm.py"
    command = [*launcher, str(script), *mlm_flags(mlm_corpus, output, "--max_steps", "2")]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
    assert done.returncode == 0, done.stderr[-4000:]
    assert json.loads((output / "config.json").read_text())["num_processes"] == 2
    assert done.stderr.count(f"tokenizer: the run's own, {output / 'tokenizer'}") == 1  # the second process's
    assert (output / "final" / "tokenizer.json").read_text() == (output / "tokenizer" / "tokenizer.json").read_text()


HOLD = """
import sys, time
from hf_encoders.run_folder import start_run
from hf_encoders.training import TrainingConfig
run = start_run(TrainingConfig(output_dir=sys.argv[1]), {"script": "tiny_training_job"})  # held while it lives
print("holding", flush=True)
time.sleep(120)
"""


def test_a_folder_in_use_by_a_run_is_refused_and_a_stale_lock_is_named_and_taken_over(tmp_path, caplog):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "holding\n"
        busy = rf"output_dir {tmp_path} is in use by another run \(pid {holder.pid} on host {socket.gethostname()}, "
        for flags in ([], ["--resume"], ["--overwrite_output_dir"]):
            with pytest.raises(run_folder.RunFolderInUseError, match=busy + r"started .*\)\. Wait for it to end"):
                run_job(tmp_path, *CONSTANT, "--max_steps", "2", *flags)
        assert not (tmp_path / "config.json").exists()  # nothing of the refused runs was written
    finally:
        holder.kill()  # as kill -9: its lock file stays, naming a process that is gone
        holder.wait()
    assert str(holder.pid) in (tmp_path / "run.lock").read_text()
    with caplog.at_level(logging.WARNING):
        assert run_job(tmp_path, *CONSTANT, "--max_steps", "2").result.steps == 2
    assert f"taking over the stale lock of a run that is gone (pid {holder.pid} on host" in caplog.text
    assert not (tmp_path / "run.lock").exists()  # released when the run ended
    assert run_job(tmp_path, *CONSTANT, "--max_steps", "4", "--resume").result.steps == 4  # and free again


def test_two_runs_started_at_once_into_one_folder_leave_one_run(tmp_path):
    """With other settings each (the second's results would otherwise replace the first's): one runs, the other is
    refused before writing anything, and the folder holds that one run alone. Which refusal depends on the timing:
    the folder is in use (the other holds the lock) or already holds a run (the other finished first); the lock's own
    refusal is tested without a race above."""
    jobs = [
        subprocess.Popen(
            [sys.executable, str(ROOT / "tests" / "tiny_training_job.py"), "--output_dir", str(tmp_path)]
            + [*CONSTANT, "--log_every", "1", "--max_steps", str(steps)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for steps in (6, 8)
    ]
    outcomes = [(job.wait(timeout=240), job.stderr.read()) for job in jobs]
    refused = [stderr for code, stderr in outcomes if code != 0]
    reasons = (f"output_dir {tmp_path} is in use by another run", f"output_dir {tmp_path} already holds a run")
    assert len(refused) == 1 and any(reason in refused[0] for reason in reasons), outcomes
    steps = next(steps for (code, _), steps in zip(outcomes, (6, 8), strict=True) if code == 0)
    assert sorted(losses(tmp_path)) == list(range(1, steps + 1))
    assert json.loads((tmp_path / "config.json").read_text())["training"]["max_steps"] == steps


@dataclass
class CorpusSettings:
    corpus_settings = ("data",)  # (a ClassVar, as the tasks' DataArguments declare it)
    data: str = "corpus"


def test_the_run_records_its_data_so_the_card_is_the_same_from_anywhere_and_a_changed_corpus_stops_a_resume(
    tmp_path, monkeypatch, caplog
):
    """Data given relative to where the run started (`--data corpus`): its absolute path, files and SOURCE.md are
    recorded then, so a card made from another folder (the data folder gone, even) still names the data and its
    licence; a resume whose corpus changed size is refused, one whose file was only touched is warned about."""
    from hf_encoders.cards import RunRecord, describe_data

    corpus = tmp_path / "start" / "corpus"
    corpus.mkdir(parents=True)
    (corpus / "train.txt").write_text("ein Hund\nzwei Hunde\n")
    (corpus / "SOURCE.md").write_text(
        "# Tiny corpus — raw\n\n**Source:** written by the test. Twice.\n\n**License:** CC0\n"
    )
    monkeypatch.chdir(tmp_path / "start")
    settings = {"script": "x", "data": CorpusSettings()}
    run = start_run(TrainingConfig(output_dir=str(tmp_path / "run")), settings)
    run.write_settings({"script": "x", "data": {"data": "corpus"}})
    run.close()  # (its lock goes with it)
    recorded = json.loads((tmp_path / "run" / "config.json").read_text())
    assert recorded["working_directory"] == str(tmp_path / "start")
    assert recorded["data_sources"]["corpus"]["path"] == str(corpus)

    monkeypatch.chdir(tmp_path)
    shutil.move(corpus, tmp_path / "elsewhere")
    record = RunRecord(tmp_path / "run", recorded, {}, tmp_path / "run", {})
    with caplog.at_level(logging.WARNING):
        described = describe_data("corpus", record)
    assert (described.title, described.license, described.source) == ("Tiny corpus", "CC0", "written by the test.")
    assert "is not here" not in caplog.text
    shutil.move(tmp_path / "elsewhere", corpus)

    monkeypatch.chdir(tmp_path / "start")
    resumed = run_folder.RunFolder(TrainingConfig(output_dir=str(tmp_path / "run"), resume=True), settings)
    os.utime(corpus / "train.txt", ns=(1, 1))  # touched, same size: warned about
    with caplog.at_level(logging.WARNING):
        resumed.check_resumed_data(recorded["data_sources"])
    assert f"resume: {corpus / 'train.txt'} modified since the run started (same size)" in caplog.text
    (corpus / "train.txt").write_text("ein Hund\nzwei Hunde\ndrei Hunde\n")
    with pytest.raises(ValueError, match=r"the data changed: .*train\.txt is 31 bytes, it was 20"):
        resumed.check_resumed_data(recorded["data_sources"])
    (corpus / "more.txt").write_text("vier Hunde\n")
    with pytest.raises(ValueError, match=r"more\.txt appeared"):
        resumed.check_resumed_data(recorded["data_sources"])
