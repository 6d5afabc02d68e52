"""Masked-LM pretraining of an encoder: `train.py` (hf-encoders pretrain), `evaluation.py`, `card.py`."""

from .. import Task

TASK = Task(
    name="masked_lm",
    commands={"pretrain": "train"},
    scripts=("pretrain_mlm",),
    summary="pretrain an encoder with masked-LM (training/pretrain_mlm.py)",
)
