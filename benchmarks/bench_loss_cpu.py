"""The masked-LM loss at large vocabularies on a CPU: the decoder and transformers' cross-entropy (`F.linear` then
`ForMaskedLMLoss`, what the heads run today) against `linear_cross_entropy` (hf_encoders/modeling_encoder.py), which
never holds the (rows x vocabulary) logits, at several chunk sizes.

Loss (`--tables loss`): forward and backward of decoder + loss alone, on the labelled rows of a batch (what the sparse
head feeds them: 16 sequences x 256 tokens x 30% masked is about 1,228 rows), at vocabularies of 16,384 (`mlm_small`)
and 50,368 (ModernBERT's), hidden sizes 256 and 768; the variants take turns, medians of `--rounds`. Peak memory is
measured once per variant, outside the timed rounds, with `torch.profiler`'s memory timeline: the most bytes held by
tensors during the step, above what was held before it (the gradients of the weight and the hidden states included).

Training step (`--tables step`): a whole `EncoderForMaskedLM` training step (forward, backward, AdamW) at `mlm_small`'s
dimensions on padded batches as in bench_encoder_cpu.py: the model as it trains by default (`linear_cross_entropy`,
chunks of `LOSS_CHUNK_ROWS`, no logits) against the same model called with `skip_logits=False` (the decoder's logits
on the labelled rows, then transformers' loss).

    python benchmarks/bench_loss_cpu.py --output benchmarks/results/loss_cpu.json
"""

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from torch.nn import functional as F
from torch.profiler import ProfilerActivity, profile
from torch.profiler._memory_profiler import MemoryProfileTimeline
from transformers.loss.loss_utils import ForMaskedLMLoss

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.bench_encoder_cpu import SPECIAL, make_batches, take_turns, training_step  # noqa: E402
from benchmarks.common import write_result  # noqa: E402
from hf_encoders import EncoderConfig, EncoderForMaskedLM  # noqa: E402
from hf_encoders.modeling_encoder import LOSS_CHUNK_ROWS, linear_cross_entropy  # noqa: E402

MIB = 2**20
LossFunction = Callable[..., torch.Tensor]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tables", nargs="+", choices=["loss", "step"], default=["loss", "step"])
    parser.add_argument("--vocab-sizes", type=int, nargs="+", default=[16384, 50368])
    parser.add_argument("--hidden-sizes", type=int, nargs="+", default=[256, 768])
    parser.add_argument("--rows", type=int, nargs="+", default=[1228, 4912], help="labelled rows fed to the loss")
    parser.add_argument("--chunk-sizes", type=int, nargs="+", default=[256, 512, 1024, 2048])
    parser.add_argument("--rounds", type=int, default=5, help="variants take turns this many times")
    parser.add_argument("--min-seconds", type=float, default=0.5, help="each timed sample repeats the step this long")
    parser.add_argument("--model-hidden-size", type=int, default=256, help="the training step's model")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--intermediate-size", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--min-length", type=int, default=128)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--mask-rate", type=float, default=0.3)
    parser.add_argument("--steps", type=int, default=8, help="training steps (batches) per model and round")
    parser.add_argument("--step-rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, help="write the figures as JSON here")
    return parser


def full_loss(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return ForMaskedLMLoss(F.linear(hidden, weight, bias), labels, weight.shape[0])


def loss_step(loss: LossFunction, leaves: tuple[torch.Tensor, ...], labels: torch.Tensor) -> None:
    loss(*leaves, labels).backward()
    for leaf in leaves:
        leaf.grad = None


def peak_memory(step: Callable[[], None]) -> float:
    """MiB held by tensors at the step's peak, above what was held when it began (torch.profiler's memory timeline)."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        step()
    _, sizes = MemoryProfileTimeline(prof._memory_profile())._coalesce_timeline("cpu")
    totals = [sum(size) for size in sizes]
    return (max(totals) - totals[0]) / MIB


def time_in_turns(steps: dict[str, Callable[[], None]], args: argparse.Namespace) -> dict[str, list[float]]:
    """Seconds per call of each step in each round, the steps taking turns; each sample repeats its step for about
    `args.min_seconds` (as often as the first step, timed once after a warm-up call of each, needs)."""
    for step in steps.values():
        step()
    start = time.perf_counter()
    next(iter(steps.values()))()
    repeats = max(1, round(args.min_seconds / (time.perf_counter() - start)))
    seconds: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            for _ in range(repeats):
                step()
            seconds[name].append((time.perf_counter() - start) / repeats)
    return seconds


def loss_case(vocab: int, hidden: int, rows: int, args: argparse.Namespace) -> dict:
    generator = torch.Generator().manual_seed(args.seed)
    states = torch.randn(rows, hidden, generator=generator).requires_grad_()
    weight = (torch.randn(vocab, hidden, generator=generator) * 0.02).requires_grad_()
    bias = torch.zeros(vocab).requires_grad_()
    labels = torch.randint(0, vocab, (rows,), generator=generator)
    losses: dict[str, LossFunction] = {"full": full_loss}
    losses |= {f"chunked {size}": partial(linear_cross_entropy, chunk_size=size) for size in args.chunk_sizes}
    steps = {name: partial(loss_step, loss, (states, weight, bias), labels) for name, loss in losses.items()}
    seconds = time_in_turns(steps, args)
    median = {name: statistics.median(values) for name, values in seconds.items()}
    return {
        "vocab_size": vocab,
        "hidden_size": hidden,
        "rows": rows,
        "logits_mib": rows * vocab * 4 / MIB,
        "milliseconds": {name: 1000 * value for name, value in median.items()},
        "milliseconds_per_round": {name: [1000 * value for value in values] for name, values in seconds.items()},
        "speedup_over_full": {name: median["full"] / value for name, value in median.items()},
        "peak_mib": {name: peak_memory(step) for name, step in steps.items()},
    }


def run_loss(args: argparse.Namespace) -> list[dict]:
    cases = []
    for vocab in args.vocab_sizes:
        for hidden in args.hidden_sizes:
            for rows in args.rows:
                cases.append(loss_case(vocab, hidden, rows, args))
                print_loss_case(cases[-1])
    return cases


def print_loss_case(case: dict) -> None:
    title = f"vocab {case['vocab_size']}, hidden {case['hidden_size']}, {case['rows']} rows"
    print(f"\n{title} (logits {case['logits_mib']:.0f} MiB)\n{'variant':<16} {'ms':>9} {'vs full':>8} {'peak MiB':>9}")
    for name, milliseconds in case["milliseconds"].items():
        speedup, peak = case["speedup_over_full"][name], case["peak_mib"][name]
        print(f"{name:<16} {milliseconds:9.1f} {speedup:7.2f}x {peak:9.0f}", flush=True)


def with_logits(model: EncoderForMaskedLM) -> EncoderForMaskedLM:
    """`model`, every forward called with `skip_logits=False`: the loss over the decoder's logits."""
    model.register_forward_pre_hook(
        lambda module, args, kwargs: (args, {**kwargs, "skip_logits": False}), with_kwargs=True
    )
    return model


def step_case(vocab: int, args: argparse.Namespace) -> dict:
    case = argparse.Namespace(**{**vars(args), "vocab_size": vocab, "rounds": args.step_rounds})
    batches = make_batches(case, args.steps, args.batch_size, (args.min_length, args.max_length), args.mask_rate)
    config = EncoderConfig(
        vocab_size=vocab,
        hidden_size=args.model_hidden_size,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        intermediate_size=args.intermediate_size,
        max_position_embeddings=512,
        **SPECIAL,
        mask_token_id=3,
    )
    torch.manual_seed(args.seed)
    full = with_logits(EncoderForMaskedLM(config).train())
    fused = EncoderForMaskedLM(config).train()
    fused.load_state_dict(full.state_dict())
    batch = batches[0]["padded"]
    assert fused(**batch).logits is None and full(**batch).logits is not None
    torch.testing.assert_close(fused(**batch).loss, full(**batch).loss, rtol=1e-4, atol=1e-4)
    models = {"full loss": (full, "padded"), f"linear_cross_entropy (chunk {LOSS_CHUNK_ROWS})": (fused, "padded")}
    for model, _ in models.values():
        model.optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    throughput = take_turns(models, batches, training_step, case)
    median = {name: statistics.median(values) for name, values in throughput.items()}
    labelled = sum(int((b["padded"]["labels"] != -100).sum()) for b in batches) / len(batches)
    print(f"\nvocab {vocab}: training step, real tokens/s (labelled rows per batch {labelled:.0f})")
    for name, value in median.items():
        print(f"{name:<40} {value:9.0f} {value / median['full loss']:6.3f}x", flush=True)
    return {
        "vocab_size": vocab,
        "labelled_rows_per_batch": labelled,
        "real_tokens_per_batch": sum(b["tokens"] for b in batches) / len(batches),
        "tokens_per_second": median,
        "tokens_per_second_per_round": throughput,
        "speedup_over_full": {name: value / median["full loss"] for name, value in median.items()},
    }


def run_step(args: argparse.Namespace) -> list[dict]:
    return [step_case(vocab, args) for vocab in args.vocab_sizes]


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    tables = {"loss": run_loss, "step": run_step}
    figures = {table: tables[table](args) for table in args.tables}
    if args.output:
        settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "output"}
        write_result(
            args.output, "masked-LM loss at large vocabularies: full logits against chunks", settings, figures
        )


if __name__ == "__main__":
    main()
