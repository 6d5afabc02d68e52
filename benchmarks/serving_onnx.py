"""Feature-extraction throughput of one random-weight `EncoderModel` served four ways, on the same padded batches:
PyTorch eager (sdpa), `torch.compile(model, dynamic=True)`, ONNX Runtime float32 and ONNX Runtime int8 (the files
`hf_encoders.export_onnx` writes). Each runtime runs in a process of its own (PyTorch's OpenMP pool and ONNX
Runtime's spinning threads never share one), `rounds` times, the runtimes taking turns round by round; threads
pinned as in `bench_serving_cpu.py` (`OMP_NUM_THREADS`, `torch.set_num_threads`, ONNX Runtime's
`intra_op_num_threads`, CPU affinity).

    from benchmarks.serving_onnx import onnx_encoder_rows
    rows = onnx_encoder_rows(rounds=3)  # a few minutes on 2 CPU cores

Nothing is written: the caller records the rows.
"""

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hf_encoders import EncoderConfig, EncoderModel  # noqa: E402
from hf_encoders.export_onnx import INPUTS, QUANTIZED_FILE, export_encoder, session  # noqa: E402

PAD, CLS, SEP = 0, 1, 2
RUNTIMES = ("pytorch eager (sdpa)", "torch.compile (dynamic)", "onnxruntime float32", "onnxruntime int8")
Runner = Callable[[dict[str, torch.Tensor]], tuple[np.ndarray, np.ndarray]]


def random_batches(vocab: int, batch_size: int, min_tokens: int, max_tokens: int, count: int, seed: int = 0):
    """`count` right-padded batches of [CLS] ... [SEP] sequences of random lengths in [min_tokens, max_tokens]."""
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(count):
        lengths = torch.randint(min_tokens, max_tokens + 1, (batch_size,), generator=generator)
        ids = torch.randint(5, vocab, (batch_size, int(lengths.max())), generator=generator)
        mask = (torch.arange(ids.shape[1]) < lengths[:, None]).long()
        ids[:, 0], ids[torch.arange(batch_size), lengths - 1] = CLS, SEP
        batches.append({"input_ids": ids.masked_fill(mask == 0, PAD), "attention_mask": mask})
    return batches


def torch_runner(model: torch.nn.Module) -> Runner:
    def run(batch):
        with torch.inference_mode():
            out = model(**batch)
        return out.last_hidden_state.numpy(), out.pooler_output.numpy()

    return run


def onnx_runner(path: Path, threads: int) -> Runner:
    onnx_session = session(path, threads)

    def run(batch):
        return tuple(onnx_session.run(["last_hidden_state", "pooler_output"], {n: batch[n].numpy() for n in INPUTS}))

    return run


def max_diff(got: tuple[np.ndarray, np.ndarray], want: tuple[np.ndarray, np.ndarray], mask: torch.Tensor) -> float:
    """Largest absolute difference of the hidden states on real tokens and of the pooled embeddings."""
    real = mask.numpy().astype(bool)
    return max(float(np.abs(got[0][real] - want[0][real]).max()), float(np.abs(got[1] - want[1]).max()))


def runner(runtime: str, folder: Path, threads: int) -> Runner:
    if runtime.startswith("onnxruntime"):
        return onnx_runner(folder / ("model.onnx" if runtime.endswith("float32") else QUANTIZED_FILE), threads)
    model = EncoderModel.from_pretrained(folder / "pytorch", attn_implementation="sdpa").eval()
    return torch_runner(torch.compile(model, dynamic=True) if "compile" in runtime else model)


def run_worker(spec_file: Path) -> None:
    """One runtime: its first call (compilation, warm-up) and then every batch timed, with its largest difference
    from the eager outputs the parent saved."""
    spec = json.loads(spec_file.read_text())
    allowed = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, allowed[: spec["threads"]])
    torch.set_num_threads(spec["threads"])
    folder = Path(spec["folder"])
    batches = torch.load(folder / "batches.pt")
    reference = np.load(folder / "reference.npz")
    run = runner(spec["runtime"], folder, spec["threads"])
    start = time.perf_counter()
    run(batches[0])
    first_call_s = time.perf_counter() - start
    seconds, diff = [], 0.0
    for index, batch in enumerate(batches):
        start = time.perf_counter()
        result = run(batch)
        seconds.append(time.perf_counter() - start)
        want = (reference[f"hidden{index}"], reference[f"pooled{index}"])
        diff = max(diff, max_diff(result, want, batch["attention_mask"]))
    result = {"seconds": seconds, "first_call_s": first_call_s, "max_abs_diff_vs_eager": diff, "cpus": allowed}
    Path(spec["result"]).write_text(json.dumps(result))


def prepare(folder: Path, config: EncoderConfig, data: list[dict], threads: int) -> float:
    """Save the model, the batches and eager PyTorch's outputs on them, and export to ONNX; the export's seconds."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = EncoderModel(config).eval()
    model.save_pretrained(folder / "pytorch")
    torch.save(data, folder / "batches.pt")
    run = torch_runner(model)
    outputs = [run(batch) for batch in data]
    arrays = {f"hidden{i}": hidden for i, (hidden, _) in enumerate(outputs)}
    np.savez(folder / "reference.npz", **arrays, **{f"pooled{i}": pooled for i, (_, pooled) in enumerate(outputs)})
    example = random_batches(config.vocab_size, 2, 8, 12, 1, seed=1)[0]
    start = time.perf_counter()
    export_encoder(model, folder, example, data[:1], quantize=True, atol=1e-3)
    return time.perf_counter() - start


def run_process(runtime: str, folder: Path, threads: int) -> dict:
    spec_file = folder / f"spec-{runtime.split()[0]}-{runtime.split()[-1].strip('()')}.json"
    spec = {"runtime": runtime, "folder": str(folder), "threads": threads, "result": str(spec_file) + ".result"}
    spec_file.write_text(json.dumps(spec))
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", str(spec_file)]
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{runtime} failed:\n{done.stderr[-4000:]}")
    return json.loads(Path(spec["result"]).read_text())


def onnx_encoder_rows(
    hidden_size: int = 256,
    layers: int = 4,
    heads: int = 4,
    intermediate: int = 1024,
    vocab: int = 8192,
    batch_size: int = 32,
    min_tokens: int = 16,
    max_tokens: int = 256,
    batches: int = 5,
    threads: int = 2,
    rounds: int = 3,
    lock: Path | None = None,
) -> list[dict]:
    """Texts per second of feature extraction (`last_hidden_state` and `pooler_output`) for PyTorch eager,
    torch.compile, ONNX Runtime float32 and int8, median and min/max over `rounds` processes each, with each one's
    largest difference from eager; `first_call_s` is the first call (torch.compile's compilation), left out of the
    figures as every runtime's warm-up call is. `lock`: a file to hold an exclusive flock on around each process."""
    from benchmarks.bench_serving_cpu import held

    config = EncoderConfig(
        vocab_size=vocab,
        hidden_size=hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=intermediate,
        max_position_embeddings=max(512, max_tokens),
        attn_implementation="sdpa",
    )
    data = random_batches(vocab, batch_size, min_tokens, max_tokens, batches)
    results: dict[str, list[dict]] = {runtime: [] for runtime in RUNTIMES}
    with tempfile.TemporaryDirectory() as scratch:
        export_s = prepare(Path(scratch), config, data, threads)
        for round_index in range(rounds):
            order = RUNTIMES[round_index % len(RUNTIMES) :] + RUNTIMES[: round_index % len(RUNTIMES)]
            for runtime in order:
                with held(lock):
                    results[runtime].append(run_process(runtime, Path(scratch), threads))
    settings = {"threads": threads, "batch_size": batch_size, "tokens": [min_tokens, max_tokens], "batches": batches}
    return [runtime_row(runtime, runs, batch_size, export_s, settings) for runtime, runs in results.items()]


def runtime_row(runtime: str, runs: list[dict], batch_size: int, export_s: float, settings: dict) -> dict:
    throughput = [batch_size * len(run["seconds"]) / sum(run["seconds"]) for run in runs]
    row = {
        "runtime": runtime,
        "texts_per_s": {"median": statistics.median(throughput), "min": min(throughput), "max": max(throughput)},
        "median_batch_s": statistics.median(s for run in runs for s in run["seconds"]),
        "max_abs_diff_vs_eager": max(run["max_abs_diff_vs_eager"] for run in runs),
        "rounds": len(runs),
        "first_call_s": statistics.median(run["first_call_s"] for run in runs),
        **settings,
    }
    return row | ({"export_s": export_s} if runtime.startswith("onnx") else {})


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "--worker":
    run_worker(Path(sys.argv[2]))
