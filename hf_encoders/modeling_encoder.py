"""The hf_encoders encoder family: shared building blocks (norm, RoPE, attention, MLP, layer), `EncoderModel` and its
heads.

A modern BERT: pre-norm layers, rotary or absolute positions, gated (GLU) feed-forward blocks, optional alternating
local/global attention, and a padding-free path where sequences packed back to back (one row of `total` tokens with
`position_ids` restarting per sequence, or `cu_seq_lens_q`, as `DataCollatorWithFlattening` produces) attend only
within their own sequence. Padded batches, as every other collator, `Trainer` and pipeline make them, take the same
path inside the model (`config.unpadding`): their real tokens are laid out as a padding-free row, and the outputs go
back to the batch's shape. The attention math lives once, in `eager_attention_forward` and transformers'
`ALL_ATTENTION_FUNCTIONS` (sdpa, flex_attention, flash_attention_2, ...); masks come from `transformers.masking_utils`.

This file is copied next to every saved checkpoint for `trust_remote_code=True`: it imports only `torch`,
`transformers` and its sibling `configuration_hf_encoders`.
"""

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property, partial
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.masking_utils import create_bidirectional_mask, create_bidirectional_sliding_window_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import (
    BaseModelOutputWithPooling,
    MaskedLMOutput,
    SequenceClassifierOutput,
    TokenClassifierOutput,
)
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, PreTrainedModel
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs
from transformers.utils.generic import can_return_tuple, is_flash_attention_requested
from transformers.utils.import_utils import is_torchdynamo_compiling
from transformers.utils.output_capturing import capture_outputs

from .configuration_hf_encoders import EncoderConfig

# Auto classes under which every checkpoint of the family is saved (`auto_map`), so that a folder saved from one
# head also loads through the others with `trust_remote_code=True` (a masked-LM checkpoint as `AutoModel`, say).
ENCODER_AUTO_MAP = {
    "AutoConfig": "configuration_hf_encoders.EncoderConfig",
    "AutoModel": "modeling_encoder.EncoderModel",
    "AutoModelForMaskedLM": "modeling_encoder.EncoderForMaskedLM",
    "AutoModelForSequenceClassification": "modeling_encoder.EncoderForSequenceClassification",
    "AutoModelForTokenClassification": "modeling_encoder.EncoderForTokenClassification",
}


# --------------------------------------------------------------------------------------------------------------------
# The user's transformers: this file runs on whatever version is installed (pyproject.toml names the tested range), so
# an argument that transformers renames must be understood under both names, and anything not understood must fail.

# The keyword arguments transformers threads through a forward (output flags, loss normalisation, flash attention's
# variable-length offsets); `token_type_ids`, which BERT-style tokenizers return, are not read (this family has no
# segment embeddings, as ModernBERT). Any other keyword is refused rather than dropped: transformers 5.24 renamed
# `past_key_values` to `cache`, and a forward that swallowed the new name decoded without its history.
KNOWN_FORWARD_KWARGS = frozenset(TransformersKwargs.__annotations__) | {"token_type_ids"}


def checked_forward_kwargs(kwargs: dict[str, Any], model: nn.Module) -> dict[str, Any]:
    """`kwargs` less what is not read (`token_type_ids`); a TypeError for any keyword outside `KNOWN_FORWARD_KWARGS`."""
    unknown = sorted(set(kwargs) - KNOWN_FORWARD_KWARGS)
    if unknown:
        raise TypeError(
            f"{type(model).__name__}.forward() got unexpected keyword arguments {unknown}: the model does not read "
            "them. If a transformers release passes them (a renamed cache argument, say), this version of the model "
            "does not support that release yet; hf_encoders' pyproject.toml names the tested range."
        )
    return {name: value for name, value in kwargs.items() if name != "token_type_ids"}


# --------------------------------------------------------------------------------------------------------------------
# Input checks: bad input gets a ValueError that says what is wrong, never an index error from deep inside torch.
#
# A check that reads a tensor's values on the host (`.tolist()`, `.item()`, a boolean index) makes the host wait for
# the device. A forward reads everything its checks and its token layout need in one copy (`read_batch`); under
# `torch.compile` it reads nothing (dynamo cannot read tensor values on the host) and the checks are skipped.


def read_on_host(values: dict[str, torch.Tensor]) -> dict[str, int]:
    """0-d integer tensors, read on the host in one device-to-host copy."""
    if not values:
        return {}
    read = torch.stack([value.to(torch.long) for value in values.values()]).tolist()
    return dict(zip(values, read, strict=True))


def id_bounds(ids: torch.Tensor, name: str, ignore_index: int | None = None) -> dict[str, torch.Tensor]:
    """`{name}_low` and `{name}_high`: the smallest and largest of `ids` leaving out `ignore_index` (0-d tensors, to
    be read with `read_on_host`); nothing for an empty tensor."""
    if ids.numel() == 0:
        return {}
    if ignore_index is not None:
        ids = ids.masked_fill(ids == ignore_index, 0)
    low, high = torch.aminmax(ids)
    return {f"{name}_low": low, f"{name}_high": high}


def check_id_bounds(read: dict[str, int], vocab_size: int, name: str = "input_ids") -> None:
    """Raise a ValueError if the ids read by `id_bounds(..., name)` fall outside `[0, vocab_size)`."""
    if f"{name}_low" not in read:
        return
    low, high = read[f"{name}_low"], read[f"{name}_high"]
    if low < 0:
        raise ValueError(f"`{name}` contains negative ids (smallest {low}); ids must lie in [0, {vocab_size}).")
    if high >= vocab_size:
        raise ValueError(
            f"`{name}` contains id {high}, {high - vocab_size + 1} beyond the vocabulary: vocab_size is {vocab_size}, "
            f"so ids must lie in [0, {vocab_size})."
        )


def check_class_bounds(read: dict[str, int], num_labels: int, ignore_index: int = -100) -> None:
    """Raise a ValueError if the class ids read by `id_bounds(labels, "labels", ignore_index)` fall outside
    `[0, num_labels)`."""
    if "labels_low" not in read:
        return
    low, high = read["labels_low"], read["labels_high"]
    if low < 0 or high >= num_labels:
        raise ValueError(
            f"`labels` contains label {low if low < 0 else high}, which is out of range: num_labels is {num_labels} "
            f"(labels must be 0..{num_labels - 1}, or {ignore_index} to ignore)."
        )


def input_shape_of(
    input_ids: torch.Tensor | None,
    inputs_embeds: torch.Tensor | None,
    names: tuple[str, str] = ("input_ids", "inputs_embeds"),
) -> tuple[torch.Size, str]:
    """The (batch, sequence) shape of the one given of `input_ids` and `inputs_embeds`, checked, and its name."""
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError(f"Pass exactly one of `{names[0]}` or `{names[1]}`.")
    name = names[0] if input_ids is not None else names[1]
    shape = input_ids.shape if input_ids is not None else inputs_embeds.shape[:-1]
    check_input_shape(shape, name)
    return shape, name


def records_outputs(config: EncoderConfig, kwargs: dict[str, Any]) -> bool:
    """Whether a forward returns hidden states or attentions (they keep the batch's shape: it is not unpadded)."""
    return any(kwargs.get(flag, getattr(config, flag)) for flag in ("output_hidden_states", "output_attentions"))


def check_input_shape(shape: torch.Size, name: str = "input_ids", dims: str = "(batch_size, sequence_length)"):
    """Raise a ValueError unless `shape` is 2D with at least one sequence."""
    if len(shape) != 2:
        raise ValueError(f"`{name}` must be 2D {dims}, got shape {tuple(shape)}.")
    if not is_torchdynamo_compiling() and shape[0] == 0:
        raise ValueError(f"`{name}` is an empty batch (shape {tuple(shape)}): give at least one sequence.")


def check_sequence_length(length: int, max_position_embeddings: int, name: str = "input_ids") -> None:
    if is_torchdynamo_compiling():  # a compiled decoding step's cache length is a tensor: no host-side check
        return
    if length == 0:
        raise ValueError(f"`{name}` is empty (sequence length 0): give at least one token.")
    if length > max_position_embeddings:
        raise ValueError(
            f"`{name}` has sequences of {length} tokens, {length - max_position_embeddings} more than "
            f"max_position_embeddings={max_position_embeddings}; truncate them (e.g. tokenizer(..., truncation=True, "
            f"max_length={max_position_embeddings}))."
        )


def check_attention_mask(
    attention_mask: torch.Tensor | None, input_shape: torch.Size, name: str = "input_ids", past_length: int = 0
):
    """A 2D mask covers the `past_length` cached tokens (decoding with a cache) and the new ones."""
    if attention_mask is None or attention_mask.ndim == 4 or is_torchdynamo_compiling():  # 4D: used as given
        return
    batch_size, length = input_shape
    if tuple(attention_mask.shape) != (batch_size, past_length + length):
        cached = f" and {past_length} cached tokens: (batch_size, {past_length} + {length})" if past_length else ""
        raise ValueError(
            f"`attention_mask` has shape {tuple(attention_mask.shape)} but `{name}` has shape {tuple(input_shape)}; "
            f"the mask must cover its (batch_size, sequence_length){cached}."
        )


# --------------------------------------------------------------------------------------------------------------------
# Padding-free batches, and padded batches unpadded inside the model

# A padded batch is unpadded (token-wise work on its real tokens only) when at least this share of it, and at least
# this many positions, are padding: below either, the gathers and scatters around each attention cost about what the
# padding would. Without gradients (inference) they weigh more against a forward alone than against a training step
# (measured on a CPU: benchmarks/RESULTS.md#speed-on-a-cpu).
UNPAD_MIN_PADDING = 0.05
UNPAD_MIN_PADDING_INFERENCE = 0.1
UNPAD_MIN_PADDING_TOKENS = 16
# SDPA on each sequence of a padding-free batch alone (CPU, global layers) where its sequences hold this many tokens on
# average: shorter ones cost more in kernel calls than the grid's padding does (benchmarks/RESULTS.md, "Attention")
EACH_SEQUENCE_MIN_MEAN_TOKENS = 32


def unpadding_pays(padding: int, positions: int, gradients: bool) -> bool:
    """Whether a padded batch of `positions` token positions, `padding` of them padding, is worth unpadding, in a
    forward that records `gradients` (training) or not (inference)."""
    share = UNPAD_MIN_PADDING if gradients else UNPAD_MIN_PADDING_INFERENCE
    return padding >= max(share * positions, UNPAD_MIN_PADDING_TOKENS)


@dataclass
class PackedBatch:
    """Layout of a padding-free batch: `num_sequences` sequences laid back to back in one row of `total` tokens.

    Token-wise work (projections, MLP, norms) runs on the `total` real tokens only. Attention kernels without a
    variable-length mode (eager, sdpa, flex) see the sequences re-padded into a `padding_mask`-shaped grid with
    `pad`, and their output comes back with `unpad`; flash attention reads `cu_seq_lens` directly, and SDPA on the CPU
    runs on each sequence alone where that pays (`EncoderAttention.attends_each_sequence`). A padded batch
    unpadded inside the model re-pads into its own (batch_size, sequence_length) grid and attention mask.
    """

    cu_seq_lens: torch.Tensor  # (num_sequences + 1,) int32 offsets of the sequences in the row
    max_length: int  # longest sequence
    index: torch.Tensor  # (total,) where each token sits in the flattened grid of `padding_mask`
    padding_mask: torch.Tensor  # (num_sequences, grid_length), True on real tokens
    position_ids: torch.Tensor  # (1, total) position of each token

    @classmethod
    def from_cu_seq_lens(cls, cu_seq_lens: torch.Tensor, total: int, longest: int) -> "PackedBatch":
        """Sequences of `total` tokens at offsets `cu_seq_lens` (checked by the batch's probe), the longest
        `longest`."""
        cu = cu_seq_lens.to(torch.long).flatten()
        device = cu.device
        starts = torch.zeros(total, dtype=torch.long, device=device)
        starts[cu[1:-1]] = 1
        sequence = starts.cumsum(0)  # which sequence each token belongs to
        position = torch.arange(total, device=device) - cu[:-1][sequence]
        return cls(
            cu_seq_lens=cu.to(torch.int32),
            max_length=longest,
            index=sequence * longest + position,
            padding_mask=torch.arange(longest, device=device) < cu.diff()[:, None],
            position_ids=position[None],
        )

    @classmethod
    def from_attention_mask(
        cls, attention_mask: torch.Tensor, total: int, longest: int, position_ids: torch.Tensor | None
    ) -> "PackedBatch":
        """The `total` real tokens of a padded batch, the longest row holding `longest`; positions as the padded
        batch has them (`position_ids`, or the column)."""
        mask = attention_mask.bool()
        index = torch.nonzero_static(mask.flatten(), size=total).flatten()
        if position_ids is None:
            position_ids = torch.arange(mask.shape[1], device=mask.device)
        lengths = mask.sum(dim=1)
        return cls(
            cu_seq_lens=nn.functional.pad(lengths.cumsum(0), (1, 0)).to(torch.int32),
            max_length=longest,
            index=index,
            padding_mask=mask,
            position_ids=position_ids.expand(mask.shape).flatten().index_select(0, index)[None],
        )

    @property
    def num_sequences(self) -> int:
        return self.padding_mask.shape[0]

    @cached_property
    def lengths(self) -> list[int]:
        """Each sequence's token count, read on the host once per batch (only on the CPU, where no device waits)."""
        return self.cu_seq_lens.diff().tolist()

    def mask_arguments(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Stand-ins for `inputs_embeds` (only its shape, dtype and device are read) and the 2D `attention_mask`
        that make `transformers.masking_utils` build masks for the re-padded layout."""
        return like.new_empty(*self.padding_mask.shape, 0), self.padding_mask

    def pad(self, packed: torch.Tensor) -> torch.Tensor:
        """(1, total, *rest) -> (num_sequences, grid_length, *rest), zeros on padding."""
        rest = packed.shape[2:]
        padded = packed.new_zeros(self.padding_mask.numel(), *rest)
        padded = padded.index_copy(0, self.index, packed[0])
        return padded.view(*self.padding_mask.shape, *rest)

    def unpad(self, padded: torch.Tensor) -> torch.Tensor:
        """(num_sequences, grid_length, *rest) -> (1, total, *rest)."""
        return padded.flatten(0, 1).index_select(0, self.index)[None]


@dataclass
class BatchLayout:
    """What a batch's probe found: the layout its layers run in, and what was read on the host for the checks and
    the heads."""

    packed: PackedBatch | None = None  # sequences back to back in one row, given so or unpadded from a padded batch
    unpadded: bool = False  # `packed` holds a padded batch's real tokens: outputs go back to the batch's shape
    padding: bool | None = None  # whether the grid the attention kernels see holds padding (None: a 4D mask)
    read: dict[str, int] | None = None  # everything read on the host (`labels_low`, `labelled`, ...)
    labelled: torch.Tensor | None = None  # where the labels are not -100 (flat indices), for a sparse head

    def mark_dynamic(self) -> None:
        """Under `torch.compile`, the sizes that vary from batch to batch (token count, longest sequence, number of
        sequences and of labels) are dynamic dimensions of the graph after the read from its first compilation, so
        that a batch of other lengths reuses it."""
        packed = self.packed
        sized = [(self.labelled, 0)]
        if packed is not None:
            sized += [(packed.index, 0), (packed.position_ids, 1), (packed.cu_seq_lens, 0)]
            sized += [(packed.padding_mask, 0), (packed.padding_mask, 1)]
        for tensor, dim in sized:
            if tensor is not None:
                torch._dynamo.maybe_mark_dynamic(tensor, dim)


def _cu_seq_lens_reads(cu_seq_lens: torch.Tensor) -> dict[str, torch.Tensor]:
    cu = cu_seq_lens.to(torch.long).flatten()
    lengths = cu.diff()
    return {"first": cu[0], "last": cu[-1], "shortest": lengths.min(), "longest": lengths.max()}


def _position_ids_reads(position_ids: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Where sequences start in a row of positions (a new one wherever a position does not continue the previous
    token's), and how many there are, the shortest and the longest, without a host read."""
    positions = position_ids.flatten()
    starts = torch.ones_like(positions, dtype=torch.bool)
    starts[1:] = positions[1:] != positions[:-1] + 1
    token = torch.arange(positions.numel(), device=positions.device)
    offset = token - torch.where(starts, token, 0).cummax(0).values  # place of each token in its sequence
    ends = torch.ones_like(starts)
    ends[:-1] = starts[1:]
    lengths = torch.where(ends, offset + 1, positions.numel())
    return starts, {"sequences": starts.sum(), "shortest": lengths.min(), "longest": offset.max() + 1}


@dataclass
class BatchProbe:
    """A batch's inputs, and the 0-d tensors (`reads`) that its checks and its layout need read on the host.
    `layout` turns what was read into the `BatchLayout`. Probes of several batches (an encoder-decoder's sources,
    targets and labels) are read together, in one device-to-host copy (`read_layouts`)."""

    input_shape: torch.Size
    attention_mask: torch.Tensor | None
    position_ids: torch.Tensor | None
    cu_seq_lens_q: torch.Tensor | None
    vocab_size: int | None
    max_position_embeddings: int | None
    unpad: bool
    name: str
    reads: dict[str, torch.Tensor]
    check_labels: Callable[[dict[str, int]], None] | None = None  # the head's check of the labels' bounds
    starts: torch.Tensor | None = None  # where the sequences of a row of `position_ids` start
    counted_labels: torch.Tensor | None = None  # the labels whose labelled positions a sparse head selects

    @property
    def packed_rows(self) -> bool:
        return (
            self.input_shape[0] == 1
            and self.attention_mask is None
            and (self.cu_seq_lens_q is not None or self.position_ids is not None)
        )

    def layout(self, read: dict[str, int]) -> BatchLayout:
        """Check the ids against the vocabulary, the sequences against the length limit and the padding-free offsets,
        and lay the batch out."""
        if self.check_labels is not None:
            self.check_labels(read)
        if self.vocab_size is not None:
            check_id_bounds(read, self.vocab_size, self.name)
        layout = self.find_layout(read)
        if self.counted_labels is not None:
            labelled = self.counted_labels.flatten() != -100
            layout.labelled = torch.nonzero_static(labelled, size=read["labelled"]).flatten()
        if self.max_position_embeddings is not None:
            packed_rows = layout.packed is not None and not layout.unpadded
            longest = layout.packed.max_length if packed_rows else self.input_shape[1]
            check_sequence_length(longest, self.max_position_embeddings, self.name)
        return layout

    def find_layout(self, read: dict[str, int]) -> BatchLayout:
        """Padding-free (`cu_seq_lens_q`, or one row of `position_ids` restarting per sequence), padded, or unpadded
        (with `unpad`, a padded batch where `unpadding_pays`)."""
        batch_size, length = self.input_shape
        if self.packed_rows and self.cu_seq_lens_q is not None:
            if read["first"] != 0 or read["last"] != length or read["shortest"] <= 0:
                raise ValueError(
                    f"`cu_seq_lens_q` must rise strictly from 0 to the number of tokens ({length}); got "
                    f"{self.cu_seq_lens_q.flatten().tolist()}."
                )
            packed = PackedBatch.from_cu_seq_lens(self.cu_seq_lens_q, length, read["longest"])
            return BatchLayout(packed, padding=read["shortest"] < read["longest"], read=read)
        if self.packed_rows and read["sequences"] > 1:
            sequence_starts = torch.nonzero_static(self.starts, size=read["sequences"]).flatten()
            cu = torch.cat([sequence_starts, sequence_starts.new_tensor([length])])
            packed = PackedBatch.from_cu_seq_lens(cu, length, read["longest"])
            return BatchLayout(packed, padding=read["shortest"] < read["longest"], read=read)
        if self.attention_mask is None or self.attention_mask.ndim != 2:  # no mask, or a prepared 4D one
            return BatchLayout(padding=False if self.attention_mask is None else None, read=read)
        padding = batch_size * length - read["real"]
        if self.unpad and unpadding_pays(padding, batch_size * length, torch.is_grad_enabled()):
            packed = PackedBatch.from_attention_mask(
                self.attention_mask, read["real"], read["longest"], self.position_ids
            )
            return BatchLayout(packed, unpadded=True, padding=True, read=read)
        return BatchLayout(padding=padding > 0, read=read)


def probe_batch(
    input_shape: torch.Size,
    input_ids: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
    cu_seq_lens_q: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    vocab_size: int | None = None,
    max_position_embeddings: int | None = None,
    unpad: bool = False,
    name: str = "input_ids",
    check_labels: Callable[[dict[str, int]], None] | None = None,
    count_labels: bool = False,
) -> BatchProbe | None:
    """What to read of a batch for its checks and layout.

    `input_ids` get their bounds checked against `vocab_size`, the sequences their length against
    `max_position_embeddings` (`name` says what the input is called in errors); integer `labels` get their bounds
    (`labels_low`, `labels_high`, -100 left out), checked first by the head's `check_labels`; with `count_labels`,
    for a sparse head, their count (`labelled`) and, in the layout, their positions.

    Under `torch.compile` the read (`read_and_lay_out`) runs eagerly between two graphs, so that the
    layers still run unpadded and the sparse head on the labelled rows. Where the read would change nothing (no
    padded batch to unpad, no padding-free rows, no labels to count) there is no probe, so no graph break: a
    decoding step with a cache, or a model with `unpadding=False` and `sparse_prediction=False`, compiles whole
    (`fullgraph=True`); its inputs then go unchecked."""
    probe = BatchProbe(
        input_shape,
        attention_mask,
        position_ids,
        cu_seq_lens_q,
        vocab_size,
        max_position_embeddings,
        unpad,
        name,
        reads={},
        check_labels=check_labels if labels is not None else None,
    )
    unpads = unpad and attention_mask is not None and attention_mask.ndim == 2
    read_pays = unpads or (labels is not None and count_labels)
    if is_torchdynamo_compiling() and not (probe.packed_rows or (read_pays and not torch.compiler.is_exporting())):
        return None  # (`torch.export`, as the ONNX export runs it, traces one graph: it allows no break)
    if cu_seq_lens_q is not None and cu_seq_lens_q.numel() < 2:
        raise ValueError(
            f"`cu_seq_lens_q` needs at least two offsets (0 and the number of tokens), got {cu_seq_lens_q}."
        )
    if cu_seq_lens_q is not None and not probe.packed_rows:
        raise ValueError(
            "Padding-free batches (`cu_seq_lens_q`) hold all sequences in one row of shape (1, total_tokens) "
            f"without an `attention_mask`; got batch size {input_shape[0]}"
            + (" and an attention_mask." if attention_mask is not None else ".")
        )
    reads = id_bounds(input_ids, name) if input_ids is not None else {}
    if labels is not None and not labels.is_floating_point():
        reads |= id_bounds(labels, "labels", ignore_index=-100)
        if count_labels:
            probe.counted_labels = labels
            reads["labelled"] = (labels != -100).sum()
    if probe.packed_rows and cu_seq_lens_q is not None:
        reads |= _cu_seq_lens_reads(cu_seq_lens_q)
    elif probe.packed_rows:
        probe.starts, position_reads = _position_ids_reads(position_ids)
        reads |= position_reads
    elif attention_mask is not None and attention_mask.ndim == 2:
        lengths = attention_mask.bool().sum(dim=1)
        reads |= {"real": lengths.sum(), "longest": lengths.max()}
    probe.reads = reads
    return probe


def labelled_rows(hidden_states: torch.Tensor, labels: torch.Tensor, layout: BatchLayout) -> tuple[torch.Tensor, ...]:
    """The hidden states and labels of the positions whose label is not -100, in order (a sparse head's input), at
    the positions the batch's layout found (`BatchLayout.labelled`), so that selecting them reads nothing more."""
    predicted = layout.labelled
    return hidden_states.flatten(0, -2).index_select(0, predicted), labels.flatten().index_select(0, predicted)


def read_layouts(probes: dict[str, BatchProbe | None]) -> dict[str, BatchLayout | None]:
    """The layouts of several batches, everything their probes need read in one device-to-host copy (a probe of
    None gives None; where all are None, as under `torch.compile` when nothing needs reading, nothing is read)."""
    if all(probe is None for probe in probes.values()):
        return dict.fromkeys(probes)
    return read_and_lay_out(probes)


@torch.compiler.disable(reason="reads the batch's layout on the host (hf_encoders: the one graph break)")
def read_and_lay_out(probes: dict[str, BatchProbe | None]) -> dict[str, BatchLayout | None]:
    """`read_layouts`' host read. Under `torch.compile` this runs eagerly, between the graph before it and the one
    after: the layout's tensors and counts enter the second graph as inputs, the token count a dynamic dimension."""
    read = read_on_host(
        {f"{name}.{key}": value for name, probe in probes.items() if probe for key, value in probe.reads.items()}
    )
    layouts = {
        name: probe.layout({key: read[f"{name}.{key}"] for key in probe.reads}) if probe is not None else None
        for name, probe in probes.items()
    }
    for layout in layouts.values():
        if layout is not None:
            layout.mark_dynamic()
    return layouts


# --------------------------------------------------------------------------------------------------------------------
# Building blocks


def make_norm(config: EncoderConfig) -> nn.Module:
    if config.norm_type == "rmsnorm":
        return nn.RMSNorm(config.hidden_size, eps=config.norm_eps)
    return nn.LayerNorm(config.hidden_size, eps=config.norm_eps, bias=config.norm_bias)


class EncoderEmbeddings(nn.Module):
    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.position_embeddings = (
            nn.Embedding(config.max_position_embeddings, config.hidden_size)
            if config.position_embedding_type == "absolute"
            else None
        )
        self.norm = make_norm(config)
        self.dropout = nn.Dropout(config.embedding_dropout)

    def forward(
        self,
        input_ids: torch.Tensor | None,
        inputs_embeds: torch.Tensor | None,
        position_ids: torch.Tensor,
    ) -> torch.Tensor:
        embeddings = self.tok_embeddings(input_ids) if inputs_embeds is None else inputs_embeds
        if self.position_embeddings is not None:
            embeddings = embeddings + self.position_embeddings(position_ids)
        return self.dropout(self.norm(embeddings))


class EncoderRotaryEmbedding(nn.Module):
    """Rotary position embeddings of base `rope_theta` (default: `config.rope_theta`): the cos/sin tables for given
    positions, shared by the layers that use that base."""

    inv_freq: torch.Tensor

    def __init__(self, config: EncoderConfig, rope_theta: float | None = None):
        super().__init__()
        self.rope_theta = config.rope_theta if rope_theta is None else rope_theta
        self.register_buffer("inv_freq", self.compute_inv_freq(config.head_dim, self.rope_theta), persistent=False)

    @staticmethod
    def compute_inv_freq(dim: int, rope_theta: float) -> torch.Tensor:
        return 1.0 / (rope_theta ** (torch.arange(0, dim, 2, dtype=torch.float) / dim))

    @torch.no_grad()
    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.autocast(device_type=x.device.type, enabled=False):  # angles in float32
            freqs = position_ids[..., None].float() * self.inv_freq.to(x.device)
            emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(x.dtype), emb.sin().to(x.dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary_pos_emb(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, unsqueeze_dim: int = 2
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate queries and keys laid out as (batch, seq, heads, head_dim) (`unsqueeze_dim=2`, the default) or
    (batch, heads, seq, head_dim) (`unsqueeze_dim=1`) by the (batch, seq, head_dim) tables `cos` and `sin`."""
    cos, sin = cos.unsqueeze(unsqueeze_dim), sin.unsqueeze(unsqueeze_dim)
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference attention on (batch, heads, seq, head_dim) inputs; returns (batch, seq, heads, head_dim) and the
    attention probabilities. `attention_mask` is a boolean (True = attend) or additive float mask."""
    attn_weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            attn_weights = attn_weights.masked_fill(~attention_mask, torch.finfo(attn_weights.dtype).min)
        else:
            attn_weights = attn_weights + attention_mask
    attn_weights = nn.functional.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query.dtype)
    attn_weights = nn.functional.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value).transpose(1, 2).contiguous()
    return attn_output, attn_weights


def run_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Call the attention implementation of `module.config` (eager, sdpa, flex, flash, ...) on
    (batch, heads, seq, head_dim) tensors; returns (batch, seq, heads, head_dim) and the weights if computed."""
    attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
        module.config._attn_implementation, eager_attention_forward
    )
    return attention_interface(
        module,
        query,
        key,
        value,
        attention_mask,
        dropout=module.attention_dropout if module.training else 0.0,
        scaling=module.head_dim**-0.5,
        **kwargs,
    )


class EncoderAttention(nn.Module):
    """Multi-head self-attention with a fused QKV projection, dispatched through `ALL_ATTENTION_FUNCTIONS` by
    `config._attn_implementation`: bidirectional here (local on sliding-window layers); the decoder's causal
    self-attention is this class with a cache."""

    # flash attention reads padding-free rows as they are (cu_seq_lens); the other kernels see them re-padded
    packed_rows_for_flash = True

    def __init__(self, config: EncoderConfig, layer_idx: int, is_causal: bool = False):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.head_dim = config.head_dim
        self.is_causal = is_causal
        self.attention_dropout = config.attention_dropout
        self.qkv_proj = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=config.attention_bias)
        self.o_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=config.attention_bias)

    @property
    def sliding_window(self) -> int | None:
        """The window passed to the kernel on a local layer, None on a global one. Flash attention's window is
        inclusive on both sides: `sliding_window + 1` there equals `sliding_window` in the masks of `masking_utils`
        (|i - j| <= config.sliding_window), which the other kernels get. Read from the config at each call, as the
        masks are, so that `config.sliding_window` set on a built model changes every implementation alike."""
        local = not self.is_causal and self.config.layer_types[self.layer_idx] == "sliding_attention"
        return self.config.sliding_window + 1 if local else None

    def repads(self, packed: PackedBatch | None) -> bool:
        if packed is None or (self.packed_rows_for_flash and is_flash_attention_requested(self.config)):
            return False
        return not self.attends_each_sequence(packed)

    def attends_each_sequence(self, packed: PackedBatch) -> bool:
        """Whether SDPA runs on each sequence of the padding-free batch alone, without a mask, instead of on the
        re-padded grid: none of its work is then padding (on the CPU, 1.5x the grid's attention in training at
        128-256 tokens, 2.4x on a pipeline's batches of 16-256; benchmarks/RESULTS.md). On the CPU, on global layers
        of the bidirectional attention, in eager PyTorch (a compiled graph keeps the grid, whose sizes are dynamic),
        where the sequences hold `EACH_SEQUENCE_MIN_MEAN_TOKENS` tokens on average."""
        return (
            self.config._attn_implementation == "sdpa"
            and not self.is_causal
            and self.sliding_window is None
            and packed.cu_seq_lens.device.type == "cpu"
            and not is_torchdynamo_compiling()
            and packed.index.numel() >= EACH_SEQUENCE_MIN_MEAN_TOKENS * packed.num_sequences
        )

    def project(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None,
        packed: PackedBatch | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Rotated queries, keys and values as (batch, heads, seq, head_dim); padding-free rows re-padded to
        (num_sequences, max_length) where the kernel needs it."""
        qkv = self.qkv_proj(hidden_states).view(*hidden_states.shape[:-1], 3, self.num_heads, self.head_dim)
        query, key, value = qkv.unbind(dim=-3)  # each (batch, seq, heads, head_dim)
        if position_embeddings is not None:
            query, key = apply_rotary_pos_emb(query, key, *position_embeddings)
        if self.repads(packed):
            query, key, value = packed.pad(query), packed.pad(key), packed.pad(value)
        return query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2)

    def attend(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        input_shape: torch.Size,
        packed: PackedBatch | None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if packed is not None and self.attends_each_sequence(packed):
            pieces = zip(*(tensor.split(packed.lengths, dim=2) for tensor in (query, key, value)), strict=True)
            outputs = [run_attention(self, *piece, None, **kwargs)[0] for piece in pieces]
            return self.o_proj(torch.cat(outputs, dim=1).reshape(*input_shape, -1)), None
        attn_output, attn_weights = run_attention(
            self, query, key, value, attention_mask, sliding_window=self.sliding_window, **kwargs
        )
        if self.repads(packed):
            attn_output = packed.unpad(attn_output)
        return self.o_proj(attn_output.reshape(*input_shape, -1)), attn_weights

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        packed: PackedBatch | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        query, key, value = self.project(hidden_states, position_embeddings, packed)
        return self.attend(query, key, value, attention_mask, hidden_states.shape[:-1], packed, **kwargs)


class EncoderMLP(nn.Module):
    """Feed-forward block: `act(x W_up) W_down`, or the gated `(act(x W_a) * x W_b) W_down` for geglu/swiglu."""

    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.gated = config.hidden_activation in ("geglu", "swiglu")
        self.act = ACT2FN["silu" if config.hidden_activation == "swiglu" else "gelu"]
        self.up_proj = nn.Linear(
            config.hidden_size, config.intermediate_size * (2 if self.gated else 1), bias=config.mlp_bias
        )
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=config.mlp_bias)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = self.up_proj(hidden_states)
        if self.gated:
            hidden_states, gate = hidden_states.chunk(2, dim=-1)
            return self.down_proj(self.act(hidden_states) * gate)
        return self.down_proj(self.act(hidden_states))


class EncoderLayer(GradientCheckpointingLayer):
    """Pre-norm transformer layer. Unless `config.first_layer_attention_norm`, the first layer reads the already
    normalised embeddings and has no attention norm of its own (ModernBERT's layout)."""

    def __init__(self, config: EncoderConfig, layer_idx: int):
        super().__init__()
        own_norm = layer_idx > 0 or config.first_layer_attention_norm
        self.attn_norm = make_norm(config) if own_norm else nn.Identity()
        self.attn = EncoderAttention(config, layer_idx)
        self.mlp_norm = make_norm(config)
        self.mlp = EncoderMLP(config)
        self.dropout = nn.Dropout(config.hidden_dropout)

    @property
    def attention_type(self) -> str:
        """`"full_attention"` or `"sliding_attention"`: this layer's entry of `config.layer_types`, read at each
        call (as the window and the masks are)."""
        return self.attn.config.layer_types[self.attn.layer_idx]

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        packed: PackedBatch | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> torch.Tensor:
        attn_output, _ = self.attn(
            self.attn_norm(hidden_states), attention_mask, position_embeddings, packed, **kwargs
        )
        hidden_states = hidden_states + self.dropout(attn_output)
        return hidden_states + self.dropout(self.mlp(self.mlp_norm(hidden_states)))


class EncoderPredictionHead(nn.Module):
    """Dense + GELU + norm, applied before the masked-LM decoder and the classifiers."""

    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size, bias=config.classifier_bias)
        self.act = ACT2FN["gelu"]
        self.norm = make_norm(config)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.norm(self.act(self.dense(hidden_states)))


# --------------------------------------------------------------------------------------------------------------------
# The masked-LM loss without the (rows x vocabulary) logits
#
# `linear_cross_entropy(hidden_states, weight, bias, labels)` is `ForMaskedLMLoss(F.linear(hidden_states, weight,
# bias), labels)` computed over chunks of rows: each chunk's logits live only while its loss and its gradients are
# formed, so a step holds (chunk x vocabulary) floats where the full loss holds several (rows x vocabulary) tensors
# (the logits, their log-softmax, its gradient). The gradients are formed in the forward (softmax minus one-hot, times
# the weight and the hidden states, as Liger Kernel's fused linear cross-entropy does), so that no chunk's logits are
# computed twice; the backward scales them by the incoming gradient. Nothing is formed that no one asked for: no
# gradients without autograd, none for a frozen weight. Where it pays: benchmarks/RESULTS.md, "The loss at large
# vocabularies".

LOSS_CHUNK_ROWS = 1024


def chunk_cross_entropy(
    hidden_states: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    target: torch.Tensor,
    out: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One chunk's cross-entropy per row (fp32), `exp(logits - max) - sum * one_hot(target)` and `sum`: the
    gradient of a row's cross-entropy with respect to its logits is the second divided by the third. The logits are
    written into `out` (one buffer for every chunk: a CPU allocator hands large blocks back to the system and
    takes page faults to get them again)."""
    out = out[: hidden_states.shape[0]]
    if bias is None:
        logits = torch.mm(hidden_states, weight.t(), out=out)
    else:
        logits = torch.addmm(bias, hidden_states, weight.t(), out=out)
    logits = logits.float()  # transformers' losses upcast the logits; no copy in fp32
    target = target[:, None]
    maximum = logits.amax(-1, keepdim=True)
    target_logit = logits.gather(1, target)
    exp = logits.sub_(maximum).exp_()
    total = exp.sum(-1, keepdim=True)
    row_loss = (maximum + total.log() - target_logit)[:, 0]
    return row_loss, exp.scatter_add_(1, target, -total), total


def add_product(into: torch.Tensor | None, left: torch.Tensor, right: torch.Tensor) -> None:
    """`into += left @ right`, summed in `into`'s dtype (fp32 where `left` is bf16 or fp16)."""
    if into is None:
        return
    if into.dtype != left.dtype:
        into.add_(left @ right)
    elif right.dim() == 2:
        into.addmm_(left, right)
    else:
        into.addmv_(left, right)


def chunked_linear_cross_entropy(
    hidden_states: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    target: torch.Tensor,
    row_weights: torch.Tensor,
    chunk_size: int,
    needs_grad: tuple[bool, bool, bool],
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Each row's `cross_entropy(hidden_states @ weight.T + bias, target)` (fp32), and where `needs_grad` asks the
    gradients of `sum(row_weights * cross_entropy)` with respect to the hidden states, the weight and the bias (those
    of the weight and the bias summed in fp32). Computes in the inputs' dtype, `chunk_size` rows at a time."""
    row_losses, grad_hidden = [], []
    grad_weight = torch.zeros_like(weight, dtype=torch.float32) if needs_grad[1] else None
    grad_bias = torch.zeros_like(bias, dtype=torch.float32) if needs_grad[2] else None
    logits = hidden_states.new_empty((min(chunk_size, hidden_states.shape[0]), weight.shape[0]))
    for start in range(0, hidden_states.shape[0], chunk_size):
        rows = hidden_states[start : start + chunk_size]
        row_loss, exp, total = chunk_cross_entropy(rows, weight, bias, target[start : start + chunk_size], logits)
        row_losses.append(row_loss)
        if not any(needs_grad):
            continue
        scale = row_weights[start : start + chunk_size, None] / total  # d loss / d logits = exp * scale
        exp = exp.to(rows.dtype)
        if needs_grad[0]:
            grad_hidden.append((exp @ weight).float().mul_(scale).to(rows.dtype))
        add_product(grad_weight, exp.t(), (rows.float() * scale).to(rows.dtype))
        add_product(grad_bias, exp.t(), scale[:, 0].to(rows.dtype))
    row_loss = torch.cat(row_losses) if row_losses else hidden_states.new_zeros((0,), dtype=torch.float32)
    if not needs_grad[0]:
        return row_loss, None, grad_weight, grad_bias
    return row_loss, torch.cat(grad_hidden) if grad_hidden else torch.zeros_like(hidden_states), grad_weight, grad_bias


def fused_cross_entropy(
    hidden_states: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    target: torch.Tensor,
    valid: torch.Tensor,
    denominator: torch.Tensor,
    chunk_size: int,
    compute_dtype: torch.dtype,
    needs_grad: list[bool],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The loss of `linear_cross_entropy` and, where `needs_grad` asks, its gradients with respect to the hidden
    states, the weight and the bias in their dtypes (else empty tensors): `compute_dtype`, autocast off."""
    inputs = (hidden_states, weight, bias)
    with torch.autocast(hidden_states.device.type, enabled=False):
        cast = [None if tensor is None else tensor.to(compute_dtype) for tensor in inputs]
        row_weights = torch.where(valid, 1 / denominator, 0.0)
        row_loss, *grads = chunked_linear_cross_entropy(*cast, target, row_weights, chunk_size, tuple(needs_grad))
        loss = torch.where(valid, row_loss, 0.0).sum() / denominator
    grads = [grad if grad is None else grad.to(tensor.dtype) for grad, tensor in zip(grads, inputs, strict=True)]
    return loss, *[hidden_states.new_empty((0,)) if grad is None else grad for grad in grads]


def fused_cross_entropy_fake(*inputs: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    hidden_states, needs_grad = inputs[0], inputs[-1]
    inputs = zip(inputs[:3], needs_grad, strict=True)
    grads = [torch.empty_like(tensor) if needs else hidden_states.new_empty((0,)) for tensor, needs in inputs]
    return hidden_states.new_empty((), dtype=torch.float32), *grads


def fused_cross_entropy_setup(ctx: Any, inputs: tuple[Any, ...], output: tuple[torch.Tensor, ...]) -> None:
    ctx.needs_grad = inputs[-1]
    ctx.save_for_backward(*output[1:])
    ctx.mark_non_differentiable(*output[1:])
    ctx.set_materialize_grads(False)  # else the backward gets zeros the size of the weight for those outputs


def fused_cross_entropy_backward(ctx: Any, grad_loss: torch.Tensor, *_: Any) -> tuple[torch.Tensor | None, ...]:
    saved = zip(ctx.saved_tensors, ctx.needs_grad, strict=True)
    return *[grad * grad_loss if needs else None for grad, needs in saved], None, None, None, None, None, None


def register_fused_cross_entropy() -> None:
    """`torch.ops.hf_encoders.fused_cross_entropy`, once per process (this file may be imported under two names: the
    package's and a checkpoint's copy). A custom op rather than an `autograd.Function`, so that `torch.compile` traces
    it whole with the number of rows dynamic: a Python loop over chunks in a traced function would specialize the
    graph on every row count, and the labelled rows of a batch vary."""
    if hasattr(torch.ops.hf_encoders, "fused_cross_entropy"):
        return
    op = torch.library.custom_op("hf_encoders::fused_cross_entropy", fused_cross_entropy, mutates_args=())
    op.register_fake(fused_cross_entropy_fake)
    op.register_autograd(fused_cross_entropy_backward, setup_context=fused_cross_entropy_setup)


register_fused_cross_entropy()


def linear_cross_entropy(
    hidden_states: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    labels: torch.Tensor,
    num_items_in_batch: torch.Tensor | int | None = None,
    ignore_index: int = -100,
    chunk_size: int = LOSS_CHUNK_ROWS,
) -> torch.Tensor:
    """transformers' `ForMaskedLMLoss(F.linear(hidden_states, weight, bias), labels, vocab_size, num_items_in_batch)`
    without the (rows x vocabulary) logits: the mean cross-entropy over the labels that are not `ignore_index` (nan
    when there are none, with zero gradients), or their sum divided by `num_items_in_batch` (as `Trainer` passes it
    under gradient accumulation). `hidden_states` is (..., hidden), `labels` its leading shape, `weight` (vocabulary,
    hidden). The logits are computed in autocast's dtype where autocast is on, as `F.linear` would, and the loss summed
    in fp32; labels are not checked against the vocabulary (the models' forwards check them)."""
    hidden_states = hidden_states.reshape(-1, hidden_states.shape[-1])
    labels = labels.reshape(-1).to(hidden_states.device)
    valid = labels != ignore_index
    denominator = valid.sum() if num_items_in_batch is None else num_items_in_batch
    denominator = torch.as_tensor(denominator, device=hidden_states.device)
    device_type = hidden_states.device.type
    autocast = torch.is_autocast_enabled(device_type)
    compute_dtype = torch.get_autocast_dtype(device_type) if autocast else hidden_states.dtype
    needs_grad = [torch.is_grad_enabled() and t is not None and t.requires_grad for t in (hidden_states, weight, bias)]
    target = torch.where(valid, labels, 0)
    return torch.ops.hf_encoders.fused_cross_entropy(
        hidden_states, weight, bias, target, valid, denominator, chunk_size, compute_dtype, needs_grad
    )[0]


# --------------------------------------------------------------------------------------------------------------------
# Models


# sentence-transformers reads a model folder as a pipeline of modules (`modules.json`): the encoder, whose
# `last_hidden_state` it reads (sentence_bert_config.json), then a pooling (1_Pooling/config.json). The files here
# use the forms every sentence-transformers release reads (the module names and pooling keys before 5.4).
SENTENCE_TRANSFORMERS_MODULES = [
    {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
    {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
]
POOLING_MODES = ("cls_token", "mean_tokens", "max_tokens", "mean_sqrt_len_tokens", "weightedmean_tokens", "lasttoken")


def write_sentence_transformers_files(folder: Path, config: EncoderConfig) -> None:
    """The files that make `SentenceTransformer(folder)` embed with this encoder and the pooling its config declares
    (`classifier_pooling`), as `pooler_output` does. Left alone where sentence-transformers is saving a pipeline of
    its own into the folder (its config file is there, its modules.json not yet) or has saved one of other modules
    (a `Normalize`, say)."""
    modules_file, own_config = folder / "modules.json", folder / "config_sentence_transformers.json"
    if own_config.exists() and not modules_file.exists():
        return
    if modules_file.exists() and json.loads(modules_file.read_text()) != SENTENCE_TRANSFORMERS_MODULES:
        return
    pooling = {"cls": "cls_token", "mean": "mean_tokens"}[config.classifier_pooling]
    files = {
        modules_file: SENTENCE_TRANSFORMERS_MODULES,
        folder / "sentence_bert_config.json": {
            "max_seq_length": config.max_position_embeddings,
            "do_lower_case": False,
        },
        folder / "1_Pooling" / "config.json": {
            "word_embedding_dimension": config.hidden_size,
            **{f"pooling_mode_{mode}": mode == pooling for mode in POOLING_MODES},
            "include_prompt": True,
        },
        own_config: {"prompts": {}, "default_prompt_name": None, "similarity_fn_name": "cosine"},
    }
    for path, content in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(content, indent=2) + "\n")


class EncoderPreTrainedModel(PreTrainedModel):
    config_class = EncoderConfig
    config: EncoderConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["EncoderEmbeddings", "EncoderLayer"]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_compile_fullgraph = True
    _can_record_outputs = {"hidden_states": EncoderLayer, "attentions": EncoderAttention}
    _family_auto_map = ENCODER_AUTO_MAP
    _sentence_transformers = True  # saved folders load with `SentenceTransformer(folder)`

    @torch.no_grad()
    def _init_weights(self, module: nn.Module):
        """Truncated-normal projections and embeddings (the padding row zero), zero biases, unit norms.

        Decided per leaf module: in custom (non-transformers) code, transformers skips the init of container modules
        that hold no parameters of their own, so an init keyed on `EncoderMLP` or `EncoderAttention` would never run.
        """
        std = self.config.initializer_range
        cutoff = self.config.initializer_cutoff_factor * std
        if isinstance(module, (nn.Linear, nn.Embedding)):
            init.trunc_normal_(module.weight, mean=0.0, std=std, a=-cutoff, b=cutoff)
            if getattr(module, "bias", None) is not None:
                init.zeros_(module.bias)
            if getattr(module, "padding_idx", None) is not None and not getattr(
                module.weight, "_is_hf_initialized", False
            ):
                init.zeros_(module.weight[module.padding_idx])
        elif isinstance(module, EncoderRotaryEmbedding):
            init.copy_(module.inv_freq, module.compute_inv_freq(self.config.head_dim, module.rope_theta))
        else:
            super()._init_weights(module)

    @classmethod
    def from_modernbert(cls, source: "str | os.PathLike | PreTrainedModel", **kwargs) -> "EncoderPreTrainedModel":
        """This head holding a transformers ModernBERT model exactly: a `ModernBertModel`, `ModernBertForMaskedLM`,
        `ModernBertForSequenceClassification` or `ModernBertForTokenClassification`, or a folder or Hub id of one
        (such as `answerdotai/ModernBERT-base`; `kwargs` go to its `from_pretrained`). Settings this family cannot
        compute are refused by name. The tokenizer is ModernBERT's own: `AutoTokenizer.from_pretrained(source)`.

            model = EncoderForMaskedLM.from_modernbert("answerdotai/ModernBERT-base")
        """
        from .conversion_modernbert import convert_modernbert  # (transformers' ModernBERT loads only when used)

        return convert_modernbert(cls, source, **kwargs)

    def save_pretrained(self, save_directory, *args, **kwargs):
        # The registered auto class of this head alone would reach `auto_map`; write the whole family.
        if self.is_remote_code():
            self.config.auto_map = {**(getattr(self.config, "auto_map", None) or {}), **self._family_auto_map}
        folder = Path(save_directory)
        if self._sentence_transformers and kwargs.get("is_main_process", True) and not folder.is_file():
            folder.mkdir(parents=True, exist_ok=True)  # written first, so that a push_to_hub=True upload has them
            write_sentence_transformers_files(folder, self.config)
        return super().save_pretrained(save_directory, *args, **kwargs)


class EncoderModel(EncoderPreTrainedModel):
    """The bare encoder: `last_hidden_state` and a pooled `pooler_output` embedding (first token or mean over real
    tokens, by `config.classifier_pooling`; one row per sequence, also for padding-free batches)."""

    def __init__(self, config: EncoderConfig):
        super().__init__(config)
        self.embeddings = EncoderEmbeddings(config)
        self.layers = nn.ModuleList(EncoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.final_norm = make_norm(config)
        rope = config.position_embedding_type == "rope"
        self.rotary_emb = EncoderRotaryEmbedding(config) if rope else None
        # (also without local layers: `config.sliding_window` set later makes layers local; its tables are no weights)
        own_base = rope and config.local_rope_theta is not None
        self.local_rotary_emb = EncoderRotaryEmbedding(config, config.local_rope_theta) if own_base else None
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings.tok_embeddings

    def set_input_embeddings(self, value: nn.Embedding):
        self.embeddings.tok_embeddings = value

    def rotary_tables(
        self, hidden_states: torch.Tensor, position_ids: torch.Tensor
    ) -> dict[str, tuple[torch.Tensor, torch.Tensor] | None]:
        """The cos/sin tables of each layer type: the local layers' own base where `config.local_rope_theta` is set;
        None without rotary positions."""
        tables = dict.fromkeys(("full_attention", "sliding_attention"))
        if self.rotary_emb is not None:
            tables["full_attention"] = tables["sliding_attention"] = self.rotary_emb(hidden_states, position_ids)
        if self.local_rotary_emb is not None and "sliding_attention" in self.config.layer_types:
            tables["sliding_attention"] = self.local_rotary_emb(hidden_states, position_ids)
        return tables

    def probe(
        self,
        input_ids: torch.LongTensor | None,
        attention_mask: torch.Tensor | None,
        position_ids: torch.LongTensor | None,
        inputs_embeds: torch.Tensor | None,
        kwargs: dict[str, Any],
        labels: torch.Tensor | None = None,
        check_labels: Callable[[dict[str, int]], None] | None = None,
        count_labels: bool = False,
    ) -> BatchProbe | None:
        """Check the inputs' shapes and say what to read of them (`probe_batch`, with the heads' `labels`, their
        check, and whether a sparse head needs them counted). A padded batch is unpadded with `config.unpadding`,
        unless hidden states or attentions are recorded (they keep the batch's shape)."""
        input_shape, name = input_shape_of(input_ids, inputs_embeds)
        check_attention_mask(attention_mask, input_shape, name)
        return probe_batch(
            input_shape,
            input_ids,
            attention_mask,
            position_ids,
            kwargs.get("cu_seq_lens_q"),
            labels,
            vocab_size=self.config.vocab_size,
            max_position_embeddings=self.config.max_position_embeddings,
            unpad=self.config.unpadding and not records_outputs(self.config, kwargs),
            name=name,
            check_labels=check_labels,
            count_labels=count_labels,
        )

    def read_batch(
        self,
        input_ids: torch.LongTensor | None,
        attention_mask: torch.Tensor | None,
        position_ids: torch.LongTensor | None,
        inputs_embeds: torch.Tensor | None,
        kwargs: dict[str, Any],
        labels: torch.Tensor | None = None,
        check_labels: Callable[[dict[str, int]], None] | None = None,
        count_labels: bool = False,
    ) -> BatchLayout | None:
        """The checked layout of the inputs, read on the host once (None where nothing needs reading under
        `torch.compile`: `probe_batch`)."""
        probe = self.probe(
            input_ids, attention_mask, position_ids, inputs_embeds, kwargs, labels, check_labels, count_labels
        )
        return read_layouts({"batch": probe})["batch"]

    @capture_outputs
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        batch_layout: BatchLayout | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutputWithPooling:
        r"""
        input_ids: (batch, seq) token ids; or one row (1, total) of sequences packed back to back, told apart by
            `position_ids` that restart at each sequence or by `cu_seq_lens_q` (padding-free).
        attention_mask: (batch, seq), 1 on real tokens and 0 on padding; or a prepared 4D mask.
        position_ids: positions of the tokens (default 0, 1, ...).
        batch_layout: what `read_batch` found, when a head has read the batch already (with its labels).
        """
        kwargs = checked_forward_kwargs(kwargs, self)
        layout = batch_layout
        if layout is None:
            layout = self.read_batch(input_ids, attention_mask, position_ids, inputs_embeds, kwargs)
        for key in ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k", "seq_idx"):
            kwargs.pop(key, None)  # recomputed from the layout
        packed = layout.packed if layout is not None else None
        input_shape = input_ids.shape if input_ids is not None else inputs_embeds.shape[:-1]
        if packed is not None and (layout.unpadded or position_ids is None):
            position_ids = packed.position_ids
        elif position_ids is None:
            position_ids = torch.arange(input_shape[1], device=self.device)[None]
        if layout is not None and layout.unpadded:  # token-wise work on the real tokens only
            if input_ids is not None:
                input_ids = input_ids.flatten().index_select(0, packed.index)[None]
            else:
                inputs_embeds = inputs_embeds.flatten(0, 1).index_select(0, packed.index)[None]

        hidden_states = self.embeddings(input_ids, inputs_embeds, position_ids)
        kwargs |= self.attention_arguments(packed)
        masks = self.attention_masks(hidden_states, attention_mask, layout)
        tables = self.rotary_tables(hidden_states, position_ids)
        for layer in self.layers:
            kind = layer.attention_type
            hidden_states = layer(hidden_states, masks[kind], tables[kind], packed, **kwargs)
        hidden_states = self.final_norm(hidden_states)

        if layout is not None and layout.unpadded:  # back in the batch's (batch, seq) shape, zeros on padding
            hidden_states, packed = packed.pad(hidden_states), None
        return BaseModelOutputWithPooling(
            last_hidden_state=hidden_states, pooler_output=self.pool(hidden_states, attention_mask, packed)
        )

    def attention_arguments(self, packed: PackedBatch | None) -> dict[str, Any]:
        """Flash attention's variable-length offsets for a padding-free layout (the other kernels re-pad)."""
        if packed is None or not is_flash_attention_requested(self.config):
            return {}
        return dict(
            cu_seq_lens_q=packed.cu_seq_lens,
            cu_seq_lens_k=packed.cu_seq_lens,
            max_length_q=packed.max_length,
            max_length_k=packed.max_length,
        )

    def attention_masks(
        self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None, layout: BatchLayout | None
    ) -> dict[str, Any]:
        """One mask per layer type, from `transformers.masking_utils`, for the layout the attention kernels see: the
        batch, or a padding-free row re-padded (flash attention takes the row as it is, without a mask). Where the
        layout says whether there is padding, masking_utils need not look at the mask on the host."""
        packed = layout.packed if layout is not None else None
        mask_embeds, mask_2d = hidden_states, attention_mask
        if packed is not None:
            flash = is_flash_attention_requested(self.config)
            mask_embeds, mask_2d = (hidden_states, None) if flash else packed.mask_arguments(hidden_states)
        skip_if_unpadded = True
        if layout is not None and layout.padding is not None:
            mask_2d = mask_2d if layout.padding else None
            skip_if_unpadded = mask_2d is None
        creators = {
            "full_attention": create_bidirectional_mask,
            "sliding_attention": create_bidirectional_sliding_window_mask,
        }
        return {
            layer_type: creators[layer_type](
                self.config, mask_embeds, mask_2d, allow_is_bidirectional_skip=skip_if_unpadded
            )
            for layer_type in set(self.config.layer_types)
        }

    def pool(
        self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None, packed: PackedBatch | None = None
    ) -> torch.Tensor:
        """One embedding per sequence: the first real token (`"cls"`; after the padding of a left-padded sequence) or
        the mean over real tokens (`"mean"`)."""
        if packed is not None:
            hidden_states, attention_mask = packed.pad(hidden_states), packed.padding_mask
        if attention_mask is None or attention_mask.ndim != 2:
            return hidden_states[:, 0] if self.config.classifier_pooling == "cls" else hidden_states.mean(dim=1)
        if self.config.classifier_pooling == "cls":
            first = attention_mask.to(torch.int32).argmax(dim=1)  # the first real token
            return hidden_states[torch.arange(hidden_states.shape[0], device=first.device), first]
        weights = attention_mask.to(hidden_states.dtype).unsqueeze(-1)
        return (hidden_states * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


class EncoderForMaskedLM(EncoderPreTrainedModel):
    """Masked-language-model head; its decoder matrix is tied to the input embeddings.

    With `config.sparse_prediction` (the default) and `labels`, a forward in training mode runs the head only on the
    positions whose label is not -100, in order: pretraining's speed (compiled too). There, by default, the loss is
    `linear_cross_entropy` (chunks of rows, never the (rows x vocabulary) logits) and `logits` is None, as with Liger
    Kernel's fused loss; `skip_logits=False` returns one row of logits per labelled position instead. In eval mode
    (`Trainer.evaluate`, metrics, pipelines) and without labels, `logits` is (batch, sequence, vocab), as
    transformers' masked-LM models return it. The loss is the same every way."""

    _tied_weights_keys = {"decoder.weight": "model.embeddings.tok_embeddings.weight"}

    def __init__(self, config: EncoderConfig):
        super().__init__(config)
        self.model = EncoderModel(config)
        self.head = EncoderPredictionHead(config)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size, bias=config.decoder_bias)
        self.post_init()

    def get_output_embeddings(self) -> nn.Linear:
        return self.decoder

    def set_output_embeddings(self, new_embeddings: nn.Linear):
        self.decoder = new_embeddings

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        skip_logits: bool | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> MaskedLMOutput:
        r"""
        labels: (batch, seq) ids of the original tokens at masked positions, -100 elsewhere. In training mode with
            `config.sparse_prediction`, `logits` then has one row per labelled position (or is None, see
            `skip_logits`); otherwise, and always in eval mode, it is (batch, seq, vocab).
        skip_logits: compute the loss without the logits (`linear_cross_entropy`) and return `logits=None`. Default:
            in training mode with labels. Needs labels.
        """
        check_labels = partial(check_id_bounds, vocab_size=self.config.vocab_size, name="labels")
        sparse = labels is not None and self.config.sparse_prediction and self.training
        layout = self.model.read_batch(
            input_ids, attention_mask, position_ids, inputs_embeds, kwargs, labels, check_labels, sparse
        )
        outputs = self.model(input_ids, attention_mask, position_ids, inputs_embeds, batch_layout=layout, **kwargs)
        hidden_states = outputs.last_hidden_state
        if labels is not None and labels.shape != hidden_states.shape[:-1]:
            raise ValueError(
                f"`labels` has shape {tuple(labels.shape)} but the input has shape "
                f"{tuple(hidden_states.shape[:-1])}; they must match."
            )
        if sparse and layout is not None:
            hidden_states, labels = labelled_rows(hidden_states, labels, layout)

        if skip_logits is None:
            skip_logits = self.training and labels is not None
        if skip_logits and labels is None:
            raise ValueError("skip_logits=True computes the loss without the logits: it needs `labels`.")
        hidden_states = self.head(hidden_states)
        loss = logits = None
        if skip_logits:
            weight, bias, num_items = self.decoder.weight, self.decoder.bias, kwargs.get("num_items_in_batch")
            loss = linear_cross_entropy(hidden_states, weight, bias, labels, num_items_in_batch=num_items)
        else:
            logits = self.decoder(hidden_states)
            if labels is not None:
                loss = self.loss_function(logits, labels, vocab_size=self.config.vocab_size, **kwargs)
        return MaskedLMOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )


class EncoderForSequenceClassification(EncoderPreTrainedModel):
    """Classification or regression on the pooled embedding (`config.problem_type`: regression,
    single_label_classification or multi_label_classification, inferred from the labels as in transformers)."""

    def __init__(self, config: EncoderConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.model = EncoderModel(config)
        self.head = EncoderPredictionHead(config)
        self.dropout = nn.Dropout(config.classifier_dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> SequenceClassifierOutput:
        r"""
        labels: (batch,) class ids, (batch, num_labels) multi-hot floats, or (batch,) / (batch, num_labels) targets
            for regression.
        """
        check_labels = partial(check_class_bounds, num_labels=self.num_labels) if self.num_labels > 1 else None
        layout = self.model.read_batch(
            input_ids, attention_mask, position_ids, inputs_embeds, kwargs, labels, check_labels
        )
        outputs = self.model(input_ids, attention_mask, position_ids, inputs_embeds, batch_layout=layout, **kwargs)
        logits = self.classifier(self.dropout(self.head(outputs.pooler_output)))
        loss = None
        if labels is not None:
            if labels.shape[0] != logits.shape[0]:
                raise ValueError(f"`labels` has {labels.shape[0]} rows for {logits.shape[0]} sequences.")
            loss = self.loss_function(labels, logits, self.config, **kwargs)
        return SequenceClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )


class EncoderForTokenClassification(EncoderPreTrainedModel):
    """A label per token (named entities, tags); -100 labels are ignored."""

    def __init__(self, config: EncoderConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.model = EncoderModel(config)
        self.head = EncoderPredictionHead(config)
        self.dropout = nn.Dropout(config.classifier_dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> TokenClassifierOutput:
        r"""
        labels: (batch, seq) class ids, -100 on tokens to ignore.
        """
        check_labels = partial(check_class_bounds, num_labels=self.num_labels)
        layout = self.model.read_batch(
            input_ids, attention_mask, position_ids, inputs_embeds, kwargs, labels, check_labels
        )
        outputs = self.model(input_ids, attention_mask, position_ids, inputs_embeds, batch_layout=layout, **kwargs)
        logits = self.classifier(self.dropout(self.head(outputs.last_hidden_state)))
        loss = None
        if labels is not None:
            if labels.shape != logits.shape[:-1]:
                raise ValueError(
                    f"`labels` has shape {tuple(labels.shape)} but the input has shape {tuple(logits.shape[:-1])}."
                )
            loss = self.loss_function(logits, labels, self.config, **kwargs)
        return TokenClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )


__all__ = [
    "EncoderPreTrainedModel",
    "EncoderModel",
    "EncoderForMaskedLM",
    "EncoderForSequenceClassification",
    "EncoderForTokenClassification",
]
