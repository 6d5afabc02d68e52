"""GPU training throughput, peak memory and MFU: EncoderForMaskedLM beside transformers' ModernBertForMaskedLM and
BertForMaskedLM at ModernBERT-base dimensions, and Seq2SeqForConditionalGeneration beside BartForConditionalGeneration
of BART-base size, on the same variable-length batches, bf16 autocast and AdamW, each eager and in `torch.compile`.

Batches are documents of random lengths (seeded, uniform in [min, max] tokens). Ours reads them packed into one row
(padding-free, sparse masked-LM prediction) and padded as the anchors do (unpadded inside); the anchors read them
padded with an attention mask, with their best attention backend there (flash-attention 2 where the `flash_attn`
package is installed, else SDPA; `--attention` names another), ModernBERT with its own sparse prediction. Compiled,
every model is `torch.compile(model)`, as its users compile it. Tokens/s counts real tokens; MFU counts model FLOPs
(`benchmarks/flops.py`: the formula, written out; BERT's attention is global in every layer) over the device's dense
bf16 peak; the step has no host syncs.

The models run one after the other, each alone on the device: its warm-up steps (compilation happens there), then
`--rounds` passes over the batches (the median is reported), its peak memory over those passes, and the graphs
dynamo compiled in warm-up and while timed (a recompilation for a new batch length shows there). A model that fails
(out of memory, say) is recorded with its error and the others go on; with `--time-budget`, a model is started only
while the time left exceeds what the slowest of its kind (eager or compiled) took, and the others are recorded as
skipped. The JSON is rewritten after every model, so that a run cut short keeps what it measured.

    python benchmarks/bench_gpu.py --output benchmarks/results/gpu_h100.json     # on an H100 / H200
    python benchmarks/bench_gpu.py --dry-run                                      # tiny models, on a CPU
"""

import argparse
import functools
import importlib.metadata
import importlib.util
import json
import platform
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import transformers
from transformers import (
    BartConfig,
    BartForConditionalGeneration,
    BertConfig,
    BertForMaskedLM,
    ModernBertConfig,
    ModernBertForMaskedLM,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.bench_encoder_cpu import (  # noqa: E402  (the ids its batches use)
    CLS,
    MASK,
    PAD,
    SEP,
    training_flops,  # noqa: E402
)
from benchmarks.bench_encoder_cpu import make_batches as make_encoder_batches  # noqa: E402
from benchmarks.bench_seq2seq_cpu import pack  # noqa: E402
from benchmarks.bench_seq2seq_cpu import random_batch as random_pair_side  # noqa: E402
from benchmarks.common import device_name, write_result  # noqa: E402
from benchmarks.flops import mfu, peak_bf16_flops, seq2seq_forward_flops  # noqa: E402
from hf_encoders import (  # noqa: E402
    EncoderConfig,
    EncoderForMaskedLM,
    Seq2SeqConfig,
    Seq2SeqForConditionalGeneration,
    __version__,
)

TINY = {
    "hidden_size": 64,
    "layers": 2,
    "heads": 2,
    "intermediate_size": 96,
    "vocab_size": 256,
    "batch_size": 4,
    "min_length": 8,
    "max_length": 32,
    "steps": 2,
    "warmup": 1,
    "rounds": 1,
    "s2s_hidden_size": 64,
    "s2s_layers": 1,
    "s2s_intermediate_size": 128,
    "s2s_vocab_size": 256,
    "s2s_batch_size": 4,
    "s2s_max_source": 24,
    "s2s_max_target": 12,
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden-size", type=int, default=768)
    parser.add_argument("--layers", type=int, default=22)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--intermediate-size", type=int, default=1152, help="GLU size (BERT gets 1.5x, FLOP-equal)")
    parser.add_argument("--vocab-size", type=int, default=50368)
    parser.add_argument("--local-window", type=int, default=128, help="every 3rd layer global, as ModernBERT")
    parser.add_argument("--batch-size", type=int, default=64, help="documents per step")
    parser.add_argument("--min-length", type=int, default=128)
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--mask-rate", type=float, default=0.3)
    parser.add_argument("--s2s-hidden-size", type=int, default=768)
    parser.add_argument("--s2s-layers", type=int, default=6, help="encoder and decoder layers each")
    parser.add_argument("--s2s-intermediate-size", type=int, default=3072)
    parser.add_argument("--s2s-vocab-size", type=int, default=50265)
    parser.add_argument("--s2s-batch-size", type=int, default=64)
    parser.add_argument("--s2s-max-source", type=int, default=512)
    parser.add_argument("--s2s-max-target", type=int, default=128)
    parser.add_argument("--compile", choices=["off", "on", "both"], default="both")
    parser.add_argument(
        "--compile-backend", default="inductor", help="aot_eager: the graphs without inductor's builds"
    )
    parser.add_argument(
        "--attention", help="every model's attention (default: flash_attention_2 if installed, else sdpa)"
    )
    parser.add_argument("--time-budget", type=float, help="seconds: models that would not fit are skipped")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per model and round")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (compilation happens here)")
    parser.add_argument("--rounds", type=int, default=3, help="timed passes over the batches per model")
    parser.add_argument("--only", choices=["encoder", "seq2seq", "both"], default="both")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dry-run", action="store_true", help="tiny models on whatever device there is")
    parser.add_argument("--output", type=Path, help="write the figures as JSON here")
    args = parser.parse_args(argv)
    if args.dry_run:
        for key, value in TINY.items():
            setattr(args, key, value)
    return args


def on_device(batch: dict, device: str) -> dict:
    return {key: value.to(device) for key, value in batch.items()}


def encoder_batches(args: argparse.Namespace, device: str) -> list[dict]:
    """bench_encoder_cpu's batches (the same documents packed and padded) with their training FLOPs: with local
    attention in two of every three layers (ours, ModernBERT) and with global attention everywhere (BERT)."""
    batches = []
    lengths = (args.min_length, args.max_length)
    for batch in make_encoder_batches(args, args.steps, args.batch_size, lengths, args.mask_rate):
        batches.append(
            {
                "tokens": batch["tokens"],
                "flops": {
                    "local": training_flops(args, batch, args.local_window),
                    "global": training_flops(args, batch),
                },
                "packed": on_device(batch["packed"], device),
                "padded": on_device(batch["padded"], device),
            }
        )
    return batches


def seq2seq_batches(args: argparse.Namespace, device: str) -> list[dict]:
    """Pairs drawn as bench_seq2seq_cpu draws them (sources, targets), padded and packed, with their training FLOPs."""
    generator = torch.Generator().manual_seed(args.seed + 1)
    sides = [
        argparse.Namespace(min_length=max(longest // 8, 2), max_length=longest, vocab_size=args.s2s_vocab_size)
        for longest in (args.s2s_max_source, args.s2s_max_target)
    ]
    batches = []
    for _ in range(args.steps):
        (source, source_mask), (target, target_mask) = (
            random_pair_side(side, args.s2s_batch_size, generator) for side in sides
        )
        (source_flat, source_positions), (target_flat, target_positions) = (
            pack(source, source_mask),
            pack(target, target_mask),
        )
        source_sizes, target_sizes = source_mask.sum(1).tolist(), target_mask.sum(1).tolist()
        flops = 3 * seq2seq_forward_flops(
            source_sizes,
            target_sizes,
            args.s2s_hidden_size,
            args.s2s_layers,
            args.s2s_layers,
            args.s2s_intermediate_size,
            args.s2s_vocab_size,
        )
        padded = {
            "input_ids": source,
            "attention_mask": source_mask,
            "labels": target.masked_fill(target_mask == 0, -100),
        }
        packed = {
            "input_ids": source_flat,
            "position_ids": source_positions,
            "labels": target_flat,
            "decoder_position_ids": target_positions,
        }
        batches.append(
            {
                "tokens": sum(source_sizes) + sum(target_sizes),
                "flops": {"local": flops, "global": flops},
                "packed": on_device(packed, device),
                "padded": on_device(padded, device),
            }
        )
    return batches


def best_attention() -> str:
    return "flash_attention_2" if importlib.util.find_spec("flash_attn") and torch.cuda.is_available() else "sdpa"


@dataclass
class Candidate:
    """A model to measure: how to build it (on the device, seeded), the layout it reads and the FLOPs it is counted."""

    build: Callable[[], torch.nn.Module]
    layout: str
    attention: str = "local"  # which of a batch's FLOP counts: "local" (ModernBERT's layout) or "global"


def encoder_models(args: argparse.Namespace) -> dict[str, Candidate]:
    common = dict(
        vocab_size=args.vocab_size,
        hidden_size=args.hidden_size,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
    )
    special = dict(pad_token_id=PAD, bos_token_id=CLS, eos_token_id=SEP, cls_token_id=CLS, sep_token_id=SEP)
    attention = args.attention or best_attention()
    ours = EncoderConfig(
        **common,
        **special,
        mask_token_id=MASK,
        intermediate_size=args.intermediate_size,
        max_position_embeddings=max(args.max_length, 512),
        hidden_activation="geglu",
        local_attention=args.local_window,
        global_attn_every_n_layers=3,
        sparse_prediction=True,
        attn_implementation=attention,
    )
    modernbert = ModernBertConfig(
        **common,
        **special,
        intermediate_size=args.intermediate_size,
        max_position_embeddings=max(args.max_length, 512),
        local_attention=args.local_window,
        global_attn_every_n_layers=3,
        sparse_prediction=True,
        attn_implementation=attention,
    )
    bert = BertConfig(
        **common,
        intermediate_size=args.intermediate_size * 3 // 2,
        hidden_act="gelu",
        max_position_embeddings=max(args.max_length, 512),
        attn_implementation=args.attention if args.attention in (None, "eager", "sdpa") else "sdpa",
    )
    return {
        f"hf_encoders EncoderForMaskedLM (packed, {attention})": Candidate(lambda: EncoderForMaskedLM(ours), "packed"),
        f"hf_encoders EncoderForMaskedLM (padded, {attention})": Candidate(lambda: EncoderForMaskedLM(ours), "padded"),
        f"transformers ModernBertForMaskedLM ({attention})": Candidate(
            lambda: ModernBertForMaskedLM(modernbert), "padded"
        ),
        f"transformers BertForMaskedLM ({bert._attn_implementation or 'sdpa'})": Candidate(
            lambda: BertForMaskedLM(bert), "padded", attention="global"
        ),
    }


def seq2seq_models(args: argparse.Namespace) -> dict[str, Candidate]:
    d, layers, i, vocab = args.s2s_hidden_size, args.s2s_layers, args.s2s_intermediate_size, args.s2s_vocab_size
    longest = max(args.s2s_max_source, args.s2s_max_target, 512)
    attention = args.attention if args.attention in ("eager", "sdpa", "flex_attention") else "sdpa"
    ours = Seq2SeqConfig(
        vocab_size=vocab,
        hidden_size=d,
        num_hidden_layers=layers,
        num_decoder_layers=layers,
        num_attention_heads=max(d // 64, 1),
        intermediate_size=i,
        hidden_activation="gelu",
        max_position_embeddings=longest,
        pad_token_id=PAD,
        sparse_prediction=True,
        attn_implementation=attention,
    )
    bart = BartConfig(
        vocab_size=vocab,
        d_model=d,
        encoder_layers=layers,
        decoder_layers=layers,
        encoder_attention_heads=max(d // 64, 1),
        decoder_attention_heads=max(d // 64, 1),
        encoder_ffn_dim=i,
        decoder_ffn_dim=i,
        max_position_embeddings=longest,
        pad_token_id=PAD,
        attn_implementation="sdpa",
    )
    return {
        f"hf_encoders Seq2SeqForConditionalGeneration (packed, {attention})": Candidate(
            lambda: Seq2SeqForConditionalGeneration(ours), "packed"
        ),
        "transformers BartForConditionalGeneration (sdpa)": Candidate(
            lambda: BartForConditionalGeneration(bart), "padded"
        ),
    }


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def run_steps(step, batches: list[dict], layout: str, device: str) -> float:
    """Seconds for one training step on each batch; the device is synchronised only around the whole run."""
    synchronize(device)
    start = time.perf_counter()
    for batch in batches:
        step(batch[layout])
    synchronize(device)
    return time.perf_counter() - start


def make_step(model: torch.nn.Module, device: str, forward: Callable) -> Callable[[dict], None]:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device == "cuda")

    def step(batch: dict) -> None:
        with torch.autocast(device, dtype=torch.bfloat16):
            loss = forward(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def compiled_graphs() -> int:
    return torch._dynamo.utils.counters["stats"]["unique_graphs"]


def measure_one(
    candidate: Candidate,
    compiled: bool,
    batches: list[dict],
    args: argparse.Namespace,
    device: str,
    peak: float | None,
) -> dict:
    """One model alone on the device: warm-up (compilation), then `args.rounds` timed passes over the batches."""
    torch.manual_seed(args.seed)
    with torch.device(device):
        model = candidate.build().train()
    forward = torch.compile(model, backend=args.compile_backend) if compiled else model  # as users compile it
    step = make_step(model, device, forward)
    graphs, started = compiled_graphs(), time.perf_counter()
    run_steps(step, batches[: args.warmup], candidate.layout, device)
    warm_up_seconds, warm_up_graphs = time.perf_counter() - started, compiled_graphs() - graphs
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    seconds = [run_steps(step, batches, candidate.layout, device) for _ in range(args.rounds)]
    median = statistics.median(seconds)
    flops = sum(batch["flops"][candidate.attention] for batch in batches)
    return {
        "tokens_per_second": sum(batch["tokens"] for batch in batches) / median,
        "seconds_per_pass": seconds,
        "model_flops_per_step": flops / len(batches),
        "model_tflops_per_second": flops / median / 1e12,
        "mfu": mfu(flops, median, peak),
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None,
        "warm_up_seconds": warm_up_seconds,
        "graphs_compiled_in_warm_up": warm_up_graphs,
        "graphs_compiled_while_timed": compiled_graphs() - graphs - warm_up_graphs,
    }


@dataclass
class Section:
    """What one section (encoder, seq2seq) measured, skipped and saw fail, and how long each model took."""

    models: dict[str, dict] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    taken: dict[bool, list[float]] = field(default_factory=lambda: {False: [], True: []})

    def fits(self, compiled: bool, deadline: float | None) -> bool:
        """Whether a model can start: the time left exceeds what the slowest of its kind took (before any compiled
        one, three times the slowest eager one)."""
        if deadline is None:
            return True
        expected = max(self.taken[compiled], default=0.0)
        if compiled and not self.taken[True]:
            expected = 3 * max(self.taken[False], default=0.0)
        return deadline - time.monotonic() > expected

    def figures(self, batches: list[dict]) -> dict:
        """The section's JSON: each model's figures with the speed-up of ours (the fastest of ours) over it."""
        ours = [label for label in self.models if label.startswith("hf_encoders")]
        best = max(ours, key=lambda label: self.models[label]["tokens_per_second"], default=None)
        for row in self.models.values():
            row["ours_speedup"] = self.models[best]["tokens_per_second"] / row["tokens_per_second"] if best else None
        return {
            "tokens_per_step": sum(b["tokens"] for b in batches) / len(batches),
            "model_flops_per_step": sum(b["flops"]["local"] for b in batches) / len(batches),
            "models": self.models,
            "skipped": self.skipped,
            "failed": self.failed,
        }


def measure(
    name: str,
    models: dict[str, Candidate],
    batches: list[dict],
    args: argparse.Namespace,
    device: str,
    peak: float | None,
    deadline: float | None,
    publish: Callable[[dict], None],
) -> dict:
    """Each model eager, then each compiled (compilation takes the longest), one after the other; `publish` gets the
    section's figures after each model."""
    section = Section()
    for compiled in {"off": [False], "on": [True], "both": [False, True]}[args.compile]:
        for model_name, candidate in models.items():
            label = model_name + (" + torch.compile" if compiled else "")
            if not section.fits(compiled, deadline):
                section.skipped[label] = "not started: the time budget would not have held it"
                continue
            started = time.monotonic()
            try:
                row = measure_one(candidate, compiled, batches, args, device, peak)
            except Exception as error:  # out of memory, a compiler error: recorded, and the others go on
                section.failed[label] = "".join(traceback.format_exception_only(error)).strip()[-2000:]
                print(f"{name}  {label}: FAILED {section.failed[label]}", flush=True)
            else:
                section.models[label] = row
                print(f"{name}  {label:<80} {row['tokens_per_second']:10.0f} tokens/s", flush=True)
            section.taken[compiled].append(time.monotonic() - started)
            if device == "cuda":
                torch.cuda.empty_cache()
            publish(section.figures(batches))
    figures = section.figures(batches)
    show(figures)
    return figures


def show(figures: dict) -> None:
    for label, row in figures["models"].items():
        shown = "n/a" if row["mfu"] is None else f"{100 * row['mfu']:.1f}%"
        memory = "" if row["peak_memory_gib"] is None else f"{row['peak_memory_gib']:.1f} GiB"
        print(
            f"{label:<80} {row['tokens_per_second']:10.0f} tok/s  MFU {shown:>6}  {memory:>9}  "
            f"ours is {row['ours_speedup']:.2f}x"
        )
    for label, reason in {**figures["skipped"], **figures["failed"]}.items():
        print(f"{label:<80} {reason.splitlines()[-1]}")


def versions() -> dict:
    def installed(name: str) -> str | None:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return None

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "transformers": transformers.__version__,
        "hf_encoders": __version__,
        "triton": installed("triton"),
        "flash_attn": installed("flash-attn"),
    }


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and not args.dry_run:
        raise SystemExit("bench_gpu.py measures a GPU; on a CPU, --dry-run checks that it runs (tiny models).")
    deadline = time.monotonic() + args.time_budget if args.time_budget else None
    name = torch.cuda.get_device_name() if device == "cuda" else device_name()
    peak = peak_bf16_flops(name) if device == "cuda" else None
    print(f"{name}: dense bf16 peak {'unknown' if peak is None else f'{peak / 1e12:.1f} TFLOP/s'}")
    results = {}

    def record(section: str, figures: dict) -> None:
        """The figures so far, written out (after every model: a run cut short keeps what it measured)."""
        results[section] = figures
        if args.output:
            settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "output"}
            figures = {"gpu": name, "peak_bf16_tflops": None if peak is None else peak / 1e12, **results}
            write_result(args.output, "masked-LM and seq2seq training steps, bf16 autocast, AdamW", settings, figures)
            written = json.loads(args.output.read_text())
            args.output.write_text(json.dumps({**written, "versions": versions()}, indent=2) + "\n")

    sections = {"encoder": (encoder_models, encoder_batches), "seq2seq": (seq2seq_models, seq2seq_batches)}
    for section, (models, batches) in sections.items():
        if args.only in (section, "both"):
            publish = functools.partial(record, section)
            record(
                section, measure(section, models(args), batches(args, device), args, device, peak, deadline, publish)
            )
    failed = [label for figures in results.values() for label in figures["failed"]]
    if failed:
        raise SystemExit(f"bench_gpu.py: failed: {', '.join(failed)}")
    return results


if __name__ == "__main__":
    main()
