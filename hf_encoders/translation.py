"""Translating with any seq2seq checkpoint and scoring it the way papers report it: one implementation, used by the
validation BLEU of `training/train_translation.py` and by `training/evaluate_translation.py`.

Scores are sacreBLEU (cased and lowercased) and chrF through the offline `evaluate` modules of
`hf_encoders.metrics`, each with its sacreBLEU signature.
"""

import json
import re
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from . import metrics
from .tokenization import language_tag, target_language_token

LANGUAGE_TAG = re.compile(r"<2([^<>\s]+)>")


def tagged_languages(tokenizer: PreTrainedTokenizerBase) -> list[str]:
    """The languages the tokenizer has a `<2xx>` tag for, sorted; none for a tokenizer without tags (Marian's)."""
    return sorted(match[1] for token in tokenizer.get_vocab() if (match := LANGUAGE_TAG.fullmatch(token)))


def target_language_start(tokenizer: PreTrainedTokenizerBase, target_language: str) -> dict[str, int]:
    """`generate`'s `forced_bos_token_id` for the target language's tag; nothing for a tokenizer without tags. A
    language that a tokenizer with tags has no tag for is an error: its output would be in some other language."""
    tag = target_language_token(tokenizer, target_language)
    if tag is not None:
        return {"forced_bos_token_id": tag}
    if known := tagged_languages(tokenizer):
        raise ValueError(
            f"The tokenizer has no {language_tag(target_language)!r} tag for the target language "
            f"{target_language!r}; it has tags for {', '.join(known)}: translate into one of those."
        )
    return {}


@torch.no_grad()
def translate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    sources: list[str],
    target_language: str,
    batch_size: int = 32,
    num_beams: int = 4,
    max_new_tokens: int = 128,
    length_penalty: float = 1.0,
    show_progress: bool = True,
    **generate_kwargs,
) -> list[str]:
    """Translate `sources` with `model.generate`, in batches of similar lengths (less padding); the order of the
    output follows `sources`. When the tokenizer has language tags, generation starts with the target language's
    (`<2de>`), and a language without one is a ValueError; a tokenizer without tags (Marian's) needs none.
    `generate_kwargs` go to `generate` as they are (e.g. `early_stopping=True`)."""
    forced = target_language_start(tokenizer, target_language)
    was_training = model.training
    model.eval()
    order = sorted(range(len(sources)), key=lambda i: len(sources[i]))
    hypotheses = [""] * len(sources)
    for start in tqdm(range(0, len(order), batch_size), desc="translating", disable=not show_progress, leave=False):
        chunk = order[start : start + batch_size]
        inputs = tokenizer([sources[i] for i in chunk], return_tensors="pt", padding=True).to(model.device)
        output = model.generate(
            **inputs,
            num_beams=num_beams,
            max_new_tokens=max_new_tokens,
            length_penalty=length_penalty,
            **forced,
            **generate_kwargs,
        )
        for i, text in zip(chunk, tokenizer.batch_decode(output, skip_special_tokens=True), strict=True):
            hypotheses[i] = text.strip()
    model.train(was_training)
    return hypotheses


TRANSLATION_SCORES = ("bleu", "bleu_lowercased", "chrf")  # what `score_translations` reports


def score_translations(hypotheses: list[str], references: list[str]) -> dict[str, dict]:
    """sacreBLEU (cased and lowercased) and chrF of `hypotheses` against one reference each, with signatures."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} references; they must pair up.")
    bleu, chrf = metrics.load("sacrebleu_bleu"), metrics.load("sacrebleu_chrf")
    scores = {
        "bleu": bleu.compute(predictions=hypotheses, references=references),
        "bleu_lowercased": bleu.compute(predictions=hypotheses, references=references, lowercase=True),
        "chrf": chrf.compute(predictions=hypotheses, references=references),
    }
    return {name: {"score": s["score"], "signature": s["signature"]} for name, s in scores.items()}


def write_translations(
    output_dir: str | Path, split: str, src: str, tgt: str, hypotheses: list[str], summary: dict
) -> tuple[Path, Path]:
    """Write the hypotheses (one per line) and the scores (JSON) as `hypotheses.{split}.{src}-{tgt}.{tgt}` and
    `scores.{split}.{src}-{tgt}.json` in `output_dir`; return both paths."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{split}.{src}-{tgt}"
    hypotheses_file, scores_file = output_dir / f"hypotheses.{stem}.{tgt}", output_dir / f"scores.{stem}.json"
    hypotheses_file.write_text("".join(hypothesis + "\n" for hypothesis in hypotheses))
    scores_file.write_text(json.dumps(summary, indent=2) + "\n")
    return hypotheses_file, scores_file


__all__ = ["translate", "tagged_languages", "target_language_start", "score_translations", "write_translations"]
