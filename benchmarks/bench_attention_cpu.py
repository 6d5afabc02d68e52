"""Attention alone on a CPU, on the padding-free batches the encoder unpads: which kernel wastes least on padding.

The encoder runs its projections, MLP and norms on the real tokens only. Attention kernels without a variable-length
mode saw the sequences re-padded into the batch's (sequences, longest) grid with a padding mask (`PackedBatch.pad`);
on batches of lengths drawn uniformly from 128-256 that grid holds about 1.5x the attention work the documents need.
Candidates, each from the packed (total, heads, head_dim) queries, keys and values back to packed outputs, forward and
backward (training) and forward alone (inference):

- `grid`: SDPA on the re-padded grid with the mask `transformers.masking_utils` builds for it (the path before);
- `buckets of N`: the sequences sorted by length and re-padded N at a time, each bucket to its own longest, SDPA each;
- `one by one`: SDPA on each sequence alone, no padding and no mask;
- `flex, document mask`: flex attention (compiled, as it must be) on the packed row with a block mask that keeps each
  token to its own document (where this torch has its CPU backward).

Every candidate's outputs (and in training its gradients) are checked against `grid`'s. Candidates take turns round
by round.

    python benchmarks/bench_attention_cpu.py --output benchmarks/results/attention_cpu.json
    python benchmarks/bench_attention_cpu.py --steps --rounds 5 --output benchmarks/results/attention_step_cpu.json

`--steps`: the whole model instead, ours as `bench_encoder_cpu.py` times it (training steps of `EncoderForMaskedLM`,
feature extraction with `EncoderModel`, on its padded batches and dimensions), SDPA on each sequence (the default)
against the re-padded grid, the two taking turns.
"""

import argparse
import copy
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import torch
from torch.nn.functional import scaled_dot_product_attention as sdpa
from transformers.masking_utils import create_bidirectional_mask

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import bench_encoder_cpu as encoder_bench  # noqa: E402
from benchmarks.common import write_result  # noqa: E402
from hf_encoders import EncoderConfig, EncoderForMaskedLM, EncoderModel, modeling_encoder  # noqa: E402
from hf_encoders.modeling_encoder import PackedBatch  # noqa: E402

Attention = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # packed q, k, v -> packed output


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--min-length", type=int, default=128)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--buckets", type=int, nargs="+", default=[2, 4, 8], help="sequences per bucket")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-flex", action="store_true", help="leave flex attention out")
    parser.add_argument("--steps", action="store_true", help="the whole model's steps instead (see above)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path)
    return parser.parse_args()


def packed_heads(tensor: torch.Tensor) -> torch.Tensor:
    """(total, heads, head_dim) -> (1, heads, total, head_dim)."""
    return tensor.transpose(0, 1)[None]


def grid(lengths: list[int]) -> Attention:
    layout = PackedBatch.from_cu_seq_lens(torch.tensor([0, *lengths]).cumsum(0), sum(lengths), max(lengths))
    mask = create_bidirectional_mask(EncoderConfig(attn_implementation="sdpa"), *layout.mask_arguments(torch.empty(0)))

    def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        q, k, v = (layout.pad(x[None]).transpose(1, 2) for x in (q, k, v))
        return layout.unpad(sdpa(q, k, v, attn_mask=mask).transpose(1, 2))[0]

    return attend


def buckets(lengths: list[int], size: int) -> Attention:
    """Sequences sorted by length, `size` at a time, each bucket re-padded to its own longest."""
    starts = torch.tensor([0, *lengths]).cumsum(0).tolist()
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    groups = [order[i : i + size] for i in range(0, len(order), size)]
    parts = []
    for group in groups:
        index = torch.cat([torch.arange(starts[i], starts[i] + lengths[i]) for i in group])
        inner = [lengths[i] for i in group]
        parts.append((index, grid(inner) if len(set(inner)) > 1 else None, len(group), inner[0]))
    inverse = torch.cat([index for index, *_ in parts]).argsort()

    def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        outputs = []
        for index, run, count, length in parts:
            picked = [x.index_select(0, index) for x in (q, k, v)]
            if run is not None:
                outputs.append(run(*picked))
            else:  # every sequence of the bucket has one length: no padding, no mask
                shaped = [x.view(count, length, *x.shape[1:]).transpose(1, 2) for x in picked]
                outputs.append(sdpa(*shaped).transpose(1, 2).reshape(-1, *q.shape[1:]))
        return torch.cat(outputs).index_select(0, inverse)

    return attend


def one_by_one(lengths: list[int]) -> Attention:
    def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        pieces = zip(*(x.split(lengths) for x in (q, k, v)), strict=True)
        return torch.cat([sdpa(*map(packed_heads, piece))[0].transpose(0, 1) for piece in pieces])

    return attend


def flex(lengths: list[int], compiled: Callable) -> Attention:
    from torch.nn.attention.flex_attention import create_block_mask

    document = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
    total = len(document)
    block_mask = create_block_mask(
        lambda b, h, q_idx, kv_idx: document[q_idx] == document[kv_idx], None, None, total, total, device="cpu"
    )

    def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return compiled(*map(packed_heads, (q, k, v)), block_mask=block_mask)[0].transpose(0, 1)

    return attend


def candidates(args: argparse.Namespace, lengths: list[int], compiled_flex: Callable | None) -> dict[str, Attention]:
    found = {"grid (today)": grid(lengths)}
    found |= {f"buckets of {size}": buckets(lengths, size) for size in args.buckets}
    found["one by one"] = one_by_one(lengths)
    if compiled_flex is not None:
        found["flex, document mask"] = flex(lengths, compiled_flex)
    return found


def step(attend: Attention, inputs: tuple[torch.Tensor, ...], grad: torch.Tensor | None) -> torch.Tensor:
    if grad is None:
        with torch.no_grad():
            return attend(*(tensor.detach() for tensor in inputs))
    output = attend(*inputs)
    output.backward(grad)
    return output


def results(attend: Attention, inputs: tuple[torch.Tensor, ...], grad: torch.Tensor | None) -> list[torch.Tensor]:
    """The output, and in training the gradients of the queries, keys and values."""
    for tensor in inputs:
        tensor.grad = None
    output = step(attend, inputs, grad).detach()
    return [output] if grad is None else [output, *(tensor.grad for tensor in inputs)]


def flex_refusal(compiled_flex: Callable) -> str | None:
    """What this torch says when flex attention's backward is asked for on the CPU; None if it runs."""
    query = torch.randn(1, 1, 128, 8, requires_grad=True)
    try:
        compiled_flex(query, query, query).sum().backward()
    except NotImplementedError as error:
        return str(error)
    return None


def measure(mode: str, batches: list, methods: list[dict[str, Attention]], rounds: int) -> dict[str, dict]:
    """Each candidate's real tokens per second (median over rounds, candidates taking turns), its speed-up over the
    grid and its largest difference from the grid's outputs and gradients."""
    seconds: dict[str, list[float]] = {name: [] for name in methods[0]}
    differences = dict.fromkeys(methods[0], 0.0)
    for (_, inputs, grad), found in zip(batches, methods, strict=True):  # warm-up (flex compiles) and check
        grad = grad if mode == "training" else None
        reference = results(found["grid (today)"], inputs, grad)
        for name, attend in found.items():
            got = results(attend, inputs, grad)
            gap = max(float((a - b).abs().max()) for a, b in zip(got, reference, strict=True))
            differences[name] = max(differences[name], gap)
    for round_index in range(rounds):
        for name in seconds:
            start = time.perf_counter()
            for (_, inputs, grad), found in zip(batches, methods, strict=True):
                step(found[name], inputs, grad if mode == "training" else None)
            seconds[name].append(time.perf_counter() - start)
        print(f"{mode} round {round_index + 1}: " + ", ".join(f"{n} {s[-1]:.3f} s" for n, s in seconds.items()))
    tokens = sum(len(grad) for *_, grad in batches)
    median = {name: statistics.median(values) for name, values in seconds.items()}
    figures = {
        name: {
            "tokens_per_s": round(tokens / median[name]),
            "speedup_over_grid": round(median["grid (today)"] / median[name], 3),
            "seconds_per_round": [round(s, 4) for s in values],
            "max_abs_diff_vs_grid": differences[name],
        }
        for name, values in seconds.items()
    }
    for name, row in figures.items():
        print(f"{mode:<10} {name:<22} {row['tokens_per_s']:>9} tokens/s  {row['speedup_over_grid']:.2f}x grid")
    return figures


def random_batches(args: argparse.Namespace) -> list[tuple[list[int], tuple[torch.Tensor, ...], torch.Tensor]]:
    """(lengths, packed queries keys and values, the output's gradient) of each batch."""
    generator = torch.Generator().manual_seed(args.seed)
    batches = []
    for _ in range(args.batches):
        lengths = torch.randint(args.min_length, args.max_length + 1, (args.batch_size,), generator=generator).tolist()
        shape = (sum(lengths), args.heads, args.head_dim)
        inputs = tuple(torch.randn(shape, generator=generator).requires_grad_() for _ in range(3))
        batches.append((lengths, inputs, torch.randn(shape, generator=generator)))
    return batches


def whole_steps(threads: int, rounds: int) -> dict[str, dict]:
    """Ours in `bench_encoder_cpu.py`'s training and feature-extraction tables (its defaults), attention on each
    sequence against the grid: tokens/s medians over its rounds, the two models taking turns."""
    args = encoder_bench.build_parser().parse_args(["--threads", str(threads), "--rounds", str(rounds)])
    config = EncoderConfig(**encoder_bench.dimensions(args), **encoder_bench.SPECIAL, mask_token_id=encoder_bench.MASK)
    training = encoder_bench.make_batches(
        args, args.steps, args.batch_size, (args.min_length, args.max_length), args.mask_rate
    )
    span = (args.inference_min_length, args.inference_max_length)
    inference = encoder_bench.make_batches(args, args.steps, args.inference_batch_size, span, 0.0)
    for batch in inference:
        del batch["padded"]["labels"]
    torch.manual_seed(args.seed)
    return {
        "training": each_against_grid(args, EncoderForMaskedLM(config), training, encoder_bench.training_step),
        "feature extraction": each_against_grid(
            args, EncoderModel(config).eval(), inference, encoder_bench.inference_step
        ),
    }


def each_against_grid(args: argparse.Namespace, each: torch.nn.Module, batches: list[dict], step: Callable) -> dict:
    grid = copy.deepcopy(each)
    for model in (each, grid):
        model.optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def timed_step(model: torch.nn.Module, batch: dict) -> None:
        at_least = 2**62 if model is grid else modeling_encoder.EACH_SEQUENCE_MIN_MEAN_TOKENS
        with mock.patch.object(modeling_encoder, "EACH_SEQUENCE_MIN_MEAN_TOKENS", at_least):
            step(model, batch)

    models = {"each sequence (now)": (each, "padded"), "re-padded grid (before)": (grid, "padded")}
    throughput = encoder_bench.take_turns(models, batches, timed_step, args)
    median = {name: statistics.median(values) for name, values in throughput.items()}
    ratio = median["each sequence (now)"] / median["re-padded grid (before)"]
    print(f"{', '.join(f'{n} {v:.0f}' for n, v in median.items())} tokens/s: {ratio:.3f}x")
    return {"tokens_per_s": median, "tokens_per_s_per_round": throughput, "speedup": ratio}


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    if args.steps:
        settings = vars(args) | {"output": str(args.output)}
        return write_result(args.output, "attention_steps_cpu", settings, whole_steps(args.threads, args.rounds))
    batches = random_batches(args)
    compiled_flex, figures = None, {}
    if not args.no_flex:
        from torch.nn.attention.flex_attention import flex_attention

        compiled_flex = torch.compile(flex_attention, dynamic=True)
        figures["flex_backward_on_cpu"] = flex_refusal(compiled_flex) or "runs"
    refused = figures.get("flex_backward_on_cpu", "runs") != "runs"
    for mode in ("training", "inference"):
        flex_here = None if mode == "training" and refused else compiled_flex
        methods = [candidates(args, lengths, flex_here) for lengths, *_ in batches]
        figures[mode] = measure(mode, batches, methods, args.rounds)
    grid_work = sum(len(lengths) * max(lengths) ** 2 for lengths, *_ in batches)
    needed_work = sum(length * length for lengths, *_ in batches for length in lengths)
    figures["grid_over_needed_attention_work"] = grid_work / needed_work
    if args.output:
        write_result(args.output, "attention_cpu", vars(args) | {"output": str(args.output)}, figures)


if __name__ == "__main__":
    main()
