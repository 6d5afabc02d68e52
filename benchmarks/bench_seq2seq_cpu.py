"""Encoder-decoder speed of Seq2SeqForConditionalGeneration beside transformers' BartForConditionalGeneration and
MarianMTModel of the same dimensions, in one process, on the same data:

- training steps (forward, backward, AdamW) on padded source/target batches, in real (non-padding) tokens/s;
- generation throughput in sentences/s, greedy and beam search, every model made to write exactly
  `--new-tokens` tokens (min = max), so that all do the same amount of decoding.

Ours trains on padding-free batches (sources packed in one row, targets in another) with sparse prediction (the LM
head only on labelled target positions), and on the padded batches the others get (as `DataCollatorForSeq2Seq`
makes them: labels padded with -100, no decoder mask), which it unpads inside; by default with a plain GELU MLP, so
that its FLOPs per token equal BART's and Marian's; `--activation geglu` measures the gated MLP that the translation configs use (1.5x the MLP
FLOPs). BART and Marian get the same pairs as padded batches, as their collators give them. `--ours-layers 6 1`
gives ours a deep encoder and a one-layer decoder (about the parameters of 3 + 3), the others keep theirs.

`--compile` times generation as transformers compiles it: static caches for every model alike, each greedy decoding
step compiled whole by torch.compile (inductor; transformers' beam search runs its steps eagerly on the static
caches); sources are then padded to `--max-length` so that one compilation serves every batch, and the compilation
happens (and is timed, and its graphs counted) in the warm-up.

Beside the throughput, each model's eager `generate` is timed once more per mode with hooks that split a step:
the model's forward (its decoder layers, its LM head, the rest of it: embeddings, masks, positions) and what
`generate` does around it (inputs, logits processors, the choice of tokens, stopping), in milliseconds per step.

    python benchmarks/bench_seq2seq_cpu.py --output benchmarks/results/seq2seq_cpu.json
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers import BartConfig, BartForConditionalGeneration, CompileConfig, MarianConfig, MarianMTModel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import write_result  # noqa: E402
from hf_encoders import Seq2SeqConfig, Seq2SeqForConditionalGeneration  # noqa: E402

PAD, BOS, EOS = 0, 1, 2


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument("--encoder-layers", type=int, default=3)
    parser.add_argument("--decoder-layers", type=int, default=3)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--intermediate-size", type=int, default=1024)
    parser.add_argument("--vocab-size", type=int, default=8000)
    parser.add_argument("--activation", choices=["gelu", "geglu"], default="gelu", help="our MLP")
    parser.add_argument(
        "--ours-layers",
        type=int,
        nargs=2,
        metavar=("ENCODER", "DECODER"),
        help="our encoder and decoder depth, when it should differ from the others' (e.g. 6 1: a "
        "deep encoder and shallow decoder with about the parameters of 3 + 3)",
    )
    parser.add_argument("--min-length", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=30)
    parser.add_argument("--train-batch-size", type=int, default=64)
    parser.add_argument("--train-steps", type=int, default=6, help="timed training steps per model and round")
    parser.add_argument("--generate-batch-size", type=int, default=32)
    parser.add_argument("--generate-batches", type=int, default=2, help="timed generate calls per model, round, mode")
    parser.add_argument("--new-tokens", type=int, default=40)
    parser.add_argument("--beams", type=int, nargs="*", default=[1, 4], help="none: training steps only")
    parser.add_argument("--compile", action="store_true", help="static caches and compiled decoding steps")
    parser.add_argument("--compile-backend", default="inductor", help="torch.compile backend for --compile")
    parser.add_argument("--rounds", type=int, default=3, help="models take turns this many times")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, help="write the figures as JSON here")
    return parser.parse_args()


def random_batch(args: argparse.Namespace, batch_size: int, generator: torch.Generator):
    """Right-padded ids ending in EOS, with lengths drawn from [min_length, max_length]."""
    lengths = torch.randint(args.min_length, args.max_length + 1, (batch_size,), generator=generator)
    ids = torch.randint(3, args.vocab_size, (batch_size, int(lengths.max())), generator=generator)
    positions = torch.arange(ids.shape[1])
    ids[positions == (lengths - 1)[:, None]] = EOS
    mask = (positions < lengths[:, None]).long()
    return ids.masked_fill(mask == 0, PAD), mask


def pack(ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One row of the real tokens, and positions restarting with each sequence."""
    lengths = mask.sum(1).tolist()
    flat = torch.cat([row[:n] for row, n in zip(ids, lengths, strict=True)])[None]
    return flat, torch.cat([torch.arange(n) for n in lengths])[None]


def make_data(args: argparse.Namespace) -> tuple[list[dict], list[dict]]:
    generator = torch.Generator().manual_seed(args.seed)
    train = []
    for _ in range(args.train_steps + 1):
        src, src_mask = random_batch(args, args.train_batch_size, generator)
        tgt, tgt_mask = random_batch(args, args.train_batch_size, generator)
        labels = tgt.masked_fill(tgt_mask == 0, -100)
        (src_flat, src_positions), (tgt_flat, tgt_positions) = pack(src, src_mask), pack(tgt, tgt_mask)
        train.append(
            {
                "tokens": int(src_mask.sum() + tgt_mask.sum()),
                "padded": {"input_ids": src, "attention_mask": src_mask, "labels": labels},
                "packed": {
                    "input_ids": src_flat,
                    "position_ids": src_positions,
                    "labels": tgt_flat,
                    "decoder_position_ids": tgt_positions,
                },
            }
        )
    generation = []
    for _ in range(args.generate_batches):
        src, src_mask = random_batch(args, args.generate_batch_size, generator)
        if args.compile:  # one source width: one compiled decoding step (the cross-attention cache has its size)
            width = (0, args.max_length - src.shape[1])
            src, src_mask = torch.nn.functional.pad(src, width, value=PAD), torch.nn.functional.pad(src_mask, width)
        generation.append({"input_ids": src, "attention_mask": src_mask})
    return train, generation


def build_models(args: argparse.Namespace) -> dict[str, tuple[torch.nn.Module, str]]:
    dims = dict(vocab_size=args.vocab_size, max_position_embeddings=128, pad_token_id=PAD, eos_token_id=EOS)
    encoder_layers, decoder_layers = args.ours_layers or (args.encoder_layers, args.decoder_layers)
    ours = Seq2SeqConfig(
        **dims,
        hidden_size=args.hidden_size,
        num_hidden_layers=encoder_layers,
        num_decoder_layers=decoder_layers,
        num_attention_heads=args.heads,
        intermediate_size=args.intermediate_size,
        hidden_activation=args.activation,
        bos_token_id=BOS,
        decoder_start_token_id=BOS,
        sparse_prediction=True,
        attn_implementation="sdpa",
    )
    theirs = dict(
        **dims,
        d_model=args.hidden_size,
        encoder_layers=args.encoder_layers,
        decoder_layers=args.decoder_layers,
        encoder_attention_heads=args.heads,
        decoder_attention_heads=args.heads,
        encoder_ffn_dim=args.intermediate_size,
        decoder_ffn_dim=args.intermediate_size,
        bos_token_id=BOS,
        decoder_start_token_id=BOS,
        forced_eos_token_id=None,
        dropout=0.0,
        attn_implementation="sdpa",
    )
    # name -> (model, training batch layout); all share width, depth, heads, FFN size and vocabulary
    name = f"hf_encoders Seq2SeqForConditionalGeneration ({args.activation}"
    name += f", {encoder_layers}+{decoder_layers} layers)" if args.ours_layers else ")"
    models = {name: (Seq2SeqForConditionalGeneration(ours), "packed")}
    if not args.compile:  # (compiled, only generation is timed otherwise, and ours generates alike from either batch)
        padded = Seq2SeqForConditionalGeneration(ours)
        models["hf_encoders Seq2SeqForConditionalGeneration (padded batches)"] = (padded, "padded")
    models["transformers BartForConditionalGeneration"] = (
        BartForConditionalGeneration(BartConfig(**theirs)),
        "padded",
    )
    models["transformers MarianMTModel"] = (MarianMTModel(MarianConfig(**theirs)), "padded")
    return models


def train_seconds(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batches: list[dict], layout: str) -> float:
    seconds = 0.0
    for batch in batches:
        start = time.perf_counter()
        model(**batch[layout]).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        seconds += time.perf_counter() - start
    return seconds


def compiled_generation(backend: str) -> dict:
    """What `generate` needs to compile its decoding steps on a CPU too (it does so on GPUs by itself)."""
    config = CompileConfig(fullgraph=True, backend=backend)
    config._compile_all_devices = True
    return {"cache_implementation": "static", "compile_config": config}


@torch.no_grad()
def generate_seconds(
    model: torch.nn.Module, batches: list[dict], beams: int, new_tokens: int, compile_backend: str | None = None
) -> float:
    """Seconds to generate for `batches`; with a `compile_backend`, from static caches with compiled steps."""
    seconds = 0.0
    options = compiled_generation(compile_backend) if compile_backend else {}
    for batch in batches:
        start = time.perf_counter()
        out = model.generate(
            **batch, num_beams=beams, do_sample=False, max_new_tokens=new_tokens, min_new_tokens=new_tokens, **options
        )
        seconds += time.perf_counter() - start
        assert out.shape[1] == new_tokens + 1, out.shape
    return seconds


class StepTimer:
    """Wall time spent inside modules while it is entered, summed per part: forward hooks on the model, its decoder
    layers (time in the first layer's call to the last's return) and its output projection."""

    def __init__(self, model: torch.nn.Module):
        self.parts = {"forward": [model], "decoder layers": list(model.get_decoder().layers)}
        self.parts["LM head"] = [model.get_output_embeddings()]
        self.seconds = dict.fromkeys(self.parts, 0.0)
        self.started: dict[str, float] = {}

    def __enter__(self) -> "StepTimer":
        self.handles = []
        for part, modules in self.parts.items():
            self.handles.append(modules[0].register_forward_pre_hook(lambda *_, p=part: self.start(p)))
            self.handles.append(modules[-1].register_forward_hook(lambda *_, p=part: self.stop(p)))
        return self

    def start(self, part: str) -> None:
        self.started[part] = time.perf_counter()

    def stop(self, part: str) -> None:
        self.seconds[part] += time.perf_counter() - self.started.pop(part)

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()


@torch.no_grad()
def step_breakdown(model: torch.nn.Module, batch: dict, beams: int, new_tokens: int) -> dict[str, float]:
    """Milliseconds per decoding step of one `generate` call (the encoder's one run included in "generate's own")."""
    timer = StepTimer(model)
    with timer:
        seconds = generate_seconds(model, [batch], beams, new_tokens)
    steps = 1000 / new_tokens
    forward = timer.seconds["forward"]
    layers, head = timer.seconds["decoder layers"], timer.seconds["LM head"]
    return {
        "step": seconds * steps,
        "decoder layers": layers * steps,
        "LM head": head * steps,
        "rest of the forward": (forward - layers - head) * steps,
        "generate's own": (seconds - forward) * steps,
    }


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    train, generation = make_data(args)
    models = build_models(args)
    optimizers = {name: torch.optim.AdamW(model.parameters(), lr=1e-4) for name, (model, _) in models.items()}
    backend = args.compile_backend if args.compile else None
    if args.compile:  # compile in this process: a pool of compile workers would go on using the cores being timed
        torch._inductor.config.compile_threads = 1
    compile_seconds, compiled_graphs = {}, {}
    for name, (model, layout) in models.items():  # warm-up (and compilation)
        model.train()
        train_seconds(model, optimizers[name], train[:1], layout)
        model.eval()
        graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        compile_seconds[name] = sum(
            generate_seconds(model, generation[:1], beams, args.new_tokens, backend) for beams in args.beams
        )
        compiled_graphs[name] = torch._dynamo.utils.counters["stats"]["unique_graphs"] - graphs

    tokens = sum(batch["tokens"] for batch in train[1:])
    sentences = sum(batch["input_ids"].shape[0] for batch in generation)
    modes = ["train tokens/s"] + [f"generate sentences/s (beams={b})" for b in args.beams]
    figures = {mode: {name: [] for name in models} for mode in modes}
    for round_index in range(args.rounds):  # take turns, so that drift of the machine hits every model alike
        for name, (model, layout) in models.items():
            model.train()
            figures[modes[0]][name].append(tokens / train_seconds(model, optimizers[name], train[1:], layout))
            model.eval()
            for mode, beams in zip(modes[1:], args.beams, strict=True):
                seconds = generate_seconds(model, generation, beams, args.new_tokens, backend)
                figures[mode][name].append(sentences / seconds)
            summary = "  ".join(f"{mode}: {figures[mode][name][-1]:7.1f}" for mode in modes)
            print(f"round {round_index + 1}/{args.rounds}  {name:<58} {summary}", flush=True)

    breakdown = {}  # after the timed rounds (hooks cost a little); eagerly only (a compiled step is one graph)
    for mode, beams in zip(modes[1:], args.beams, strict=True) if not args.compile else ():
        breakdown[mode] = {
            name: step_breakdown(model, generation[0], beams, args.new_tokens) for name, (model, _) in models.items()
        }
        print(f"\n{mode}: milliseconds per decoding step")
        for name, parts in breakdown[mode].items():
            print(f"{name:<58} " + "  ".join(f"{part} {value:6.2f}" for part, value in parts.items()))

    ours = next(iter(models))
    median = {
        mode: {name: statistics.median(v) for name, v in per_model.items()} for mode, per_model in figures.items()
    }
    for mode in modes:
        print(f"\n{mode:<72} {'':>10} ours is")
        for name, value in median[mode].items():
            print(f"{name:<72} {value:10.1f} {median[mode][ours] / value:6.2f}x")
    if args.output:
        write_result(
            args.output,
            "encoder-decoder training step (forward, backward, AdamW) and generation",
            {k: v for k, v in vars(args).items() if k != "output"},
            {
                "parameters": {name: sum(p.numel() for p in m.parameters()) for name, (m, _) in models.items()},
                "median": median,
                "warm_up_generation_seconds": compile_seconds,  # with --compile: mostly compilation
                "compiled_graphs": compiled_graphs,
                "per_round": figures,
                "milliseconds_per_step": breakdown,
                "speedup_of_ours": {
                    mode: {name: median[mode][ours] / value for name, value in per_model.items()}
                    for mode, per_model in median.items()
                },
            },
        )


if __name__ == "__main__":
    main()
