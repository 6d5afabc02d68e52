"""Feature-extraction throughput of one random-weight `EncoderModel` served four ways, on the same padded batches:
PyTorch eager (sdpa), `torch.compile(model, dynamic=True)`, ONNX Runtime float32 and ONNX Runtime int8 (the files
`hf_encoders.export_onnx` writes). The runtimes take turns batch by batch, so machine noise falls on all alike.

    from benchmarks.serving_onnx import onnx_encoder_rows
    rows = onnx_encoder_rows()  # about two minutes on 2 CPU cores

Nothing is written: the caller records the rows.
"""

import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from hf_encoders import EncoderConfig, EncoderModel
from hf_encoders.export_onnx import INPUTS, QUANTIZED_FILE, export_encoder, session

PAD, CLS, SEP = 0, 1, 2
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


def timed_rounds(runners: dict[str, Runner], batches: list[dict]) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Seconds per batch of each runner, runners taking turns on each batch; and each one's largest difference
    from the first runner (eager)."""
    seconds, diffs = {name: [] for name in runners}, dict.fromkeys(runners, 0.0)
    for batch in batches:
        reference = None
        for name, run in runners.items():
            start = time.perf_counter()
            result = run(batch)
            seconds[name].append(time.perf_counter() - start)
            if reference is None:
                reference = result
            diffs[name] = max(diffs[name], max_diff(result, reference, batch["attention_mask"]))
    return seconds, diffs


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
) -> list[dict]:
    """Texts per second of feature extraction (`last_hidden_state` and `pooler_output`) for PyTorch eager,
    torch.compile, ONNX Runtime float32 and int8, with each one's largest difference from eager; `compile_s` is the
    compile (first call) time of torch.compile, left out of its figures as every runtime's warm-up call is."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    config = EncoderConfig(
        vocab_size=vocab,
        hidden_size=hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=intermediate,
        max_position_embeddings=max(512, max_tokens),
        attn_implementation="sdpa",
    )
    model = EncoderModel(config).eval()
    data = random_batches(vocab, batch_size, min_tokens, max_tokens, batches)
    example = random_batches(vocab, 2, 8, 12, 1, seed=1)[0]
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        export_encoder(model, folder, example, data[:1], quantize=True, atol=1e-3)
        export_s = time.perf_counter() - start
        runners = {
            "pytorch eager (sdpa)": torch_runner(model),
            "torch.compile (dynamic)": torch_runner(torch.compile(model, dynamic=True)),
            "onnxruntime float32": onnx_runner(Path(folder) / "model.onnx", threads),
            "onnxruntime int8": onnx_runner(Path(folder) / QUANTIZED_FILE, threads),
        }
        warmup = {}
        for name, run in runners.items():  # the first call: compiles, and warms every runtime up alike
            start = time.perf_counter()
            run(data[0])
            warmup[name] = time.perf_counter() - start
        seconds, diffs = timed_rounds(runners, data)
    return [
        {
            "runtime": name,
            "texts_per_s": batch_size * len(times) / sum(times),
            "median_batch_s": statistics.median(times),
            "max_abs_diff_vs_eager": diffs[name],
            **({"compile_s": warmup[name]} if "compile" in name else {}),
            **({"export_s": export_s} if "onnx" in name else {}),
            "threads": threads,
            "batch_size": batch_size,
            "tokens": [min_tokens, max_tokens],
            "batches": batches,
        }
        for name, times in seconds.items()
    ]
