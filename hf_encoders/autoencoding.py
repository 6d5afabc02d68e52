"""What autoencoders are for, on this package's models: sentence embeddings, anomaly scores, and their evaluation.

- `sentence_embeddings`: one vector per text — the posterior mean of a seq2seq model with a variational bottleneck,
  else the mean-pooled encoder output (`pooler_output`) of a seq2seq model or an encoder — for retrieval and
  clustering (cosine similarity once normalised).
- Anomaly scores, higher for text less like the training data: `reconstruction_scores` (a denoising
  autoencoder's cross-entropy per token when it rebuilds the text from a noised copy, the same noise for every
  call) and `pseudo_log_likelihood_scores` (a masked LM's negative pseudo-log-likelihood per token: each token
  masked in turn and predicted from all the others, Salazar et al. 2020).
- `auroc` (how often an out-of-domain text scores above an in-domain one) and `active_units` (latent dimensions
  whose posterior mean varies across the data, Burda et al. 2016).

Texts longer than `max_length` tokens are cut to it, and the number cut is logged.
"""

import logging
import zlib

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .data import DenoisingCollator, Seq2SeqCollator
from .tokenization import language_tag, target_language_token

logger = logging.getLogger(__name__)


def _encode(tokenizer: PreTrainedTokenizerBase, texts: list[str], max_length: int) -> list[list[int]]:
    """Token ids with the tokenizer's special tokens; a longer text is cut to `max_length` tokens, keeping its final
    (special) token, and the number cut is logged."""
    encoded = tokenizer(list(texts), verbose=False)["input_ids"]
    if cut := sum(len(ids) > max_length for ids in encoded):
        logger.info("%d of %d texts are longer than %d tokens and were cut to them", cut, len(encoded), max_length)
    return [ids if len(ids) <= max_length else ids[: max_length - 1] + ids[-1:] for ids in encoded]


def _batches(items: list, batch_size: int, description: str, show_progress: bool):
    for start in tqdm(range(0, len(items), batch_size), desc=description, disable=not show_progress):
        yield items[start : start + batch_size]


@torch.no_grad()
def sentence_embeddings(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: list[str],
    batch_size: int = 64,
    max_length: int = 512,
    normalize: bool = True,
    show_progress: bool = False,
) -> torch.Tensor:
    """(len(texts), dim) embeddings: the posterior mean with a variational bottleneck, else the encoder's pooled
    output (an encoder-decoder's encoder, or an encoder model); unit length with `normalize`."""
    model.eval()
    variational = getattr(model.config, "latent_size", None) is not None  # a sentence VAE (Seq2SeqVAEConfig)
    encoder = model.get_encoder() if model.config.is_encoder_decoder else getattr(model, "model", model)
    sequences = _encode(tokenizer, texts, max_length)
    embeddings = []
    for chunk in _batches(sequences, batch_size, "embedding", show_progress):
        batch = tokenizer.pad({"input_ids": chunk}, return_tensors="pt").to(model.device)
        if variational:
            pooled = model.encode_latent(batch["input_ids"], batch["attention_mask"])[0]
        else:
            pooled = encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).pooler_output
        embeddings.append(pooled.float())
    embeddings = torch.cat(embeddings)
    return torch.nn.functional.normalize(embeddings, dim=-1) if normalize else embeddings


@torch.no_grad()
def reconstruction_scores(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: list[str],
    language: str,
    mask_ratio: float = 0.3,
    poisson_lambda: float = 3.0,
    seed: int = 0,
    batch_size: int = 32,
    max_length: int = 256,
    show_progress: bool = False,
) -> torch.Tensor:
    """(len(texts),) cross-entropy per token of a denoising autoencoder rebuilding each text (`<2language>` + text
    + `</s>`) from a copy noised by text infilling (seeded by `seed` and the text: a text gets the same noise in
    every call and every batch)."""
    tag = target_language_token(tokenizer, language)
    if tag is None:
        raise ValueError(f"Unknown language {language!r}: the tokenizer has no {language_tag(language)!r} tag.")
    model.eval()
    # each text's noise is seeded by the text itself: its score does not depend on its batch or its neighbours
    noise = DenoisingCollator(tokenizer, mask_ratio, poisson_lambda, permute_sentence_ratio=0.0)
    examples = [
        {
            "input_ids": noise.corrupt(
                {"input_ids": ids}, torch.Generator().manual_seed(seed + zlib.crc32(text.encode()))
            ),
            "labels": [tag, *ids],
        }
        for text, ids in zip(texts, _encode(tokenizer, texts, max_length), strict=True)
    ]
    collator = Seq2SeqCollator(tokenizer)
    scores = []
    for chunk in _batches(examples, batch_size, "reconstruction scores", show_progress):
        batch = {key: value.to(model.device) for key, value in collator(chunk).items()}
        labels = batch.pop("labels")
        decoder_input_ids = model.prepare_decoder_input_ids_from_labels(labels)
        logits = model(**batch, decoder_input_ids=decoder_input_ids).logits.float()
        losses = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, reduction="none")
        scores.append(losses.sum(-1) / (labels != -100).sum(-1))
    return torch.cat(scores).cpu()


@torch.no_grad()
def pseudo_log_likelihood_scores(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: list[str],
    batch_size: int = 64,
    max_length: int = 128,
    show_progress: bool = False,
) -> torch.Tensor:
    """(len(texts),) negative pseudo-log-likelihood per token under a masked LM: every token of a text is masked in
    turn (one copy of the text per token) and scored by the log-probability the model gives it back."""
    if tokenizer.mask_token_id is None:
        raise ValueError("Pseudo-log-likelihood needs a masked-LM tokenizer with a mask token.")
    model.eval()
    special = set(tokenizer.all_special_ids)
    scores = []
    for ids in tqdm(_encode(tokenizer, texts, max_length), desc="pseudo-log-likelihood", disable=not show_progress):
        sequence = torch.tensor(ids, device=model.device)
        positions = torch.tensor([i for i, token in enumerate(ids) if token not in special], device=model.device)
        log_likelihood = torch.zeros((), device=model.device)
        for chunk in positions.split(batch_size):
            masked = sequence.repeat(len(chunk), 1)
            masked[torch.arange(len(chunk)), chunk] = tokenizer.mask_token_id
            logits = model(input_ids=masked).logits.float()[torch.arange(len(chunk)), chunk]
            log_likelihood += logits.log_softmax(-1).gather(-1, sequence[chunk, None]).sum()
        scores.append(-log_likelihood / max(len(positions), 1))
    return torch.stack(scores).cpu()


def auroc(in_domain: torch.Tensor, out_of_domain: torch.Tensor) -> float:
    """Area under the ROC curve of telling out-of-domain from in-domain examples by their anomaly scores: the
    probability that a random out-of-domain example scores higher than a random in-domain one (ties count half)."""
    if len(in_domain) == 0 or len(out_of_domain) == 0:
        raise ValueError("AUROC needs at least one in-domain and one out-of-domain score.")
    above = (out_of_domain[:, None] > in_domain[None, :]).double().mean()
    tied = (out_of_domain[:, None] == in_domain[None, :]).double().mean()
    return float(above + 0.5 * tied)


def active_units(latent_means: torch.Tensor, threshold: float = 0.01) -> int:
    """Latent dimensions in use: those whose posterior mean varies across examples (variance above `threshold`)."""
    return int((latent_means.float().var(dim=0) > threshold).sum())


__all__ = ["sentence_embeddings", "reconstruction_scores", "pseudo_log_likelihood_scores", "auroc", "active_units"]
