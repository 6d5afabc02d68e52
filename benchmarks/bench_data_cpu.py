"""Time loading, tokenizing and packing all 50,000 unlabeled IMDB reviews (about 66 MB of text) for masked-LM
training, with a WordPiece tokenizer trained beforehand (its training is timed and reported apart). The `datasets`
cache starts empty (a temporary folder), so nothing is reused from an earlier run.

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
            },
        )


if __name__ == "__main__":
    main()
