"""Embedding models: `train.py` (hf-encoders train-embeddings: contrastive training with in-batch negatives),
`evaluate.py` (hf-encoders evaluate-embeddings: retrieval on sentence pairs, a linear probe on labelled texts),
`card.py`."""

from .. import Task

TASK = Task(
    name="embeddings",
    commands={"train-embeddings": "train", "evaluate-embeddings": "evaluate"},
    scripts=("train_embeddings",),
    summary="train an embedding model with in-batch negatives; retrieval and probe scores (training/train_embeddings.py)",
)
