"""Translation: `train.py` (hf-encoders train-translation), `evaluate.py` (evaluate-translation), `card.py`."""

from .. import Task

TASK = Task(
    name="translation",
    commands={"train-translation": "train", "evaluate-translation": "evaluate"},
    scripts=("train_translation",),
    summary="train a translation model, pick it on validation BLEU, score it on test (training/train_translation.py)",
)
