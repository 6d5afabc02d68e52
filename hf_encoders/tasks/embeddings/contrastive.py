"""The contrastive objective of embedding training: in-batch negatives over the encoder's pooled embeddings."""

from pathlib import Path

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import ModelOutput

from ...modeling_encoder import EncoderModel


class InBatchNegatives(nn.Module):
    """An encoder trained so that each anchor's embedding is closest (cosine) to its own positive's among the batch's:
    cross-entropy over `scale` x the cosine similarities, the other positives of the batch the negatives, as
    sentence-transformers' `MultipleNegativesRankingLoss`; `symmetric` adds the positive-to-anchor direction
    (`directions=("query_to_doc", "doc_to_query")` there). The embedding is the encoder's `pooler_output` (the pooling
    of `config.classifier_pooling`), which `save_pretrained` records for `SentenceTransformer(folder)`."""

    def __init__(self, encoder: PreTrainedModel, scale: float = 20.0, symmetric: bool = True):
        super().__init__()
        if not isinstance(encoder, EncoderModel):
            raise ValueError(
                f"Embedding training takes an encoder of this family (EncoderModel), got {type(encoder).__name__}; "
                "convert a ModernBERT checkpoint with `hf-encoders convert`, or train other encoders with "
                "sentence-transformers' own trainer."
            )
        self.encoder, self.scale, self.symmetric = encoder, scale, symmetric

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Unit-length embeddings of a padded batch."""
        pooled = self.encoder(input_ids=input_ids, attention_mask=attention_mask).pooler_output
        return nn.functional.normalize(pooled.float(), dim=-1)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        positive_input_ids: torch.Tensor,
        positive_attention_mask: torch.Tensor,
        **kwargs,
    ) -> ModelOutput:
        anchors = self.embed(input_ids, attention_mask)
        positives = self.embed(positive_input_ids, positive_attention_mask)
        scores = self.scale * anchors @ positives.T  # (anchors, positives): the diagonal holds the pairs
        targets = torch.arange(len(scores), device=scores.device)
        loss = nn.functional.cross_entropy(scores, targets)
        if self.symmetric:
            loss = (loss + nn.functional.cross_entropy(scores.T, targets)) / 2
        return ModelOutput(loss=loss, logits=scores)

    def save_pretrained(self, save_directory: str | Path, **kwargs) -> None:
        """The encoder, which is the embedding model (with the files that make it a sentence-transformers model)."""
        self.encoder.save_pretrained(save_directory, **kwargs)


def retrieval_scores(queries: torch.Tensor, documents: torch.Tensor, k: int = 10) -> dict[str, float]:
    """Query i's relevant document is document i: recall@1 (the relevant one ranked first) and MRR@k (the mean of
    1 / its rank, 0 beyond rank k), over unit-length embeddings ranked by cosine similarity."""
    scores = queries.float() @ documents.float().T
    relevant = scores.diagonal()[:, None]
    rank = (scores > relevant).sum(dim=1) + 1  # ties rank the relevant document first
    reciprocal = torch.where(rank <= k, 1.0 / rank, torch.zeros_like(rank, dtype=torch.float))
    return {"recall@1": (rank == 1).float().mean().item(), f"mrr@{k}": reciprocal.mean().item()}


__all__ = ["InBatchNegatives", "retrieval_scores"]
