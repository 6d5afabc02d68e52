"""Encoder speed on a CPU beside transformers' BertForMaskedLM and ModernBertForMaskedLM of the same dimensions, in
one process, on the same inputs, models taking turns.

Training (forward + backward + AdamW): every model gets the same padded batches (`input_ids`, `attention_mask`,
`labels`), as `DataCollatorForLanguageModeling` and `Trainer` give them, each model with its default config; ours is
also shown without unpadding and with dense logits (its behaviour before they became the defaults), and fed our own
padding-free collator's layout (sequences packed in one row). ModernBERT is measured as configured by default and
with its own `sparse_prediction=True`. Throughput counts real (non-padding) tokens per second.

Inference: sequence classification and feature extraction (the pooled embedding) on padded batches of texts, as
`pipeline(...)` or `tokenizer(..., padding=True)` give them, ours beside ModernBERT's. Each table also has ModernBERT
itself converted into this family (`from_modernbert`: its config, local attention and weights), which runs this
family's code, unpadding and sparse head included.

Unpadding (`--tables unpadding`): ours with unpadding forced and without, on batches holding 1% to 20% padding
(training and inference) and on small inference batches, beside what the model's rule (`unpadding_pays`) decides.

    python benchmarks/bench_encoder_cpu.py --output benchmarks/results/encoder_mlm_cpu.json
    python benchmarks/bench_encoder_cpu.py --tables unpadding --output benchmarks/results/encoder_unpadding_cpu.json
    python benchmarks/bench_encoder_cpu.py --tables compile --output benchmarks/results/encoder_compile_cpu.json

Compiled (`--tables compile`): ours and ModernBERT (sparse head in training), eager and in `torch.compile`
(inductor), in training and masked-LM inference on the same padded batches; compiling is timed apart.
"""

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import torch
from transformers import (
    BertConfig,
    BertForMaskedLM,
    ModernBertConfig,
    ModernBertForMaskedLM,
    ModernBertForSequenceClassification,
    ModernBertModel,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import write_result  # noqa: E402
from benchmarks.flops import encoder_forward_flops  # noqa: E402
from hf_encoders import (  # noqa: E402
    EncoderConfig,
    EncoderForMaskedLM,
    EncoderForSequenceClassification,
    EncoderModel,
    modeling_encoder,  # noqa: E402
)

PAD, CLS, SEP, MASK = 0, 1, 2, 3
OURS = "hf_encoders EncoderForMaskedLM"
MODERNBERT = "transformers ModernBertForMaskedLM"


def build_parser(description: str = __doc__.split("\n\n")[0]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--intermediate-size", type=int, default=1024)
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--min-length", type=int, default=128)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--mask-rate", type=float, default=0.3)
    parser.add_argument("--inference-batch-size", type=int, default=32)
    parser.add_argument("--inference-min-length", type=int, default=16)
    parser.add_argument("--inference-max-length", type=int, default=256)
    parser.add_argument("--steps", type=int, default=8, help="timed steps (batches) per model and round")
    parser.add_argument("--rounds", type=int, default=3, help="models take turns this many times")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, help="write the figures as JSON here")
    return parser


def make_batch(sizes: list[int], vocab_size: int, mask_rate: float, generator: torch.Generator) -> dict:
    """Random documents of the given sizes, [CLS] ... [SEP], with `mask_rate` of the inner tokens masked; padded
    (`padded`) and packed into one row (`packed`)."""
    sequences, labels = [], []
    for size in sizes:
        ids = torch.randint(5, vocab_size, (size,), generator=generator)
        ids[0], ids[-1] = CLS, SEP
        masked = torch.rand(size, generator=generator) < mask_rate
        masked[0] = masked[-1] = False
        labels.append(torch.where(masked, ids, -100))
        sequences.append(ids.masked_fill(masked, MASK))
    padded = torch.nn.utils.rnn.pad_sequence(sequences, batch_first=True, padding_value=PAD)
    padded_labels = torch.nn.utils.rnn.pad_sequence(labels, batch_first=True, padding_value=-100)
    attention_mask = (torch.arange(padded.shape[1]) < torch.tensor(sizes)[:, None]).long()
    return {
        "tokens": sum(sizes),
        "padded": {"input_ids": padded, "attention_mask": attention_mask, "labels": padded_labels},
        "packed": {
            "input_ids": torch.cat(sequences)[None],
            "position_ids": torch.cat([torch.arange(size) for size in sizes])[None],
            "labels": torch.cat(labels)[None],
        },
    }


def make_batches(
    args: argparse.Namespace, count: int, batch_size: int, lengths: tuple[int, int], mask_rate: float
) -> list[dict]:
    """`count` batches of `batch_size` documents of lengths drawn uniformly from `lengths`."""
    generator = torch.Generator().manual_seed(args.seed)
    return [
        make_batch(
            torch.randint(lengths[0], lengths[1] + 1, (batch_size,), generator=generator).tolist(),
            args.vocab_size,
            mask_rate,
            generator,
        )
        for _ in range(count)
    ]


def training_flops(args: argparse.Namespace, batch: dict, local_window: int | None = None) -> int:
    """Model FLOPs of a training step (3 x the forward; `benchmarks/flops.py`) on a batch of `make_batch`, for a
    model of `args`' dimensions with a gated MLP; with `local_window`, two of every three layers attend locally."""
    return 3 * encoder_forward_flops(
        batch["padded"]["attention_mask"].sum(1).tolist(),
        args.hidden_size,
        args.layers,
        args.intermediate_size,
        args.vocab_size,
        int((batch["padded"]["labels"] != -100).sum()),
        gated_mlp=True,
        local_window=local_window,
        global_every=3 if local_window else None,
    )


def dimensions(args: argparse.Namespace) -> dict:
    return dict(
        vocab_size=args.vocab_size,
        hidden_size=args.hidden_size,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        intermediate_size=args.intermediate_size,
        max_position_embeddings=512,
    )


SPECIAL = dict(pad_token_id=PAD, bos_token_id=CLS, eos_token_id=SEP, cls_token_id=CLS, sep_token_id=SEP)


def training_models(args: argparse.Namespace) -> dict[str, tuple[torch.nn.Module, str]]:
    """name -> (model, batch layout). All share width, depth, heads, FFN size and vocabulary; the rest is each
    library's default (ModernBERT: local attention every 2 of 3 layers; ours: global attention)."""
    ours = dict(**dimensions(args), **SPECIAL, mask_token_id=MASK)
    modernbert = dict(**dimensions(args), **SPECIAL)
    converted = EncoderForMaskedLM.from_modernbert(ModernBertForMaskedLM(ModernBertConfig(**modernbert))).train()
    return {
        OURS: (EncoderForMaskedLM(EncoderConfig(**ours)), "padded"),
        f"{OURS} (unpadding=False, sparse_prediction=False)": (
            EncoderForMaskedLM(EncoderConfig(**ours, unpadding=False, sparse_prediction=False)),
            "padded",
        ),
        f"{OURS} (our padding-free collator)": (EncoderForMaskedLM(EncoderConfig(**ours)), "packed"),
        "transformers BertForMaskedLM": (BertForMaskedLM(BertConfig(**dimensions(args))), "padded"),
        "transformers ModernBertForMaskedLM": (ModernBertForMaskedLM(ModernBertConfig(**modernbert)), "padded"),
        f"{OURS} (ModernBERT's config and weights, converted)": (converted, "padded"),
        "transformers ModernBertForMaskedLM (sparse_prediction=True)": (
            ModernBertForMaskedLM(ModernBertConfig(**modernbert, sparse_prediction=True)),
            "padded",
        ),
    }


def training_step(model: torch.nn.Module, batch: dict) -> None:
    model(**batch).loss.backward()
    model.optimizer.step()
    model.optimizer.zero_grad(set_to_none=True)


@torch.inference_mode()
def inference_step(model: torch.nn.Module, batch: dict) -> None:
    model(**batch)


def take_turns(
    models: dict[str, tuple[torch.nn.Module, str]],
    batches: list[dict],
    step: Callable[[torch.nn.Module, dict], None],
    args: argparse.Namespace,
) -> dict[str, list[float]]:
    """Real tokens per second of each model in each round; the models take turns, so that drift of the machine
    hits every model alike. `args.warmup` batches first, untimed."""
    for model, layout in models.values():
        for batch in batches[: args.warmup]:
            step(model, batch[layout])
    tokens = sum(batch["tokens"] for batch in batches)
    throughput: dict[str, list[float]] = {name: [] for name in models}
    for round_index in range(args.rounds):
        for name, (model, layout) in models.items():
            start = time.perf_counter()
            for batch in batches:
                step(model, batch[layout])
            throughput[name].append(tokens / (time.perf_counter() - start))
            print(
                f"round {round_index + 1}/{args.rounds}  {name:<72} {throughput[name][-1]:9.0f} tokens/s", flush=True
            )
    return throughput


def summarize(title: str, models: dict, throughput: dict[str, list[float]], batches: list[dict]) -> dict:
    """Print the table (ours against each) and return its figures."""
    median = {name: statistics.median(values) for name, values in throughput.items()}
    ours = next(iter(models))
    real = sum(batch["tokens"] for batch in batches) / len(batches)
    padded = sum(batch["padded"]["input_ids"].numel() for batch in batches) / len(batches)
    print(f"\n{title}\n{'model':<72} {'params':>8} {'tokens/s':>10} {'ours is':>9}")
    for name, (model, _) in models.items():
        params = sum(p.numel() for p in model.parameters()) / 1e6
        print(f"{name:<72} {params:7.2f}M {median[name]:10.0f} {median[ours] / median[name]:8.2f}x")
    print(f"(real tokens per batch {real:.0f}; padded batches hold {padded:.0f})\n")
    return {
        "real_tokens_per_batch": real,
        "padded_tokens_per_batch": padded,
        "tokens_per_second": median,
        "tokens_per_second_per_round": throughput,
        "speedup_of_ours": {name: median[ours] / value for name, value in median.items()},
    }


def run_training(args: argparse.Namespace) -> dict:
    batches = make_batches(args, args.steps, args.batch_size, (args.min_length, args.max_length), args.mask_rate)
    models = training_models(args)
    for model, _ in models.values():
        model.train()
        model.optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    throughput = take_turns(models, batches, training_step, args)
    title = "masked-LM training step (forward, backward, AdamW) on the same padded batches"
    return summarize(title, models, throughput, batches)


def inference_models(args: argparse.Namespace) -> dict[str, dict[str, tuple[torch.nn.Module, str]]]:
    ours, modernbert = EncoderConfig(**dimensions(args), **SPECIAL), ModernBertConfig(**dimensions(args), **SPECIAL)
    classifier, encoder = ModernBertForSequenceClassification(modernbert), ModernBertModel(modernbert)
    converted = "(ModernBERT's config and weights, converted)"
    return {
        "sequence classification": {
            "hf_encoders EncoderForSequenceClassification": (EncoderForSequenceClassification(ours), "padded"),
            "transformers ModernBertForSequenceClassification": (classifier, "padded"),
            f"hf_encoders EncoderForSequenceClassification {converted}": (
                EncoderForSequenceClassification.from_modernbert(classifier),
                "padded",
            ),
        },
        "feature extraction": {
            "hf_encoders EncoderModel": (EncoderModel(ours), "padded"),
            "transformers ModernBertModel": (encoder, "padded"),
            f"hf_encoders EncoderModel {converted}": (EncoderModel.from_modernbert(encoder), "padded"),
        },
    }


def run_inference(args: argparse.Namespace) -> dict:
    lengths = (args.inference_min_length, args.inference_max_length)
    batches = make_batches(args, args.steps, args.inference_batch_size, lengths, mask_rate=0.0)
    for batch in batches:
        del batch["padded"]["labels"]
    results = {}
    for task, models in inference_models(args).items():
        for model, _ in models.values():
            model.eval()
        throughput = take_turns(models, batches, inference_step, args)
        results[task] = summarize(f"{task}, inference on padded batches", models, throughput, batches)
    return results


def sizes_with_padding(batch_size: int, length: int, padding: float) -> list[int]:
    """Document sizes filling a (batch_size, length) batch but for the share `padding`, taken off the last rows."""
    sizes, missing = [length] * batch_size, round(padding * batch_size * length)
    for row in reversed(range(1, batch_size)):
        cut = min(missing, length // 2)
        sizes[row], missing = length - cut, missing - cut
    return sizes


def unpadding_speedup(models: dict, batches: list[dict], step: Callable, args: argparse.Namespace) -> float:
    """How many times as fast as without unpadding the model runs with it (forced, whatever the batch's padding)."""
    never = dict(UNPAD_MIN_PADDING=0.0, UNPAD_MIN_PADDING_INFERENCE=0.0, UNPAD_MIN_PADDING_TOKENS=1)
    with mock.patch.multiple(modeling_encoder, **never):
        median = {name: statistics.median(v) for name, v in take_turns(models, batches, step, args).items()}
    return median["unpadding"] / median["unpadding=False"]


def run_unpadding_sweep(args: argparse.Namespace) -> dict:
    """Ours unpadding (forced) and not, on batches of `--batch-size` x `--max-length` holding a given share of padding
    (training and inference), and on small inference batches as a pipeline makes them: where the rule
    (`UNPAD_MIN_PADDING`, `UNPAD_MIN_PADDING_TOKENS`) comes from, and what it decides."""
    generator = torch.Generator().manual_seed(args.seed)
    unpadded = EncoderForMaskedLM(EncoderConfig(**dimensions(args), **SPECIAL, mask_token_id=MASK))
    padded = EncoderForMaskedLM(EncoderConfig(**dimensions(args), **SPECIAL, mask_token_id=MASK, unpadding=False))
    padded.load_state_dict(unpadded.state_dict())
    models = {"unpadding": (unpadded, "padded"), "unpadding=False": (padded, "padded")}
    for model, _ in models.values():
        model.optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    cases = [
        (sizes_with_padding(args.batch_size, args.max_length, share), mode, args.steps)
        for share in (0.01, 0.025, 0.05, 0.1, 0.2)
        for mode in ("training", "inference")
    ]
    cases += [(sizes, "inference", 100) for sizes in ([12, 8], [24, 16], [48, 30], [16, 12, 11, 8], [64, 48, 44, 32])]
    rows = []
    for sizes, mode, count in cases:
        batches = [make_batch(sizes, args.vocab_size, args.mask_rate, generator) for _ in range(count)]
        for model, _ in models.values():
            model.train(mode == "training")
        grid = len(sizes) * max(sizes)
        padding = grid - sum(sizes)
        print(f"{mode}, sizes {sizes[:4]}{'...' if len(sizes) > 4 else ''}: {padding} of {grid} padding", flush=True)
        step = training_step if mode == "training" else inference_step
        speedup = unpadding_speedup(models, batches, step, args)
        unpads = modeling_encoder.unpadding_pays(padding, grid, gradients=mode == "training")
        rows.append(
            {"mode": mode, "sizes": sizes, "padding": padding, "grid": grid, "speedup": speedup, "unpads": unpads}
        )
    print(f"\n{'mode':<10} {'padding':>16} {'unpadding forced is':>20}  the rule unpads")
    for row in rows:
        padding = f"{row['padding']}/{row['grid']}"
        print(f"{row['mode']:<10} {padding:>16} {row['speedup']:19.3f}x  {row['unpads']}")
    rule = ("UNPAD_MIN_PADDING", "UNPAD_MIN_PADDING_INFERENCE", "UNPAD_MIN_PADDING_TOKENS")
    return {"rows": rows, "rule": {name: getattr(modeling_encoder, name) for name in rule}}


def compile_models(args: argparse.Namespace, sparse: bool) -> dict[str, tuple[torch.nn.Module, str]]:
    """Ours and ModernBERT (with its sparse head in training), each eager and wrapped in `torch.compile` (inductor,
    dynamic shapes as dynamo decides them), the compiled copy holding the eager one's weights."""
    ours = EncoderConfig(**dimensions(args), **SPECIAL, mask_token_id=MASK)
    modernbert = ModernBertConfig(**dimensions(args), **SPECIAL, sparse_prediction=sparse)
    models = {}
    for name, build in (
        (OURS, lambda: EncoderForMaskedLM(ours)),
        (MODERNBERT, lambda: ModernBertForMaskedLM(modernbert)),
    ):
        torch.manual_seed(args.seed)
        eager, compiled = build(), build()
        compiled.load_state_dict(eager.state_dict())
        models[name] = (eager, "padded")
        models[f"{name}, torch.compile"] = (torch.compile(compiled), "padded")
    return models


def run_compiled(args: argparse.Namespace) -> dict:
    """Training steps and masked-LM inference on the same padded batches, each model eager and compiled. Compiling
    (the first batches, of other lengths: a static graph, then a dynamic one) is timed apart from the steps."""
    torch._inductor.config.compile_threads = 1  # no worker pool beside the timed runs
    lengths = (args.min_length, args.max_length)
    batches = make_batches(args, args.steps + args.warmup, args.batch_size, lengths, args.mask_rate)
    unlabelled = [
        {**batch, "padded": {k: v for k, v in batch["padded"].items() if k != "labels"}} for batch in batches
    ]
    results = {}
    for mode, step in (("training", training_step), ("inference", inference_step)):
        mode_batches = batches if mode == "training" else unlabelled
        warmup, timed = mode_batches[: args.warmup], mode_batches[args.warmup :]
        models = compile_models(args, sparse=mode == "training")
        compile_seconds = {}
        for name, (model, _) in models.items():
            model.train(mode == "training")
            model.optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
            start = time.perf_counter()
            for batch in warmup:
                step(model, batch["padded"])
            compile_seconds[name] = time.perf_counter() - start
        throughput = take_turns(models, timed, step, argparse.Namespace(**{**vars(args), "warmup": 0}))
        results[mode] = summarize(f"{mode}, eager and compiled, same padded batches", models, throughput, timed)
        results[mode]["warmup_seconds"] = compile_seconds
    return results


TABLES = {
    "training": run_training,
    "inference": run_inference,
    "unpadding": run_unpadding_sweep,
    "compile": run_compiled,
}


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    parser.add_argument("--tables", nargs="+", choices=TABLES, default=["training", "inference"])
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    figures = {table: TABLES[table](args) for table in args.tables}
    if args.output:
        settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "output"}
        write_result(args.output, "encoder training and inference speed on padded batches", settings, figures)


if __name__ == "__main__":
    main()
