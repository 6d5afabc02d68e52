"""Translating with any seq2seq checkpoint and scoring it the way papers report it: one implementation, used by the
validation BLEU of `training/train_translation.py` and by `training/evaluate_translation.py`.

Scores are sacreBLEU (cased and lowercased) and chrF through the offline `evaluate` modules of
`hf_encoders.metrics`, each with its sacreBLEU signature.
"""

import json
import logging
import re
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from . import metrics
from .tokenization import language_tag, target_language_token

LANGUAGE_TAG = re.compile(r"<2([^<>\s]+)>")
logger = logging.getLogger(__name__)


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


DEFAULT_MAX_NEW_TOKENS = 128  # when neither the call nor the model's generation config says


class OverlongSourceError(ValueError):
    """Sources with more tokens than the model takes: `overlong` maps each one's index to its length."""

    def __init__(self, overlong: dict[int, int], limit: int):
        self.overlong, self.limit = overlong, limit
        named = ", ".join(f"source {i + 1} has {length}" for i, length in list(overlong.items())[:5])
        more = f" (and {len(overlong) - 5} more)" if len(overlong) > 5 else ""
        super().__init__(
            f"{len(overlong)} of the sources have more tokens than the model takes ({limit}, its "
            f"max_position_embeddings): {named}{more}. Give max_source_length={limit} to cut them to that, or leave "
            "them out."
        )


def overlong_sources(tokenizer: PreTrainedTokenizerBase, sources: list[str], limit: int) -> dict[int, int]:
    """The sources with more than `limit` tokens (their end-of-sentence token included): index -> length."""
    lengths = [len(ids) for ids in tokenizer(sources)["input_ids"]] if sources else []
    return {i: length for i, length in enumerate(lengths) if length > limit}


def trained_directions(config) -> list[tuple[str, str]]:
    """The (source, target) languages a model was trained to translate, as its training recorded them in its config
    (`translation_directions`, "de-en"); none for a model that does not record them."""
    return [tuple(direction.split("-", 1)) for direction in getattr(config, "translation_directions", None) or []]


def warn_direction(config, target_language: str) -> None:
    """Warn when `target_language` is not one the model was trained to translate into (a De->En model asked for
    German still writes English)."""
    directions = trained_directions(config)
    if directions and target_language not in {target for _, target in directions}:
        trained = ", ".join(f"{source}->{target}" for source, target in directions)
        logger.warning(
            "This model was trained to translate %s, not into %r: its output will likely be in the language it was "
            "trained to write.",
            trained,
            target_language,
        )


def decoding(generation_config, num_beams: int | None, length_penalty: float | None, max_new_tokens: int | None):
    """The beams, length penalty and new-token budget of a translation: those given, else the model's generation
    config (what pipelines use: the decoding a run of this package chose on validation, and its max_new_tokens),
    else 1 beam, 1.0 and `DEFAULT_MAX_NEW_TOKENS`."""
    return {
        "num_beams": num_beams or getattr(generation_config, "num_beams", None) or 1,
        "length_penalty": length_penalty if length_penalty is not None else generation_config.length_penalty,
        "max_new_tokens": max_new_tokens or generation_config.max_new_tokens or DEFAULT_MAX_NEW_TOKENS,
    }


@torch.no_grad()
def translate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    sources: list[str],
    target_language: str,
    batch_size: int = 32,
    num_beams: int | None = None,
    max_new_tokens: int | None = None,
    length_penalty: float | None = None,
    show_progress: bool = True,
    max_source_length: int | None = None,
    **generate_kwargs,
) -> list[str]:
    """Translate `sources` with `model.generate`, in batches of similar lengths (less padding); the order of the
    output follows `sources`, and an empty (or blank) source translates to an empty string, without generating.

    When the tokenizer has language tags, generation starts with the target language's (`<2de>`), and a language
    without one is a ValueError; a tokenizer without tags (Marian's) needs none. A target the model was not trained
    to write (its config's `translation_directions`) is warned about. `num_beams`, `length_penalty` and
    `max_new_tokens` not given are the model's generation config's, as in pipelines (`decoding`). A source longer than
    the model's `max_position_embeddings` is an `OverlongSourceError` naming it, unless `max_source_length` cuts the
    sources to that many tokens. `generate_kwargs` go to `generate` as they are (e.g. `early_stopping=True`)."""
    forced = target_language_start(tokenizer, target_language)
    warn_direction(model.config, target_language)
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit and max_source_length is None and (overlong := overlong_sources(tokenizer, sources, limit)):
        raise OverlongSourceError(overlong, limit)
    options = decoding(model.generation_config, num_beams, length_penalty, max_new_tokens)
    truncation = {"truncation": True, "max_length": max_source_length} if max_source_length else {}
    was_training = model.training
    model.eval()
    order = sorted((i for i in range(len(sources)) if sources[i].strip()), key=lambda i: len(sources[i]))
    hypotheses = [""] * len(sources)
    for start in tqdm(range(0, len(order), batch_size), desc="translating", disable=not show_progress, leave=False):
        chunk = order[start : start + batch_size]
        inputs = tokenizer([sources[i] for i in chunk], return_tensors="pt", padding=True, **truncation)
        output = model.generate(**inputs.to(model.device), **options, **forced, **generate_kwargs)
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


__all__ = [
    "translate",
    "OverlongSourceError",
    "overlong_sources",
    "trained_directions",
    "tagged_languages",
    "target_language_start",
    "score_translations",
    "write_translations",
]
