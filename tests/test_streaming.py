"""Streamed training data: the map-style path's blocks, made on the fly; each process its own part of the corpus,
once per epoch; an exact position to resume from, also across a killed two-process run; a truncated file named with
its line; dataloader workers that end with their run."""

import contextlib
import gzip
import json
import os
import pickle
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path

import psutil  # accelerate's dependency
import pytest
from conftest import CONFIGS, run_script, wordpiece_tokenizer
from test_training import ACCELERATE, JOB, ROOT, losses, run_job
from transformers import AutoTokenizer

from hf_encoders.cards import build_model_card
from hf_encoders.data import (
    StreamedExamples,
    StreamError,
    load_monolingual_dataset,
    load_parallel_dataset,
    load_text_dataset,
    mlm_blocks,
    pack_for_mlm,
    prepare_denoising,
    prepare_translation,
    stream_text_dataset,
)
from hf_encoders.data.streaming import (
    denoising_segments,
    stream_monolingual_dataset,
    stream_parallel_dataset,
    translation_pairs,
)
from hf_encoders.run_folder import checkpoint_problem, checkpoints

WORDS = "the a cat dog sat on mat ran in park big small red blue and with".split()


def document(i: int) -> str:
    """A document of 3-40 words, different for every i; every 97th is empty (dropped, and counted)."""
    if i % 97 == 13:
        return ""
    return " ".join(WORDS[(i * 7 + k * k) % len(WORDS)] for k in range(3 + i % 38))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """2,500 documents (three batches of the map-style path) as train.txt, and a validation split."""
    folder = tmp_path_factory.mktemp("corpus")
    (folder / "train.txt").write_text("".join(document(i) + "\n" for i in range(2500)))
    (folder / "validation.txt").write_text("the cat sat\n")
    return folder


def texts(stream) -> list[str]:
    """One epoch of a stream whose examples are its documents (a `make` that keeps them)."""
    served = []
    for example in stream.made():
        served.append(example["text"])
    return served


def keep_documents(batch: dict) -> list[dict]:
    return [{"text": text} for text in batch["text"]]


def test_streamed_blocks_are_the_map_style_blocks(corpus, caplog):
    tokenizer = wordpiece_tokenizer()
    mapped = pack_for_mlm(load_text_dataset(corpus)["train"], tokenizer, block_size=64)
    stream = StreamedExamples(stream_text_dataset(corpus, "train"), mlm_blocks(tokenizer, 64), buffer_size=0)
    streamed = [example for _, example in zip(range(len(mapped)), stream, strict=False)]
    assert [block["input_ids"] for block in streamed] == mapped["input_ids"]
    assert [block["lengths"] for block in streamed] == mapped["lengths"]
    assert stream.dropped == len([i for i in range(2500) if not document(i)])  # counted, as the map-style path does


@pytest.mark.parametrize("files", [1, 2], ids=["rows-split", "files-split"])
def test_two_processes_read_the_corpus_once_per_epoch(files, tmp_path):
    documents = [f"doc{i} {document(i)}" for i in range(1200)]
    for part in range(files):
        (tmp_path / f"train-{part}.txt").write_text("".join(text + "\n" for text in documents[part::files]))
    spec = str(tmp_path / "train-*.txt")
    parts = [
        texts(StreamedExamples(stream_text_dataset(spec), keep_documents, rank, 2, buffer_size=0)) for rank in (0, 1)
    ]
    assert sorted(parts[0] + parts[1]) == sorted(documents)  # every document once: none lost, none twice
    assert abs(len(parts[0]) - len(parts[1])) <= len(documents) // 10


def test_the_state_resumes_exactly_across_an_epoch_boundary(corpus):
    def stream():
        return StreamedExamples(stream_text_dataset(corpus, "train"), keep_documents, seed=3, buffer_size=50)

    uninterrupted = iter(stream())
    served = [next(uninterrupted)["text"] for _ in range(3000)]  # one epoch is 2,474 documents
    first = stream()
    head = iter(first)
    assert [next(head)["text"] for _ in range(1137)] == served[:1137]
    state = pickle.loads(pickle.dumps(first.state_dict()))  # as a checkpoint holds it
    resumed = stream()
    resumed.load_state_dict(state)
    tail = iter(resumed)
    assert [next(tail)["text"] for _ in range(3000 - 1137)] == served[1137:]
    assert served[:100] != [document(i) for i in range(100) if document(i)][:100]  # shuffled


def test_a_truncated_stream_names_its_file_and_line(tmp_path):
    content = gzip.compress("".join(document(i) + "\n" for i in range(3000)).encode())
    (tmp_path / "train.txt.gz").write_bytes(content[: len(content) // 2])
    readable = zlib.decompressobj(wbits=31).decompress(content[: len(content) // 2])
    line = readable.count(b"\n") + 1  # the first line that the cut leaves incomplete
    assert 1 < line < 3000
    stream = StreamedExamples(stream_text_dataset(tmp_path, "train"), keep_documents, buffer_size=0)
    with pytest.raises(StreamError, match=rf"Cannot read .*train\.txt\.gz at line {line}: it is truncated, corrupt"):
        texts(stream)


def launch(output_dir: Path, corpus: Path, *flags: str, env: dict | None = None) -> subprocess.CompletedProcess:
    launcher = [
        str(ACCELERATE),
        *"launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no --dynamo_backend no".split(),
        *("--main_process_port", "29537"),
    ]
    command = [*launcher, str(JOB), "--output_dir", str(output_dir), "--log_every", "1", "--max_steps", "8", *flags]
    environment = {**os.environ, "ACCELERATE_USE_CPU": "1", "HF_ENCODERS_TEST_STREAM": str(corpus), **(env or {})}
    environment["HF_ENCODERS_TEST_MASKING"] = "dynamic"  # MLMCollator: masks drawn per batch, resumed with the run
    return subprocess.run(command, capture_output=True, text=True, timeout=240, cwd=ROOT, env=environment)


@pytest.mark.parametrize("workers", ["0", "2"])
def test_a_killed_streamed_run_resumes_with_the_batches_of_an_uninterrupted_one(workers, tmp_path):
    lines = [" ".join(f"t{(i * 13 + k) % 59}" for k in range(5 + i % 17)) + "\n" for i in range(320)]
    for part in range(4):  # a file for each worker of each process
        (tmp_path / f"corpus-{part}.txt").write_text("".join(lines[part::4]))
    corpus = tmp_path / "corpus-*.txt"
    flags = ["--per_device_batch_size", "2", "--save_every", "3", "--dataloader_workers", workers]
    done = launch(tmp_path / "whole", corpus, *flags)
    assert done.returncode == 0, done.stderr[-4000:]
    killed = launch(tmp_path / "resumed", corpus, *flags, env={"HF_ENCODERS_TEST_CRASH_AT_BATCH": "8"})
    assert killed.returncode != 0 and checkpoints(tmp_path / "resumed")[-1].name == "checkpoint-6"
    done = launch(tmp_path / "resumed", corpus, *flags, "--resume", "true")
    assert done.returncode == 0, done.stderr[-4000:]
    whole, resumed = losses(tmp_path / "whole"), losses(tmp_path / "resumed")
    assert len(whole) == 8 and resumed == whole  # the same batches, in the same order, after the resume too
    assert {path.name for path in (tmp_path / "resumed" / "checkpoint-8").glob("data_state_*")} == {
        "data_state_0.pkl",
        "data_state_1.pkl",
    }


def test_pretraining_streams_its_corpus(corpus, tmp_path):
    flags = ["--config", str(CONFIGS / "mlm_tiny.yaml"), "--train_data", str(corpus), "--train_split", "train"]
    flags += ["--eval_data", f"corpus={corpus}:validation", "--vocab_size", "120", "--block_size", "64"]
    flags += ["--streaming", "true", "--shuffle_buffer", "32", "--num_epochs", "0", "--best_metric", "corpus/loss"]
    run_script("pretrain_mlm.py", *flags, "--max_steps", "4", "--output_dir", str(tmp_path / "run"))
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["steps"] == 4 and results["tokens_seen"] > 0 and "train_tokens_per_epoch" not in results
    card = " ".join(str(build_model_card(tmp_path / "run", repo_id="org/m")).split())
    assert f"on the fly from the streamed text ({results['tokens_seen']:,} tokens seen)" in card
    with pytest.raises(ValueError, match="A streamed training set has no known length: give the run's budget as"):
        run_script(
            "pretrain_mlm.py", *flags, "--max_steps", "0", "--num_epochs", "1", "--output_dir", str(tmp_path / "e")
        )


def test_streamed_pairs_are_the_map_style_pairs(translation_run, handful):
    tokenizer = AutoTokenizer.from_pretrained(translation_run[0] / "best")
    limits = {"max_source_length": 64, "max_target_length": 9}  # some targets are cut, keeping their </s>
    mapped = prepare_translation(load_parallel_dataset(handful, "de", "en")["train"], tokenizer, "de", "en", **limits)
    make = translation_pairs(tokenizer, "de", "en", **limits)
    stream = StreamedExamples(
        stream_parallel_dataset(handful, "de", "en"), make, buffer_size=0, text_column=("de", "en")
    )
    streamed = [example for _, example in zip(range(len(mapped)), stream, strict=False)]
    assert [pair["input_ids"] for pair in streamed] == mapped["input_ids"]
    assert [pair["labels"] for pair in streamed] == mapped["labels"] and max(map(len, mapped["labels"])) == 9


def test_translation_streams_its_training_pairs(translation_run, handful, tmp_path):
    flags = ["--config", str(CONFIGS / "translation_tiny.yaml"), "--data", str(handful), "--streaming", "true"]
    flags += ["--tokenizer", str(translation_run[0] / "best"), "--shuffle_buffer", "4", "--max_steps", "4"]
    flags += ["--num_epochs", "0", "--per_device_batch_size", "4", "--output_dir", str(tmp_path / "run")]
    run_script("train_translation.py", *flags)
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["train"]["steps"] == 4 and results["train_pairs"] is None and results["test"]["examples"] == 8
    assert "streamed training pairs" in " ".join(str(build_model_card(tmp_path / "run", repo_id="org/s")).split())


def test_streamed_segments_are_the_map_style_segments(translation_run, handful):
    tokenizer = AutoTokenizer.from_pretrained(translation_run[0] / "best")
    texts = load_monolingual_dataset(handful, "en", "train")["train"]
    mapped = prepare_denoising(texts, tokenizer, "en", max_length=12)  # some sentences are cut
    make = denoising_segments(tokenizer, 12)
    stream = StreamedExamples(stream_monolingual_dataset(handful, "en"), make, buffer_size=0)
    streamed = [example for _, example in zip(range(len(mapped)), stream, strict=False)]
    for column in ("input_ids", "labels", "sentence_lengths"):
        assert [segment[column] for segment in streamed] == mapped[column]


def test_denoising_streams_its_texts(handful, tmp_path):
    flags = ["--config", str(CONFIGS / "denoising_multi30k.yaml"), "--texts", f"en={handful}", f"de={handful}"]
    flags += ["--vocab_size", "150", "--max_steps", "3", "--num_epochs", "0", "--per_device_batch_size", "4"]
    flags += ["--streaming", "true", "--shuffle_buffer", "4", "--output_dir", str(tmp_path / "denoising")]
    flags += ["--eval_every", "0", "--eval_max_examples", "4", "--best_metric", f"{handful.name}.en/loss"]
    run_script("pretrain_denoising.py", *flags)
    results = json.loads((tmp_path / "denoising" / "results.json").read_text())
    assert results["steps"] == 3 and "train_segments" not in results
    card = " ".join(str(build_model_card(tmp_path / "denoising", repo_id="org/d")).split())
    assert "made on the fly from the streamed texts" in card


def test_undecodable_text_names_its_file_and_line(tmp_path):
    (tmp_path / "train.txt").write_bytes(b"t1 t2 t3\n" * 300 + b"t4 \xff\xfe t5\n" + b"t6 t7\n" * 216)
    stream = StreamedExamples(stream_text_dataset(tmp_path, "train"), keep_documents, buffer_size=0)
    with pytest.raises(StreamError, match=r"Cannot read .*train\.txt at line 301: .*not UTF-8") as error:
        texts(stream)
    assert "checkpoint" not in str(error.value)  # a stream knows of no run

    with pytest.raises(StreamError, match=r"train\.txt at line 301: .* No checkpoint was written\.") as error:
        run_job(tmp_path / "run", "--max_steps", "4", env={"HF_ENCODERS_TEST_STREAM": str(tmp_path / "train.txt")})
    assert "good checkpoint" not in str(error.value) and "start the run again" in str(error.value)


def test_a_stream_that_breaks_mid_run_keeps_its_checkpoints_whole(tmp_path):
    lines = "".join(" ".join(f"t{(i * 7 + k) % 59}" for k in range(6 + i % 11)) + "\n" for i in range(1500))
    content = gzip.compress(lines.encode())  # more documents than the stream reads at a time (1,000)
    (tmp_path / "corpus-0.txt.gz").write_bytes(content)
    (tmp_path / "corpus-1.txt.gz").write_bytes(content[: len(content) // 2])  # a download cut short
    command = [sys.executable, str(JOB), "--output_dir", str(tmp_path / "run")]
    command += ["--max_steps", "100000", "--save_every", "2", "--per_device_batch_size", "16", "--log_every", "1"]
    env = {**os.environ, "HF_ENCODERS_TEST_STREAM": str(tmp_path / "corpus-*.txt.gz")}
    done = subprocess.run(command, capture_output=True, text=True, timeout=240, cwd=ROOT, env=env)
    assert done.returncode != 0 and "corpus-1.txt.gz at line" in done.stderr, done.stderr[-3000:]
    kept = checkpoints(tmp_path / "run")
    assert kept and checkpoint_problem(kept[-1]) is None  # the last checkpoint before the break is whole
    assert f"The last good checkpoint is {kept[-1]}. Fix the file and resume the run (--resume)." in done.stderr


def alive(process: psutil.Process) -> bool:
    """Whether `process` still runs: not ended, nor a zombie left to be reaped."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.parametrize("signal_name", ["SIGKILL", "SIGTERM"])
def test_the_dataloader_workers_of_a_killed_run_end_with_it(signal_name, tmp_path):
    """A streamed run with two dataloader workers, killed mid-run: its workers (about 400 MB each) end with it
    instead of living on; SIGTERM stops the run as an error does."""
    lines = [" ".join(f"t{(i * 13 + k) % 59}" for k in range(5 + i % 17)) + "\n" for i in range(4000)]
    for part in range(2):  # a file for each worker
        (tmp_path / f"corpus-{part}.txt").write_text("".join(lines[part::2]))
    command = [sys.executable, str(JOB), "--output_dir", str(tmp_path / "run"), "--max_steps", "1000000"]
    command += ["--per_device_batch_size", "2", "--log_every", "1", "--dataloader_workers", "2"]
    env = {**os.environ, "HF_ENCODERS_TEST_STREAM": str(tmp_path / "corpus-*.txt")}
    metrics, workers = tmp_path / "run" / "metrics.jsonl", []
    with (tmp_path / "stderr.txt").open("w") as stderr:
        run = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        deadline = time.monotonic() + 180
        while not (metrics.is_file() and metrics.stat().st_size) and run.poll() is None:  # training: workers up
            assert time.monotonic() < deadline, "the run did not start training"
            time.sleep(0.2)
        workers = psutil.Process(run.pid).children()
        assert len(workers) == 2, (workers, (tmp_path / "stderr.txt").read_text()[-3000:])
        run.send_signal(getattr(signal, signal_name))
        run.wait(timeout=60)
        deadline = time.monotonic() + 10
        while any(map(alive, workers)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(map(alive, workers)), f"the workers outlived the run killed by {signal_name}"
    finally:  # nothing left behind, whatever failed
        if run.poll() is None:
            run.kill()
        for worker in workers:
            with contextlib.suppress(psutil.NoSuchProcess):
                worker.kill()
    stopped = "Stopped by SIGTERM."
    assert (stopped in (tmp_path / "stderr.txt").read_text()) == (signal_name == "SIGTERM")


def test_without_pdeathsig_a_worker_watches_for_its_parent():
    """Where the kernel cannot end a worker with its parent (not Linux), the worker's own thread does, within a
    second or so."""
    code = """if True:
        import os, sys, time
        from hf_encoders.training import end_with_parent

        if os.fork() == 0:  # the worker
            sys.platform = "darwin"  # no PR_SET_PDEATHSIG: the watchdog thread
            end_with_parent(worker_id=0)
            print(os.getpid(), flush=True)
            os.dup2(os.open(os.devnull, os.O_WRONLY), 1)  # the test reads on without waiting for this process
            time.sleep(60)
            os._exit(0)
        time.sleep(2)  # the parent dies without a word to its worker
        os._exit(0)
    """
    command = [sys.executable, "-c", code]
    done = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, timeout=120, cwd=ROOT)
    worker = psutil.Process(int(done.stdout))
    try:
        deadline = time.monotonic() + 5
        while alive(worker) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not alive(worker), "the worker outlived its parent"
    finally:
        with contextlib.suppress(psutil.NoSuchProcess):
            worker.kill()
