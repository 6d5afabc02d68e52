import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_cpu_benchmark_runs_and_records_its_figures(tmp_path):
    output = tmp_path / "result.json"
    tiny = ["--hidden-size", "32", "--layers", "2", "--heads", "2", "--intermediate-size", "64", "--vocab-size", "128",
            "--batch-size", "4", "--min-length", "8", "--max-length", "16", "--steps", "2", "--rounds", "1",
            "--warmup", "1"]  # fmt: skip
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_encoder_cpu.py"), *tiny, "--output", str(output)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(output.read_text())
    assert set(result["tokens_per_second"]) == set(result["speedup_of_ours"])
    assert len(result["tokens_per_second"]) == 4 and all(v > 0 for v in result["tokens_per_second"].values())
    assert result["real_tokens_per_step"] < result["padded_tokens_per_step"]
    assert {"torch", "transformers"} <= set(result["versions"]) and result["command"].startswith("python ")


def test_seq2seq_benchmark_runs_and_records_its_figures(tmp_path):
    output = tmp_path / "result.json"
    tiny = ["--hidden-size", "32", "--encoder-layers", "1", "--decoder-layers", "1", "--heads", "2",
            "--intermediate-size", "64", "--vocab-size", "64", "--train-batch-size", "4", "--train-steps", "1",
            "--generate-batch-size", "2", "--generate-batches", "1", "--new-tokens", "3", "--rounds", "1"]  # fmt: skip
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_seq2seq_cpu.py"), *tiny, "--output", str(output)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(output.read_text())
    modes = {"train tokens/s", "generate sentences/s (beams=1)", "generate sentences/s (beams=4)"}
    assert set(result["median"]) == modes == set(result["speedup_of_ours"])
    assert all(len(per_model) == 3 and min(per_model.values()) > 0 for per_model in result["median"].values())


def test_data_benchmark_runs_and_records_its_figures(tmp_path):
    corpus = tmp_path / "reviews.txt"
    corpus.write_text("".join(f"review {i}: a film about a dog that runs and a cat that sits.\n" for i in range(300)))
    output = tmp_path / "result.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_data_cpu.py"), "--data", str(corpus), "--vocab-size", "120",
         "--tokenizer-sample", "100", "--block-size", "64", "--num-proc", "1", "--output", str(output)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(output.read_text())
    assert result["documents"] == 300 and result["tokens"] > 300 * 10
    assert 0 < result["block_fill"] <= 1 and result["load_tokenize_pack_seconds"] > 0
