"""The masked-LM evaluation: loss, perplexity and accuracy on the masked tokens, with the same masks every time."""

from accelerate import Accelerator
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ...data import MLMCollator
from ...training import evaluate_loss


def evaluate_masked_lm(
    model: PreTrainedModel,
    dataset,
    tokenizer: PreTrainedTokenizerBase,
    accelerator: Accelerator,
    batch_size: int = 16,
    mlm_probability: float = 0.15,
    seed: int = 1234,
    padding_free: bool = True,
) -> dict[str, float]:
    """Masked-LM loss (per masked token), perplexity and masked-token accuracy, with the same masks every time;
    `padding_free=False` for models that read padded rows (BERT, ModernBERT)."""
    collator = MLMCollator(
        tokenizer, mlm_probability=mlm_probability, padding_free=padding_free, seed=seed + accelerator.process_index
    )
    return evaluate_loss(model, dataset, collator, accelerator, batch_size)


__all__ = ["evaluate_masked_lm"]
