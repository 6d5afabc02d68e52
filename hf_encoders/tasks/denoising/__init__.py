"""Denoising and variational autoencoders: `pretrain.py` (hf-encoders pretrain-denoising), `anomaly.py`
(evaluate-anomaly), `card.py`."""

from .. import Task

TASK = Task(
    name="denoising",
    commands={"pretrain-denoising": "pretrain", "evaluate-anomaly": "anomaly"},
    scripts=("pretrain_denoising",),
    summary="pretrain a denoising or variational autoencoder (training/pretrain_denoising.py)",
)
