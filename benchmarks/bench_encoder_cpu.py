"""Masked-LM training-step throughput of EncoderForMaskedLM beside transformers' BertForMaskedLM and
ModernBertForMaskedLM of the same dimensions, in one process, on the same batches.

Each step is forward + backward + AdamW update. Throughput counts real (non-padding) tokens per second, so padding
costs the models that compute on it. Our model runs the padding-free path (sequences packed into one row) with
sparse prediction; the transformers models get dynamically padded batches with an attention mask, as
`DataCollatorForLanguageModeling` gives them. ModernBERT is measured as configured by default and once more with its
own `sparse_prediction=True`.

    python benchmarks/bench_encoder_cpu.py                       # the issue's CPU case
    python benchmarks/bench_encoder_cpu.py --output benchmarks/results/encoder_mlm_cpu.json
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers import BertConfig, BertForMaskedLM, ModernBertConfig, ModernBertForMaskedLM

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import write_result  # noqa: E402
from hf_encoders import EncoderConfig, EncoderForMaskedLM  # noqa: E402

PAD, CLS, SEP, MASK = 0, 1, 2, 3


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--intermediate-size", type=int, default=1024)
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--min-length", type=int, default=128)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--mask-rate", type=float, default=0.3)
    parser.add_argument("--steps", type=int, default=8, help="timed steps per model and round")
    parser.add_argument("--rounds", type=int, default=3, help="models take turns this many times")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, help="write the figures as JSON here")
    return parser.parse_args()


def make_batches(args: argparse.Namespace, count: int) -> list[dict]:
    """Random documents of lengths in [min, max], [CLS] ... [SEP], with mask_rate of the inner tokens masked."""
    generator = torch.Generator().manual_seed(args.seed)
    batches = []
    for _ in range(count):
        lengths = torch.randint(args.min_length, args.max_length + 1, (args.batch_size,), generator=generator)
        sequences, labels = [], []
        for length in lengths.tolist():
            ids = torch.randint(5, args.vocab_size, (length,), generator=generator)
            ids[0], ids[-1] = CLS, SEP
            masked = torch.rand(length, generator=generator) < args.mask_rate
            masked[0] = masked[-1] = False
            labels.append(torch.where(masked, ids, -100))
            sequences.append(ids.masked_fill(masked, MASK))
        longest = int(lengths.max())
        padded = torch.full((args.batch_size, longest), PAD)
        padded_labels = torch.full((args.batch_size, longest), -100)
        attention_mask = torch.zeros(args.batch_size, longest, dtype=torch.long)
        for row, (ids, label) in enumerate(zip(sequences, labels, strict=True)):
            padded[row, : len(ids)], padded_labels[row, : len(ids)], attention_mask[row, : len(ids)] = ids, label, 1
        batches.append(
            {
                "tokens": int(lengths.sum()),
                "padded": {"input_ids": padded, "attention_mask": attention_mask, "labels": padded_labels},
                "packed": {
                    "input_ids": torch.cat(sequences)[None],
                    "position_ids": torch.cat([torch.arange(n) for n in lengths.tolist()])[None],
                    "labels": torch.cat(labels)[None],
                },
            }
        )
    return batches


def build_models(args: argparse.Namespace) -> dict[str, tuple[torch.nn.Module, str]]:
    """name -> (model, batch layout). All share width, depth, heads, FFN size and vocabulary."""
    common = dict(
        vocab_size=args.vocab_size,
        hidden_size=args.hidden_size,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        intermediate_size=args.intermediate_size,
    )
    special = dict(pad_token_id=PAD, bos_token_id=CLS, eos_token_id=SEP, cls_token_id=CLS, sep_token_id=SEP)
    ours = EncoderConfig(
        **common,
        **special,
        mask_token_id=MASK,
        max_position_embeddings=512,
        hidden_activation="geglu",
        local_attention=128,
        global_attn_every_n_layers=3,
        sparse_prediction=True,
        attn_implementation="sdpa",
    )
    bert = BertConfig(**common, max_position_embeddings=512, hidden_act="gelu", attn_implementation="sdpa")
    modernbert = dict(**common, **special, max_position_embeddings=512, attn_implementation="sdpa")
    return {
        "hf_encoders EncoderForMaskedLM (packed, sparse)": (EncoderForMaskedLM(ours), "packed"),
        "transformers BertForMaskedLM": (BertForMaskedLM(bert), "padded"),
        "transformers ModernBertForMaskedLM": (ModernBertForMaskedLM(ModernBertConfig(**modernbert)), "padded"),
        "transformers ModernBertForMaskedLM (sparse_prediction=True)": (
            ModernBertForMaskedLM(ModernBertConfig(**modernbert, sparse_prediction=True)),
            "padded",
        ),
    }


def time_steps(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batches: list[dict], layout: str) -> float:
    """Wall-clock seconds of one training step on each of the batches, summed."""
    seconds = 0.0
    for batch in batches:
        start = time.perf_counter()
        loss = model(**batch[layout]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        seconds += time.perf_counter() - start
    return seconds


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    batches = make_batches(args, args.steps)
    models = build_models(args)
    optimizers = {name: torch.optim.AdamW(model.parameters(), lr=1e-4) for name, (model, _) in models.items()}
    for name, (model, layout) in models.items():
        model.train()
        time_steps(model, optimizers[name], batches[: args.warmup], layout)

    tokens = sum(batch["tokens"] for batch in batches)
    padded_tokens = sum(batch["padded"]["input_ids"].numel() for batch in batches)
    throughput: dict[str, list[float]] = {name: [] for name in models}
    for round_index in range(args.rounds):  # take turns, so that drift of the machine hits every model alike
        for name, (model, layout) in models.items():
            seconds = time_steps(model, optimizers[name], batches, layout)
            throughput[name].append(tokens / seconds)
            print(f"round {round_index + 1}/{args.rounds}  {name:<62} {tokens / seconds:9.0f} tokens/s", flush=True)

    ours = next(iter(models))
    median = {name: statistics.median(values) for name, values in throughput.items()}
    print(f"\n{'model':<62} {'params':>8} {'tokens/s':>10} {'ours is':>9}")
    for name, (model, _) in models.items():
        params = sum(p.numel() for p in model.parameters()) / 1e6
        print(f"{name:<62} {params:7.2f}M {median[name]:10.0f} {median[ours] / median[name]:8.2f}x")
    print(
        f"(real tokens per step {tokens / len(batches):.0f}; padded batches hold {padded_tokens / len(batches):.0f})"
    )

    if args.output:
        write_result(
            args.output,
            "masked-LM training step (forward, backward, AdamW)",
            {k: v for k, v in vars(args).items() if k != "output"},
            {
                "real_tokens_per_step": tokens / len(batches),
                "padded_tokens_per_step": padded_tokens / len(batches),
                "tokens_per_second": median,
                "tokens_per_second_per_round": throughput,
                "speedup_of_ours": {name: median[ours] / value for name, value in median.items()},
            },
        )


if __name__ == "__main__":
    main()
