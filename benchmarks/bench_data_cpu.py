"""Time loading, tokenizing and packing all 50,000 unlabeled IMDB reviews (about 66 MB of text) for masked-LM
training, with a WordPiece tokenizer trained beforehand (its training is timed and reported apart). The `datasets`
cache starts empty (a temporary folder), so nothing is reused from an earlier run.

Then the streamed path (`--streaming`), as one training process runs it: the reviews read from the file, tokenized,
packed, shuffled in a buffer (10,000 blocks) and collated into masked-LM batches on the fly, in one thread; tokens
per second over its first `--streamed-tokens` tokens (the buffer's filling included). Beside it, what one GPU
consumes at `mlm_base` size: the model FLOPs of a token (benchmarks/flops.py) at an assumed MFU of an H100, until a
measured GPU figure replaces it.

    python benchmarks/bench_data_cpu.py --output benchmarks/results/data_imdb_unsup_cpu.json
"""

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "imdb" / "unsup.txt.gz")
    parser.add_argument("--vocab-size", type=int, default=32768)
    parser.add_argument("--tokenizer-sample", type=int, default=20000, help="reviews the tokenizer is trained on")
    parser.add_argument("--block-size", type=int, default=512)
    parser.add_argument("--num-proc", type=int, default=2)
    parser.add_argument("--streamed-tokens", type=int, default=6_000_000, help="tokens the streamed path makes")
    parser.add_argument("--shuffle-buffer", type=int, default=10_000, help="blocks the streamed path shuffles among")
    parser.add_argument("--assumed-mfu", type=float, default=0.4, help="the H100's MFU at mlm_base size (assumed)")
    parser.add_argument("--output", type=Path, help="write the figures as JSON here")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    cache = tempfile.mkdtemp(prefix="hf_encoders_bench_")
    os.environ["HF_DATASETS_CACHE"] = cache  # before `datasets` is imported: a cold cache
    sys.path.insert(0, str(ROOT))
    import torch

    from benchmarks.common import write_result
    from hf_encoders.data import load_text_dataset, pack_for_mlm
    from hf_encoders.tokenization import train_tokenizer

    torch.set_num_threads(args.num_proc)
    start = time.perf_counter()
    raw = load_text_dataset(args.data, validation_fraction=0.01)
    load_seconds = time.perf_counter() - start
    characters = sum(len(text) for split in raw.values() for text in split["text"])
    documents = sum(len(split) for split in raw.values())

    start = time.perf_counter()
    sample = raw["train"].select(range(min(args.tokenizer_sample, len(raw["train"]))))["text"]
    tokenizer = train_tokenizer(sample, args.vocab_size, show_progress=False)
    tokenizer_seconds = time.perf_counter() - start

    start = time.perf_counter()
    packed = pack_for_mlm(raw, tokenizer, block_size=args.block_size, num_proc=args.num_proc)
    pack_seconds = time.perf_counter() - start
    tokens = sum(sum(map(len, split["input_ids"])) for split in packed.values())
    blocks = sum(len(split) for split in packed.values())
    fill = tokens / (blocks * args.block_size)

    streamed = streamed_rate(args, tokenizer)
    total = load_seconds + pack_seconds
    print(
        f"{documents:,} reviews, {characters / 1e6:.1f} M characters -> {tokens:,} tokens in {blocks:,} blocks "
        f"of {args.block_size} ({fill:.1%} full)"
    )
    print(
        f"load {load_seconds:.1f} s + tokenize & pack {pack_seconds:.1f} s = {total:.1f} s "
        f"({tokens / pack_seconds / 1e6:.2f} M tokens/s); tokenizer training on {len(sample):,} reviews: "
        f"{tokenizer_seconds:.1f} s"
    )
    if args.output:
        write_result(
            args.output,
            "load + tokenize + pack IMDB unlabeled reviews for MLM (cold datasets cache)",
            {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "output"},
            {
                "documents": documents,
                "characters": characters,
                "tokens": tokens,
                "blocks": blocks,
                "block_fill": fill,
                "load_seconds": load_seconds,
                "tokenize_and_pack_seconds": pack_seconds,
                "load_tokenize_pack_seconds": total,
                "tokenizer_training_seconds": tokenizer_seconds,
                "streamed": streamed,
            },
        )


def streamed_rate(args: argparse.Namespace, tokenizer) -> dict:
    """Tokens per second of the streamed path in one process (one thread), and one GPU's consumption at mlm_base
    size (the FLOPs of a token at an assumed MFU): how many dataloader workers (`--dataloader_workers`, a core each)
    feed a GPU 3x over."""
    import torch
    import yaml

    from benchmarks.flops import PEAK_BF16_TFLOPS, encoder_forward_flops
    from hf_encoders.data import MLMCollator, StreamedExamples, mlm_blocks, stream_text_dataset
    from hf_encoders.tasks.harness import CONFIGS

    torch.set_num_threads(1)
    stream = StreamedExamples(
        stream_text_dataset(args.data), mlm_blocks(tokenizer, args.block_size), buffer_size=args.shuffle_buffer
    )
    collator, tokens, batches = MLMCollator(tokenizer, 0.3, seed=0), 0, 0
    start = time.perf_counter()
    for batch in torch.utils.data.DataLoader(stream, batch_size=16, collate_fn=lambda rows: (rows, collator(rows))):
        tokens += sum(len(row["input_ids"]) for row in batch[0])
        batches += 1
        if tokens >= args.streamed_tokens:
            break
    seconds = time.perf_counter() - start
    base = yaml.safe_load((CONFIGS / "mlm_base.yaml").read_text())
    block = base["block_size"]
    flops = (
        3
        * encoder_forward_flops(
            [block],
            base["hidden_size"],
            base["num_hidden_layers"],
            base["intermediate_size"],
            base["vocab_size"],
            predicted_tokens=round(base["mlm_probability"] * block),
            local_window=base["local_attention"],
            global_every=base["global_attn_every_n_layers"],
        )
        / block
    )  # training FLOPs per token, documents of a full block
    gpu = args.assumed_mfu * PEAK_BF16_TFLOPS["H100"] * 1e12 / flops
    rate = tokens / seconds
    print(
        f"streamed: {tokens:,} tokens in {batches:,} batches in {seconds:.1f} s = {rate / 1e3:.0f} k tokens/s per "
        f"process; an H100 at mlm_base size and {args.assumed_mfu:.0%} MFU consumes {gpu / 1e3:.0f} k tokens/s: "
        f"{3 * gpu / rate:.1f} dataloader workers' worth (one core each) feed it 3x over"
    )
    return {
        "tokens": tokens,
        "batches": batches,
        "seconds": seconds,
        "tokens_per_second_per_process": rate,
        "mlm_base_training_flops_per_token": flops,
        "h100_assumed_mfu": args.assumed_mfu,
        "h100_mlm_base_tokens_per_second_derived": gpu,
        "workers_for_3x": 3 * gpu / rate,
    }


if __name__ == "__main__":
    main()
