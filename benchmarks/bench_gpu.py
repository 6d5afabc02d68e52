"""GPU training throughput and MFU: EncoderForMaskedLM beside transformers' ModernBertForMaskedLM and BertForMaskedLM
at ModernBERT-base dimensions, and Seq2SeqForConditionalGeneration beside BartForConditionalGeneration of BART-base
size, in one process, on the same variable-length batches, bf16 autocast and AdamW, each with and without
`torch.compile`.

Batches are documents of random lengths (seeded, uniform in [min, max] tokens). Ours reads them packed into one row
(padding-free, sparse masked-LM prediction) and padded as the anchors do (eagerly unpadded inside; compiled, a padded
batch is not unpadded); the anchors read them padded with an attention mask, with their best
attention backend (flash-attention 2 where the `flash_attn` package is installed — ModernBERT then unpads inside —
else SDPA) and ModernBERT with its own sparse prediction. Tokens/s counts real tokens; MFU counts model FLOPs
(`benchmarks/flops.py`: the formula, written out) over the device's dense bf16 peak; the step has no host syncs.

    python benchmarks/bench_gpu.py --output benchmarks/results/gpu_h100.json     # on an H100 / H200
    python benchmarks/bench_gpu.py --dry-run                                      # tiny models, on a CPU
"""

import argparse
import copy
import importlib.util
import statistics
import sys
import time
from pathlib import Path

import torch
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
from hf_encoders import EncoderConfig, EncoderForMaskedLM, Seq2SeqConfig, Seq2SeqForConditionalGeneration  # noqa: E402

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
    parser.add_argument("--steps", type=int, default=20, help="timed steps per model and round")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (compilation happens here)")
    parser.add_argument("--rounds", type=int, default=3, help="models take turns this many times")
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
    """bench_encoder_cpu's batches (the same documents packed and padded) with their training FLOPs."""
    batches = []
    lengths = (args.min_length, args.max_length)
    for batch in make_encoder_batches(args, args.steps, args.batch_size, lengths, args.mask_rate):
        batches.append(
            {
                "tokens": batch["tokens"],
                "flops": training_flops(args, batch, args.local_window),
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
                "flops": flops,
                "packed": on_device(packed, device),
                "padded": on_device(padded, device),
            }
        )
    return batches


def best_attention() -> str:
    return "flash_attention_2" if importlib.util.find_spec("flash_attn") and torch.cuda.is_available() else "sdpa"


def encoder_models(args: argparse.Namespace) -> dict[str, tuple[torch.nn.Module, str]]:
    common = dict(
        vocab_size=args.vocab_size,
        hidden_size=args.hidden_size,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
    )
    special = dict(pad_token_id=PAD, bos_token_id=CLS, eos_token_id=SEP, cls_token_id=CLS, sep_token_id=SEP)
    attention = best_attention()
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
        attn_implementation="sdpa",
    )
    return {
        f"hf_encoders EncoderForMaskedLM (packed, {attention})": (EncoderForMaskedLM(ours), "packed"),
        f"hf_encoders EncoderForMaskedLM (padded, {attention})": (EncoderForMaskedLM(ours), "padded"),
        f"transformers ModernBertForMaskedLM ({attention})": (ModernBertForMaskedLM(modernbert), "padded"),
        "transformers BertForMaskedLM (sdpa)": (BertForMaskedLM(bert), "padded"),
    }


def seq2seq_models(args: argparse.Namespace) -> dict[str, tuple[torch.nn.Module, str]]:
    d, layers, i, vocab = args.s2s_hidden_size, args.s2s_layers, args.s2s_intermediate_size, args.s2s_vocab_size
    longest = max(args.s2s_max_source, args.s2s_max_target, 512)
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
        attn_implementation="sdpa",
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
        "hf_encoders Seq2SeqForConditionalGeneration (packed, sdpa)": (
            Seq2SeqForConditionalGeneration(ours),
            "packed",
        ),
        "transformers BartForConditionalGeneration (sdpa)": (BartForConditionalGeneration(bart), "padded"),
    }


def run_steps(step, batches: list[dict], layout: str, device: str) -> float:
    """Seconds for one training step on each batch; the device is synchronised only around the whole run."""
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for batch in batches:
        step(batch[layout])
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def compile_model(model: torch.nn.Module) -> torch.nn.Module:
    """Ours: each layer compiled whole (`fullgraph`), the padding-free bookkeeping between them left eager; the
    anchors: `torch.compile` of the whole model, as their users would."""
    if isinstance(model, EncoderForMaskedLM):
        stacks = [model.model.layers]
    elif isinstance(model, Seq2SeqForConditionalGeneration):
        stacks = [model.get_encoder().layers, model.get_decoder().layers]
    else:
        return torch.compile(model)
    for layer in (layer for stack in stacks for layer in stack):
        layer.compile(fullgraph=True)
    return model


def make_step(model: torch.nn.Module, device: str, compiled: bool):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device == "cuda")
    forward = compile_model(model) if compiled else model

    def step(batch: dict) -> None:
        with torch.autocast(device, dtype=torch.bfloat16):
            loss = forward(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def measure(name: str, models: dict, batches: list[dict], args: argparse.Namespace, device: str, peak) -> dict:
    variants = {"off": [False], "on": [True], "both": [False, True]}[args.compile]
    runs = {}
    for model_name, (model, layout) in models.items():
        model.to(device).train()
        for compiled in variants:
            label = f"{model_name}{' + torch.compile' if compiled else ''}"  # ours: of each layer
            step = make_step(copy.deepcopy(model) if compiled else model, device, compiled)  # compiles in place
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            run_steps(step, batches[: args.warmup], layout, device)
            runs[label] = {"step": step, "layout": layout, "seconds": []}
            if device == "cuda":
                runs[label]["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    tokens, flops = sum(b["tokens"] for b in batches), sum(b["flops"] for b in batches)
    for round_index in range(args.rounds):  # take turns, so that drift of the machine hits every model alike
        for label, run in runs.items():
            run["seconds"].append(run_steps(run["step"], batches, run["layout"], device))
            print(
                f"{name} round {round_index + 1}/{args.rounds}  {label:<75} {tokens / run['seconds'][-1]:10.0f} "
                "tokens/s",
                flush=True,
            )
    figures = {}
    for label, run in runs.items():
        seconds = statistics.median(run["seconds"])
        figures[label] = {
            "tokens_per_second": tokens / seconds,
            "model_tflops_per_second": flops / seconds / 1e12,
            "mfu": mfu(flops, seconds, peak),
            "peak_memory_gib": run.get("peak_memory_gib"),
        }
    ours = max(
        (label for label in figures if label.startswith("hf_encoders")),
        key=lambda label: figures[label]["tokens_per_second"],
    )
    for label, row in figures.items():
        row["ours_speedup"] = figures[ours]["tokens_per_second"] / row["tokens_per_second"]
        shown = "n/a" if row["mfu"] is None else f"{100 * row['mfu']:.1f}%"
        memory = "" if row["peak_memory_gib"] is None else f"{row['peak_memory_gib']:.1f} GiB"
        print(
            f"{label:<78} {row['tokens_per_second']:10.0f} tok/s  MFU {shown:>6}  {memory:>9}  "
            f"ours is {row['ours_speedup']:.2f}x"
        )
    return {"tokens_per_step": tokens / len(batches), "model_flops_per_step": flops / len(batches), "models": figures}


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and not args.dry_run:
        raise SystemExit("bench_gpu.py measures a GPU; on a CPU, --dry-run checks that it runs (tiny models).")
    torch.manual_seed(args.seed)
    name = torch.cuda.get_device_name() if device == "cuda" else device_name()
    peak = peak_bf16_flops(name) if device == "cuda" else None
    print(f"{name}: dense bf16 peak {'unknown' if peak is None else f'{peak / 1e12:.1f} TFLOP/s'}")
    results = {}
    if args.only in ("encoder", "both"):
        results["encoder"] = measure(
            "encoder", encoder_models(args), encoder_batches(args, device), args, device, peak
        )
    if args.only in ("seq2seq", "both"):
        results["seq2seq"] = measure(
            "seq2seq", seq2seq_models(args), seq2seq_batches(args, device), args, device, peak
        )
    if args.output:
        settings = {k: v for k, v in vars(args).items() if k != "output"}
        write_result(
            args.output,
            "masked-LM and seq2seq training steps, bf16 autocast, AdamW",
            settings,
            {"gpu": name, "peak_bf16_tflops": None if peak is None else peak / 1e12, **results},
        )
    return results


if __name__ == "__main__":
    main()
