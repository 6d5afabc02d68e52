"""Translate a test set with any seq2seq checkpoint and score it the way papers report it.

    python training/evaluate_translation.py --model runs/translation_en_de/best --src en --tgt de
    python training/evaluate_translation.py --model Helsinki-NLP/opus-mt-en-de --src en --tgt de --num_beams 5

Batched beam search with `AutoModelForSeq2SeqLM` (hf_encoders checkpoints or transformers' own, e.g. Marian), the
hypotheses written one per line, then sacreBLEU (cased and lowercased) and chrF with their signatures, printed and
written as JSON beside the hypotheses. When the tokenizer has the target-language tag (`<2de>`), generation starts
with it.
"""

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

from ... import load_parallel_dataset, score_translations, translate, write_translations
from ..harness import default_device, first_n, parse_arguments

logger = logging.getLogger("evaluate_translation")


@dataclass
class EvaluationArguments:
    model: str = field(
        default="", metadata={"help": "Checkpoint folder or Hub id (AutoModelForSeq2SeqLM + tokenizer)."}
    )
    data: str = field(default="../shared/data/multi30k", metadata={"help": "Parallel data: path or Hub id."})
    src: str = "en"
    tgt: str = "de"
    split: str = "test"
    batch_size: int = 32
    num_beams: int = 4
    max_new_tokens: int = 128
    length_penalty: float = 1.0
    max_examples: int = field(default=0, metadata={"help": "Only the first N pairs (0: all)."})
    output_dir: str = field(default="", metadata={"help": "Where hypotheses and scores go (default: the model's)."})


def main(argv: list[str] | None = None) -> dict:
    (args,) = parse_arguments((EvaluationArguments,), argv)
    if not args.model:
        raise ValueError("Give the checkpoint to evaluate: --model PATH_OR_HUB_ID.")
    pairs = load_parallel_dataset(args.data, args.src, args.tgt)
    if args.split not in pairs:
        raise ValueError(f"{args.data!r} has no split {args.split!r}; it has {sorted(pairs)}.")
    data = first_n(pairs[args.split], args.max_examples or None)  # 0: all
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForSeq2SeqLM.from_pretrained(args.model).eval()
    model.to(default_device())
    hypotheses = translate(
        model,
        tokenizer,
        list(data[args.src]),
        args.tgt,
        args.batch_size,
        args.num_beams,
        args.max_new_tokens,
        args.length_penalty,
    )
    scores = score_translations(hypotheses, list(data[args.tgt]))
    summary = {"settings": asdict(args), "examples": len(hypotheses), **scores}
    output_dir = args.output_dir or (args.model if Path(args.model).is_dir() else ".")
    write_translations(output_dir, args.split, args.src, args.tgt, hypotheses, summary)
    for name in scores:
        print(f"{name:<16} {scores[name]['score']:6.2f}   {scores[name]['signature']}")
    return summary


if __name__ == "__main__":
    main()
