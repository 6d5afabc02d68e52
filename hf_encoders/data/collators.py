"""Collators and batching: batches of tensors from prepared examples (needs torch and transformers only).

`MLMCollator` (dynamic masking, 80/10/10, optional whole-word masking, padded or padding-free batches),
`Seq2SeqCollator` (labels padded with -100, or padding-free) and `DenoisingCollator` (BART's sentence permutation and
text infilling); `build_dataloader` batches, optionally grouping examples of similar length. Collators that draw
noise are `ResumableCollator`s through the `SeededNoise` mixin: the k-th batch's noise is seeded by (seed, k), so a
resumed run draws what an uninterrupted one would.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from transformers import DataCollatorForSeq2Seq, PreTrainedTokenizerBase
from transformers.trainer_pt_utils import LengthGroupedSampler


def _sequences(examples: list[dict], key: str = "input_ids") -> list[list[int]]:
    """Split packed blocks into their documents (a block without `lengths` is one sequence)."""
    sequences = []
    for example in examples:
        ids, start = list(example[key]), 0
        for length in example.get("lengths") or [len(ids)]:
            sequences.append(ids[start : start + length])
            start += length
    return sequences


def _flatten(sequences: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.tensor([token for sequence in sequences for token in sequence])[None]
    positions = torch.cat([torch.arange(len(sequence)) for sequence in sequences])[None]
    return ids, positions


def _pad(sequences: list[list[int]], value: int, multiple: int | None = None) -> torch.Tensor:
    longest = max(map(len, sequences))
    if multiple:
        longest = -(-longest // multiple) * multiple
    padded = torch.full((len(sequences), longest), value)
    for row, sequence in enumerate(sequences):
        padded[row, : len(sequence)] = torch.tensor(sequence)
    return padded


@runtime_checkable
class ResumableCollator(Protocol):
    """A collator whose batches depend on how many it has made (noise drawn per call): the training loop tells it,
    on resume and at each epoch, the index of the next batch, so that a resumed run draws what an uninterrupted one
    would."""

    def resume_at(self, batch_index: int) -> None: ...


class SeededNoise:
    """Per-call noise for collators with `seed` and `calls` fields: the k-th call draws from a generator seeded by
    (seed, k), so a run is reproducible and a resumed one (`resume_at`) draws what an uninterrupted one would."""

    seed: int | None
    calls: int

    def resume_at(self, batch_index: int) -> None:
        self.calls = batch_index

    def next_generator(self) -> torch.Generator | None:
        generator = None if self.seed is None else torch.Generator().manual_seed(self.seed * 1_000_003 + self.calls)
        self.calls += 1
        return generator


def special_token_table(tokenizer: PreTrainedTokenizerBase) -> torch.Tensor:
    """A boolean per vocabulary id: is it a special token?"""
    special = torch.zeros(len(tokenizer), dtype=torch.bool)
    special[tokenizer.all_special_ids] = True
    return special


def word_start_table(tokenizer: PreTrainedTokenizerBase) -> torch.Tensor:
    """A boolean per vocabulary id: does the token start a word? A token continues the word before it if WordPiece
    marks it with "##", or if the vocabulary marks word starts with "▁" (SentencePiece-style BPE/Unigram) and it has
    none. Special tokens start words."""
    vocab, special = tokenizer.get_vocab(), special_token_table(tokenizer)
    metaspace = any(token.startswith("▁") for token in vocab)
    starts_word = torch.ones(len(tokenizer), dtype=torch.bool)
    for token, index in vocab.items():
        if token.startswith("##") or (metaspace and not token.startswith("▁") and not special[index]):
            starts_word[index] = False
    return starts_word


@dataclass
class MLMCollator(SeededNoise):
    """Dynamic masking for masked-LM training: each call draws new masks.

    `mlm_probability` of the non-special tokens are chosen (whole words with `whole_word_mask`); of those,
    `mask_replace_prob` become `[MASK]`, `random_replace_prob` a random non-special token, the rest stay; labels
    hold the original ids at chosen positions and -100 elsewhere. Special tokens are never chosen.

    With `padding_free` (the default), all documents of the batch go into one row with `position_ids` restarting at
    each document (what the encoder's padding-free path reads); otherwise each document is a padded row with an
    `attention_mask`. Either way documents never see each other.

    With a `seed`, the k-th call draws its masks from a generator seeded by (seed, k), so a run is reproducible, and a
    resumed run draws the same masks as an uninterrupted one once `calls` is set to the batches already used.
    """

    tokenizer: PreTrainedTokenizerBase
    mlm_probability: float = 0.3
    mask_replace_prob: float = 0.8
    random_replace_prob: float = 0.1
    whole_word_mask: bool = False
    padding_free: bool = True
    pad_to_multiple_of: int | None = None
    seed: int | None = None
    calls: int = 0

    def __post_init__(self):
        if not 0.0 < self.mlm_probability < 1.0:
            raise ValueError(f"mlm_probability must lie in (0, 1), got {self.mlm_probability}.")
        if (
            self.mask_replace_prob < 0
            or self.random_replace_prob < 0
            or self.mask_replace_prob + self.random_replace_prob > 1
        ):
            raise ValueError("mask_replace_prob and random_replace_prob must be >= 0 and add up to at most 1.")
        if self.tokenizer.mask_token_id is None:
            raise ValueError("Masked-LM training needs a tokenizer with a mask token.")
        self.special = special_token_table(self.tokenizer)
        self.replacements = (~self.special).nonzero().flatten()
        self.starts_word = word_start_table(self.tokenizer)

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        generator = self.next_generator()
        sequences = _sequences(examples)
        if self.padding_free:
            input_ids, position_ids = _flatten(sequences)
            batch = {"position_ids": position_ids}
            starts = position_ids == 0
        else:
            input_ids = _pad(sequences, self.tokenizer.pad_token_id, self.pad_to_multiple_of)
            lengths = torch.tensor([len(sequence) for sequence in sequences])
            batch = {"attention_mask": (torch.arange(input_ids.shape[1]) < lengths[:, None]).long()}
            starts = torch.zeros_like(input_ids, dtype=torch.bool)
            starts[:, 0] = True
        special = self.special[input_ids]
        if "attention_mask" in batch:
            special |= batch["attention_mask"] == 0
        chosen = self._choose(input_ids, special, starts, generator)
        batch["labels"] = input_ids.masked_fill(~chosen, -100)
        batch["input_ids"] = self._replace(input_ids, chosen, generator)
        return batch

    def _choose(
        self, input_ids: torch.Tensor, special: torch.Tensor, starts: torch.Tensor, generator: torch.Generator | None
    ) -> torch.Tensor:
        if not self.whole_word_mask:
            return (torch.rand(input_ids.shape, generator=generator) < self.mlm_probability) & ~special
        word_starts = self.starts_word[input_ids] | special | starts
        words = word_starts.flatten().cumsum(0) - 1  # word index of every token
        chosen_words = torch.rand(int(words[-1]) + 1, generator=generator) < self.mlm_probability
        return chosen_words[words].view(input_ids.shape) & ~special

    def _replace(
        self, input_ids: torch.Tensor, chosen: torch.Tensor, generator: torch.Generator | None
    ) -> torch.Tensor:
        draw = torch.rand(input_ids.shape, generator=generator)
        masked = chosen & (draw < self.mask_replace_prob)
        randomised = (
            chosen & (draw >= self.mask_replace_prob) & (draw < self.mask_replace_prob + self.random_replace_prob)
        )
        picks = torch.randint(len(self.replacements), input_ids.shape, generator=generator)
        input_ids = input_ids.masked_fill(masked, self.tokenizer.mask_token_id)
        return torch.where(randomised, self.replacements[picks], input_ids)


@dataclass
class Seq2SeqCollator:
    """Batches of `input_ids`/`labels` pairs for `Seq2SeqForConditionalGeneration`, which builds the decoder inputs
    by shifting the labels. Padded: sources padded with an `attention_mask`, labels padded with -100 (transformers'
    `DataCollatorForSeq2Seq`). Padding-free: sources in one row and targets in another, with restarting
    `position_ids` and `decoder_position_ids`."""

    tokenizer: PreTrainedTokenizerBase
    padding_free: bool = False
    pad_to_multiple_of: int | None = None

    def __post_init__(self):
        self.padded = DataCollatorForSeq2Seq(
            self.tokenizer, label_pad_token_id=-100, pad_to_multiple_of=self.pad_to_multiple_of
        )

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        if not self.padding_free:
            return dict(self.padded([{k: example[k] for k in ("input_ids", "labels")} for example in examples]))
        input_ids, position_ids = _flatten([list(example["input_ids"]) for example in examples])
        labels, decoder_position_ids = _flatten([list(example["labels"]) for example in examples])
        return {
            "input_ids": input_ids,
            "position_ids": position_ids,
            "labels": labels,
            "decoder_position_ids": decoder_position_ids,
        }


@dataclass
class PairCollator:
    """Batches of text pairs for contrastive training: `input_ids` and `positive_input_ids` each padded with their
    `attention_mask` and `positive_attention_mask`."""

    tokenizer: PreTrainedTokenizerBase

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        batch = {}
        for prefix in ("", "positive_"):
            side = self.tokenizer.pad([{"input_ids": example[f"{prefix}input_ids"]} for example in examples])
            batch[f"{prefix}input_ids"] = torch.as_tensor(side["input_ids"])
            batch[f"{prefix}attention_mask"] = torch.as_tensor(side["attention_mask"])
        return batch


@dataclass
class DenoisingCollator(SeededNoise):
    """BART-style noise for denoising autoencoding (Lewis et al. 2020): sentence permutation, then text infilling.

    With probability `permute_sentence_ratio`, the sentences of a multi-sentence segment are shuffled. Then
    round(`mask_ratio` x its words) of each segment's words are hidden, in spans whose lengths are drawn from a
    Poisson distribution with mean `poisson_lambda`; each span becomes a single `<mask>` (a zero-length span inserts
    one), so the model must also infer how many tokens are missing. Spans cover whole words and never touch each
    other. `labels` (the original segment, from `prepare_denoising`) are left as they are: the model reconstructs
    it. Batches are `Seq2SeqCollator`'s, padded or padding-free; `seed` and `calls` work as in `MLMCollator`.
    """

    tokenizer: PreTrainedTokenizerBase
    mask_ratio: float = 0.3
    poisson_lambda: float = 3.0
    permute_sentence_ratio: float = 1.0
    padding_free: bool = False
    pad_to_multiple_of: int | None = None
    seed: int | None = None
    calls: int = 0

    def __post_init__(self):
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must lie in [0, 1), got {self.mask_ratio}.")
        if self.poisson_lambda <= 0:
            raise ValueError(f"poisson_lambda must be positive, got {self.poisson_lambda}.")
        if not 0.0 <= self.permute_sentence_ratio <= 1.0:
            raise ValueError(f"permute_sentence_ratio must lie in [0, 1], got {self.permute_sentence_ratio}.")
        if self.mask_ratio > 0 and self.tokenizer.mask_token_id is None:
            raise ValueError("Text infilling needs a tokenizer with a mask token (seq2seq tokenizers have <mask>).")
        self.starts_word = word_start_table(self.tokenizer)
        self.batcher = Seq2SeqCollator(self.tokenizer, self.padding_free, self.pad_to_multiple_of)

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        generator = self.next_generator()
        noised = [{"input_ids": self.corrupt(example, generator), "labels": example["labels"]} for example in examples]
        return self.batcher(noised)

    def corrupt(self, example: dict, generator: torch.Generator | None = None) -> list[int]:
        """The noised `input_ids` of one example from `prepare_denoising` (its final `</s>` stays in place)."""
        tokens, end = list(example["input_ids"][:-1]), list(example["input_ids"][-1:])
        lengths = example.get("sentence_lengths") or [len(tokens)]
        if len(lengths) > 1 and torch.rand((), generator=generator) < self.permute_sentence_ratio:
            bounds = torch.tensor([0, *lengths]).cumsum(0).tolist()
            order = torch.randperm(len(lengths), generator=generator).tolist()
            tokens = [token for i in order for token in tokens[bounds[i] : bounds[i + 1]]]
        return self.infill(tokens, generator) + end

    def infill(self, tokens: list[int], generator: torch.Generator | None = None) -> list[int]:
        """Text infilling: whole-word spans of Poisson lengths, each replaced by one `<mask>`."""
        if not tokens or self.mask_ratio == 0:
            return tokens
        starts = self.starts_word[torch.tensor(tokens)]
        starts[0] = True
        bounds = [*starts.nonzero().flatten().tolist(), len(tokens)]
        words = [tokens[bounds[i] : bounds[i + 1]] for i in range(len(bounds) - 1)]
        hidden = round(len(words) * self.mask_ratio)
        if hidden == 0:
            return tokens
        spans: list[int] = []
        rate = torch.tensor([self.poisson_lambda])
        while sum(spans) < hidden:
            spans.append(int(torch.poisson(rate, generator=generator)))
        spans[-1] -= sum(spans) - hidden
        kept = len(words) - hidden
        if len(spans) > kept + 1:  # more spans than gaps between kept words: the surplus joins the last span
            spans = [*spans[:kept], sum(spans[kept:])]
        gaps = torch.randperm(kept + 1, generator=generator)[: len(spans)].sort().values.tolist()
        span_at = dict(zip(gaps, spans, strict=True))
        noised, word = [], 0
        for gap in range(kept + 1):
            if gap in span_at:
                noised.append(self.tokenizer.mask_token_id)
                word += span_at[gap]
            if gap < kept:
                noised.extend(words[word])
                word += 1
        return noised


def build_dataloader(
    dataset: torch.utils.data.Dataset,
    collator: Callable[[list[dict]], dict],
    batch_size: int,
    shuffle: bool = True,
    group_by_length: bool = False,
    seed: int = 0,
    num_workers: int = 0,
) -> torch.utils.data.DataLoader:
    """A `DataLoader` over `dataset`. With `group_by_length`, batches hold examples of similar length (transformers'
    `LengthGroupedSampler`: random mega-batches sorted by length), which keeps padding low."""
    generator = torch.Generator().manual_seed(seed)
    sampler = None
    if group_by_length:
        lengths = [len(ids) for ids in dataset["input_ids"]]
        sampler = LengthGroupedSampler(batch_size, lengths=lengths, generator=generator)
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle and sampler is None,
        sampler=sampler,
        collate_fn=collator,
        generator=generator,
        num_workers=num_workers,
    )


__all__ = [
    "DenoisingCollator",
    "MLMCollator",
    "PairCollator",
    "ResumableCollator",
    "SeededNoise",
    "Seq2SeqCollator",
    "build_dataloader",
    "special_token_table",
    "word_start_table",
]
