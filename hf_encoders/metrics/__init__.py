"""`evaluate` metric modules that load without the Hub: `evaluate.load("sacrebleu")` fetches its script from the
Hub, these are folders `evaluate.load(<path>)` reads locally.

    metric = hf_encoders.metrics.load("sacrebleu_bleu")      # or evaluate.load(hf_encoders.metrics.path("..."))
    metric.compute(predictions=hypotheses, references=references, lowercase=True)
"""

from pathlib import Path

import evaluate

METRICS = ("sacrebleu_bleu", "sacrebleu_chrf", "classification")


def path(name: str) -> str:
    """The folder of metric `name`, for `evaluate.load`."""
    if name not in METRICS:
        raise ValueError(f"Unknown metric {name!r}; hf_encoders ships {', '.join(METRICS)}.")
    return str(Path(__file__).parent / name)


def load(name: str, **kwargs) -> evaluate.EvaluationModule:
    return evaluate.load(path(name), **kwargs)


__all__ = ["METRICS", "path", "load"]
