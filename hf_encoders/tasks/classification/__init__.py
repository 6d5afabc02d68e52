"""Fine-tuning classifiers: `finetune.py` (hf-encoders finetune), `card.py`."""

from .. import Task

TASK = Task(
    name="classification",
    commands={"finetune": "finetune"},
    scripts=("finetune_classification",),
    summary="fine-tune an encoder for sequence or token classification (training/finetune_classification.py)",
)
