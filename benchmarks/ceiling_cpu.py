"""How close a masked-LM training step comes to what this CPU can do, and where the rest of the time goes.

The ceiling is the fp32 matrix-multiplication throughput torch reaches on the same threads (a large square GEMM).
A step's model FLOPs are counted with `benchmarks/flops.py` (real tokens, the head on the masked tokens: what the
model needs, whoever computes more); the fraction is model FLOPs per second over the GEMM's FLOPs per second. Measured
for ours (default config) and ModernBERT (default, and with its sparse head) on bench_encoder_cpu's padded batches, at
that benchmark's size and at `mlm_small`'s (hidden 256, 4 layers, MLP 512, vocabulary 16,384). A profile of the
steps at each size splits the time by op: matrix multiplications, the attention kernel, and everything else.

    python benchmarks/ceiling_cpu.py --output benchmarks/results/encoder_ceiling_cpu.json
"""

import argparse
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.bench_encoder_cpu import (  # noqa: E402
    OURS,
    build_parser,
    make_batches,
    take_turns,
    training_flops,
    training_models,
    training_step,
)
from benchmarks.common import write_result  # noqa: E402

SIZES = {
    "bench_encoder_cpu": {},
    "mlm_small": {"intermediate_size": 512, "vocab_size": 16384},
}
MODELS = (OURS, "transformers ModernBertForMaskedLM", "transformers ModernBertForMaskedLM (sparse_prediction=True)")
MATMUL_OPS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::addmv", "aten::mv"}
ATTENTION_OPS = ("aten::_scaled_dot_product", "aten::_flash_attention", "aten::_efficient_attention")


def gemm_flops(size: int, repeats: int) -> float:
    """FLOP/s of a `size` x `size` fp32 matrix product, the median of `repeats`."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * size**3 / statistics.median(times)


def op_category(name: str) -> str:
    if name in MATMUL_OPS:
        return "matmul"
    if name.startswith(ATTENTION_OPS):
        return "attention kernel (sdpa)"
    return "other"


def profile_steps(model: torch.nn.Module, batches: list[dict]) -> dict:
    """Self CPU time of each op over the batches' training steps: the share of matrix multiplications, of the
    attention kernel and of the rest, and the ops that take the most."""
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        for batch in batches:
            training_step(model, batch["padded"])
    by_op = {event.key: event.self_cpu_time_total for event in profiler.key_averages()}
    total = sum(by_op.values())
    categories = defaultdict(float)
    for name, micros in by_op.items():
        categories[op_category(name)] += micros / total
    top = sorted(by_op.items(), key=lambda item: -item[1])[:15]
    return {
        "share": dict(categories),
        "top_ops": [{"op": name, "share": micros / total, "category": op_category(name)} for name, micros in top],
    }


def measure_size(args: argparse.Namespace, gemm: float) -> dict:
    batches = make_batches(args, args.steps, args.batch_size, (args.min_length, args.max_length), args.mask_rate)
    models = {name: entry for name, entry in training_models(args).items() if name in MODELS}
    for model, _ in models.values():
        model.train()
        model.optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    throughput = take_turns(models, batches, training_step, args)
    tokens_per_step = sum(batch["tokens"] for batch in batches) / len(batches)
    results = {}
    for name, (model, _) in models.items():
        tokens_per_second = statistics.median(throughput[name])
        flops_per_step = statistics.mean(
            training_flops(args, batch, model.config.local_attention) for batch in batches
        )
        flops = flops_per_step * tokens_per_second / tokens_per_step
        results[name] = {
            "tokens_per_second": tokens_per_second,
            "model_flops_per_second": flops,
            "fraction_of_gemm": flops / gemm,
            "profile": profile_steps(model, batches[: args.profile_steps]),
        }
        matmul = results[name]["profile"]["share"]["matmul"]
        print(
            f"{name:<62} {flops / 1e9:6.1f} GFLOP/s, {flops / gemm:6.1%} of the GEMM; matmul {matmul:.0%} of the time"
        )
    return results


def main(argv: list[str] | None = None) -> None:
    parser = build_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--gemm-size", type=int, default=4096)
    parser.add_argument("--profile-steps", type=int, default=2, help="training steps profiled per model and size")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    gemm = gemm_flops(args.gemm_size, repeats=5)
    print(f"fp32 GEMM {args.gemm_size}^2 on {args.threads} threads: {gemm / 1e9:.1f} GFLOP/s", flush=True)
    figures = {"gemm_flops_per_second": gemm, "sizes": {}}
    for size, overrides in SIZES.items():
        print(f"\n{size}: {overrides or 'the benchmark size'}", flush=True)
        sized = argparse.Namespace(**{**vars(args), **overrides})
        figures["sizes"][size] = {"settings": overrides, "models": measure_size(sized, gemm)}
    figures["gemm_flops_per_second_at_the_end"] = gemm_flops(args.gemm_size, repeats=5)  # the machine's drift
    if args.output:
        settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "output"}
        write_result(args.output, "training-step model FLOPs over the CPU's fp32 GEMM throughput", settings, figures)


if __name__ == "__main__":
    main()
