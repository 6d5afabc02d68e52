"""The hf_encoders encoder-decoder family: `Seq2SeqModel` and `Seq2SeqForConditionalGeneration` (translation,
summarisation, any text-to-text task), generating through transformers' `GenerationMixin` with an
`EncoderDecoderCache`.

The encoder is the encoder family's `EncoderModel`. Decoder layers are pre-norm with causal self-attention (rotary
positions, keys and values cached step by step) and cross-attention to the encoder output (keys and values computed
once per source and cached), built from the encoder family's blocks and the same attention interface.

This file is copied next to every saved checkpoint for `trust_remote_code=True`: it imports only `torch`,
`transformers` and its siblings.
"""

import inspect
import logging
import shutil
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from functools import partial
from pathlib import Path
from typing import Any

import torch
import transformers
from torch import nn
from transformers.cache_utils import DynamicCache, EncoderDecoderCache
from transformers.dynamic_module_utils import HF_MODULES_CACHE, get_cached_module_file
from transformers.generation import GenerationMixin
from transformers.loss.loss_utils import ForMaskedLMLoss
from transformers.masking_utils import create_bidirectional_mask, create_causal_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import (
    BaseModelOutput,
    BaseModelOutputWithPastAndCrossAttentions,
    BaseModelOutputWithPooling,
    Seq2SeqLMOutput,
    Seq2SeqModelOutput,
)
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs
from transformers.utils.generic import can_return_tuple
from transformers.utils.import_utils import is_torchdynamo_compiling
from transformers.utils.output_capturing import OutputRecorder, capture_outputs

from .configuration_hf_encoders import Seq2SeqConfig
from .modeling_encoder import (
    BatchLayout,
    BatchProbe,
    EncoderAttention,
    EncoderEmbeddings,
    EncoderMLP,
    EncoderModel,
    EncoderPreTrainedModel,
    EncoderRotaryEmbedding,
    PackedBatch,
    check_attention_mask,
    check_id_bounds,
    check_input_shape,
    check_sequence_length,
    checked_forward_kwargs,
    input_shape_of,
    labelled_rows,
    make_norm,
    probe_batch,
    read_layouts,
    records_outputs,
    run_attention,
)

logger = logging.getLogger(__name__)

SEQ2SEQ_AUTO_MAP = {
    "AutoConfig": "configuration_hf_encoders.Seq2SeqConfig",
    "AutoModel": "modeling_seq2seq.Seq2SeqModel",
    "AutoModelForSeq2SeqLM": "modeling_seq2seq.Seq2SeqForConditionalGeneration",
}

NO_BOTTLENECK = "sentence latents are `Seq2SeqVAEForConditionalGeneration`'s (config `Seq2SeqVAEConfig`)."

# The text-to-text pipelines that transformers 5 no longer ships, declared in every saved config.json
# (`custom_pipelines`); their code, pipeline_seq2seq.py, is copied beside the weights.
PIPELINE_CODE = "pipeline_seq2seq.py"
CUSTOM_PIPELINES = {
    "text2text-generation": {"impl": "pipeline_seq2seq.Text2TextGenerationPipeline", "pt": ["AutoModelForSeq2SeqLM"]},
    "translation": {"impl": "pipeline_seq2seq.TranslationPipeline", "pt": ["AutoModelForSeq2SeqLM"]},
}


# --------------------------------------------------------------------------------------------------------------------
# The cache under its two names. transformers 5.24 renamed the cache argument of `generate`, of model forwards and of
# `masking_utils`, and the cache field of the output classes, from `past_key_values` to `cache` (the old name is
# deprecated until 5.40). The forwards here take either; outputs and masks get the name the installed release uses.


def _cache_name(names: Iterable[str], where: str) -> str:
    for name in ("cache", "past_key_values"):
        if name in names:
            return name
    raise ImportError(
        f"{where} in transformers {transformers.__version__} takes neither `cache` nor `past_key_values`; this "
        "version of the model does not support that release (hf_encoders' pyproject.toml names the tested range)."
    )


OUTPUT_CACHE_FIELD = _cache_name([field.name for field in fields(Seq2SeqLMOutput)], "Seq2SeqLMOutput")
MASK_CACHE_ARGUMENT = _cache_name(inspect.signature(create_causal_mask).parameters, "create_causal_mask")


def resolve_cache(cache: EncoderDecoderCache | None, past_key_values: EncoderDecoderCache | None):
    """The cache given under either name (`cache` from transformers 5.24 on, `past_key_values` before). Where the
    installed release has renamed it, the old name is deprecated, as for transformers' own models."""
    if cache is not None and past_key_values is not None:
        raise ValueError(
            "Pass the cache once: as `cache` or as `past_key_values` (its name before transformers 5.24)."
        )
    if past_key_values is not None and OUTPUT_CACHE_FIELD == "cache" and not is_torchdynamo_compiling():
        warnings.warn(
            f"`past_key_values` is deprecated in transformers {transformers.__version__}: pass the cache as `cache`.",
            FutureWarning,
            stacklevel=3,
        )
    return past_key_values if cache is None else cache


def check_generation_step(input_ids: torch.Tensor, model_inputs: dict) -> None:
    """Refuse a decoding step that `generate` feeds only its newest tokens without the cache of the others: the
    model would decode them without their history (what transformers 5.24's rename did to models that took the cache
    under its old name only)."""
    fed = model_inputs.get("decoder_input_ids")
    history = 0 if fed is None else input_ids.shape[1] - fed.shape[1]
    if history == 0:
        return
    cache = model_inputs.get("cache", model_inputs.get("past_key_values"))
    cached = None if cache is None else int(cache.get_seq_length())
    if cached != history:
        found = "no cache" if cache is None else f"a cache of {cached} tokens"
        raise RuntimeError(
            f"generate fed {fed.shape[1]} of {input_ids.shape[1]} target tokens, {history} of them decoded before, "
            f"with {found} under a name this model reads (`cache` or `past_key_values`; the step's inputs: "
            f"{sorted(model_inputs)}). transformers {transformers.__version__} passes its cache otherwise: this "
            "version of the model does not support it (hf_encoders' pyproject.toml names the tested range)."
        )


def decoder_causal_mask(
    config: Seq2SeqConfig,
    inputs_embeds: torch.Tensor,
    attention_mask: torch.Tensor | None,
    cache: EncoderDecoderCache | None,
    position_ids: torch.Tensor | None,
    allow_is_causal_skip: bool = True,
) -> torch.Tensor | None:
    """The decoder's causal self-attention mask over the cached and the new tokens. The decoder has one kind of
    layer: the config's `layer_types` describe the encoder's local/global pattern and do not apply here."""
    self_attention_cache = cache.self_attention_cache if isinstance(cache, EncoderDecoderCache) else cache
    return create_causal_mask(
        config=config,
        inputs_embeds=inputs_embeds,
        attention_mask=attention_mask,
        position_ids=position_ids,
        allow_is_causal_skip=allow_is_causal_skip,
        **{MASK_CACHE_ARGUMENT: self_attention_cache},
    )


def labelled_target_mask(labels: torch.Tensor) -> torch.Tensor:
    """The targets' attention mask where none is given, as `DataCollatorForSeq2Seq` pads them: -100 labels and no
    `decoder_attention_mask`. Each row is real up to its last labelled position (at least its first) and padding
    after it; the causal decoder's outputs up to there do not depend on what follows, so the loss is the same."""
    positions = torch.arange(labels.shape[1], device=labels.device)
    last = torch.where(labels != -100, positions, 0).amax(dim=1, keepdim=True)
    return (positions <= last).long()


def shift_tokens_right(
    labels: torch.Tensor,
    pad_token_id: int | None,
    decoder_start_token_id: int | None,
    position_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """Decoder inputs for teacher forcing: `labels` shifted one step right behind `decoder_start_token_id`, with
    the -100 of ignored positions replaced by padding. For a padding-free row of several targets, give their
    `position_ids`: every sequence (position 0) then starts from `decoder_start_token_id`."""
    if decoder_start_token_id is None:
        raise ValueError(
            "`labels` were given but the config has no `decoder_start_token_id` to build `decoder_input_ids` from; "
            "set `config.decoder_start_token_id` (the id the decoder starts from, e.g. the `<s>` token)."
        )
    if pad_token_id is None:
        raise ValueError("`labels` were given but the config has no `pad_token_id` to replace their -100 with.")
    shifted = labels.new_full(labels.shape, decoder_start_token_id)
    shifted[:, 1:] = labels[:, :-1]
    if position_ids is not None:
        shifted = shifted.masked_fill(position_ids.expand_as(shifted) == 0, decoder_start_token_id)
    return shifted.masked_fill(shifted == -100, pad_token_id)


class DecoderSelfAttention(EncoderAttention):
    """The encoder's self-attention made causal over the target; with a cache, each step appends its keys and
    values. Padding-free targets are always re-padded: the decoder's masks are built for that layout."""

    packed_rows_for_flash = False

    def __init__(self, config: Seq2SeqConfig, layer_idx: int):
        super().__init__(config, layer_idx, is_causal=True)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None,
        cache: EncoderDecoderCache | None = None,
        packed: PackedBatch | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        query, key, value = self.project(hidden_states, position_embeddings, packed)
        if cache is not None:
            key, value = cache.self_attention_cache.update(key, value, self.layer_idx)
        return self.attend(query, key, value, attention_mask, hidden_states.shape[:-1], packed, **kwargs)


class DecoderCrossAttention(nn.Module):
    """Attention from the target to the encoder output. Keys and values depend on the source only: with a cache
    they are computed at the first step and reused at every later one."""

    def __init__(self, config: Seq2SeqConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.num_heads, self.head_dim = config.num_attention_heads, config.head_dim
        self.attention_dropout = config.attention_dropout
        self.is_causal = False
        self.q_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=config.attention_bias)
        self.kv_proj = nn.Linear(config.hidden_size, 2 * config.hidden_size, bias=config.attention_bias)
        self.o_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=config.attention_bias)

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None,
        cache: EncoderDecoderCache | None = None,
        packed: PackedBatch | None = None,
        source_packed: PackedBatch | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        input_shape = hidden_states.shape[:-1]
        query = self.q_proj(hidden_states).view(*input_shape, self.num_heads, self.head_dim)
        if packed is not None:  # padding-free: each target attends to its own source, both re-padded
            query = packed.pad(query)
        query = query.transpose(1, 2)
        if cache is not None and cache.is_updated.get(self.layer_idx):
            cached = cache.cross_attention_cache.layers[self.layer_idx]
            key, value = cached.keys, cached.values
        else:
            kv = self.kv_proj(encoder_hidden_states)
            kv = kv.view(*encoder_hidden_states.shape[:-1], 2, self.num_heads, self.head_dim)
            if source_packed is not None:
                kv = source_packed.pad(kv)
            key, value = (states.transpose(1, 2) for states in kv.unbind(dim=-3))
            if cache is not None:
                key, value = cache.cross_attention_cache.update(key, value, self.layer_idx)
                cache.is_updated[self.layer_idx] = True
        attn_output, attn_weights = run_attention(self, query, key, value, attention_mask, **kwargs)
        if packed is not None:
            attn_output = packed.unpad(attn_output)
        return self.o_proj(attn_output.reshape(*input_shape, -1)), attn_weights


class DecoderLayer(GradientCheckpointingLayer):
    """Pre-norm decoder layer: causal self-attention, cross-attention, MLP. As in the encoder, the first layer has a
    self-attention norm of its own only with `config.first_layer_attention_norm`."""

    def __init__(self, config: Seq2SeqConfig, layer_idx: int):
        super().__init__()
        own_norm = layer_idx > 0 or config.first_layer_attention_norm
        self.self_attn_norm = make_norm(config) if own_norm else nn.Identity()
        self.self_attn = DecoderSelfAttention(config, layer_idx)
        self.cross_attn_norm = make_norm(config)
        self.cross_attn = DecoderCrossAttention(config, layer_idx)
        self.mlp_norm = make_norm(config)
        self.mlp = EncoderMLP(config)
        self.dropout = nn.Dropout(config.hidden_dropout)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None,
        encoder_hidden_states: torch.Tensor,
        encoder_attention_mask: torch.Tensor | None,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache: EncoderDecoderCache | None = None,
        packed: PackedBatch | None = None,
        source_packed: PackedBatch | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> torch.Tensor:
        attn_output, _ = self.self_attn(
            self.self_attn_norm(hidden_states), attention_mask, position_embeddings, cache, packed, **kwargs
        )
        hidden_states = hidden_states + self.dropout(attn_output)
        attn_output, _ = self.cross_attn(
            self.cross_attn_norm(hidden_states),
            encoder_hidden_states,
            encoder_attention_mask,
            cache,
            packed,
            source_packed,
            **kwargs,
        )
        hidden_states = hidden_states + self.dropout(attn_output)
        return hidden_states + self.dropout(self.mlp(self.mlp_norm(hidden_states)))


@dataclass
class DecoderMemory:
    """What the decoder's cross-attention reads, in the layout of `Seq2SeqDecoder.forward`'s `encoder_*` arguments,
    and what the model reports of it beside the decoder's outputs (`outputs`: fields of the model's output class)."""

    hidden_states: torch.Tensor
    attention_mask: torch.Tensor | None = None
    position_ids: torch.LongTensor | None = None
    outputs: dict = field(default_factory=dict)
    layout: BatchLayout | None = None  # its layout, where known without a host read (None: the decoder reads it)


class Seq2SeqPreTrainedModel(EncoderPreTrainedModel):
    config_class = Seq2SeqConfig
    config: Seq2SeqConfig
    _no_split_modules = ["EncoderEmbeddings", "EncoderLayer", "DecoderLayer"]
    _can_compile_fullgraph = True  # padded batches and static-cache decoding steps (generate compiles those on GPU)
    _family_auto_map = SEQ2SEQ_AUTO_MAP
    _sentence_transformers = False

    @classmethod
    def _can_set_attn_implementation(cls) -> bool:
        """`set_attn_implementation` applies: every attention here dispatches through `ALL_ATTENTION_FUNCTIONS`
        (`run_attention` in modeling_encoder.py). transformers decides it from this file's source, where it finds an
        attention module but not the dispatch, and would otherwise keep the old implementation with a warning."""
        return True


class Seq2SeqDecoder(Seq2SeqPreTrainedModel):
    """The decoder stack. Its token embeddings are tied to the encoder's when `config.tie_word_embeddings`."""

    _can_record_outputs = {
        "hidden_states": DecoderLayer,
        "attentions": OutputRecorder(DecoderSelfAttention, index=1),
        "cross_attentions": OutputRecorder(DecoderCrossAttention, index=1),
    }

    def __init__(self, config: Seq2SeqConfig):
        super().__init__(config)
        self.embeddings = EncoderEmbeddings(config)
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_decoder_layers))
        self.final_norm = make_norm(config)
        self.rotary_emb = EncoderRotaryEmbedding(config) if config.position_embedding_type == "rope" else None
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings.tok_embeddings

    def set_input_embeddings(self, value: nn.Embedding):
        self.embeddings.tok_embeddings = value

    def probe(
        self,
        input_ids: torch.LongTensor | None,
        attention_mask: torch.Tensor | None,
        position_ids: torch.LongTensor | None,
        inputs_embeds: torch.Tensor | None,
        cache: EncoderDecoderCache | None,
        kwargs: dict[str, Any],
        labels: torch.Tensor | None = None,
    ) -> BatchProbe | None:
        """Check the targets' shapes and say what to read of them (`probe_batch`, with the head's `labels`). Padded
        targets decoded from scratch (training, scoring) are unpadded with `config.unpadding`, unless hidden states
        or attentions are recorded; decoding steps that continue a cache are not."""
        input_shape, name = input_shape_of(input_ids, inputs_embeds, ("decoder_input_ids", "decoder_inputs_embeds"))
        past_length = cache.get_seq_length() if cache is not None else 0  # (a static cache's length is a tensor)
        check_attention_mask(attention_mask, input_shape, "decoder_input_ids", past_length)
        return probe_batch(
            input_shape,
            input_ids,
            attention_mask,
            position_ids,
            labels=labels,
            vocab_size=self.config.vocab_size,
            unpad=self.config.unpadding and cache is None and not records_outputs(self.config, kwargs),
            name=name,
            check_labels=partial(check_id_bounds, vocab_size=self.config.vocab_size, name="labels"),
            count_labels=labels is not None and self.config.sparse_prediction and self.training,
        )

    @capture_outputs
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        cache: EncoderDecoderCache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        position_ids: torch.LongTensor | None = None,
        encoder_position_ids: torch.LongTensor | None = None,
        past_key_values: EncoderDecoderCache | None = None,
        batch_layout: BatchLayout | None = None,
        memory_layout: BatchLayout | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutputWithPastAndCrossAttentions:
        r"""
        attention_mask: (batch, cached + new tokens), 1 on real tokens and 0 on padding; or a prepared 4D mask.
        cache: the `EncoderDecoderCache` of the tokens decoded so far (`past_key_values` is its name before
            transformers 5.24; either is accepted).
        position_ids / encoder_position_ids: positions of the target and source tokens. For padding-free batches
            (targets in one row of shape (1, total), sources likewise), they restart at 0 with each sequence; each
            target then attends causally within itself and to its own source only.
        batch_layout / memory_layout: the layouts of the targets and of `encoder_hidden_states`, when the model has
            read them already (with the sources, in one host read).
        """
        kwargs = checked_forward_kwargs(kwargs, self)
        cache = resolve_cache(cache, past_key_values)
        if encoder_hidden_states is None:
            raise ValueError("The decoder needs `encoder_hidden_states` (the encoder's output) to attend to.")
        probes = {}
        if batch_layout is None:
            probes["target"] = self.probe(input_ids, attention_mask, position_ids, inputs_embeds, cache, kwargs)
        if memory_layout is None:
            memory_shape = encoder_hidden_states.shape[:2]
            probes["memory"] = probe_batch(memory_shape, None, encoder_attention_mask, encoder_position_ids)
        layouts = read_layouts(probes)  # what the model did not read already, in one host read
        batch_layout, memory_layout = layouts.get("target", batch_layout), layouts.get("memory", memory_layout)
        input_shape = input_ids.shape if input_ids is not None else inputs_embeds.shape[:-1]
        packed, source_packed = self.check_layouts(
            batch_layout, memory_layout, input_shape, encoder_hidden_states, cache
        )
        rows = packed is not None and not batch_layout.unpadded  # padding-free rows

        use_cache = self.config.use_cache if use_cache is None else use_cache
        if use_cache and cache is None and not rows and not (self.gradient_checkpointing and self.training):
            cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
        past_length = cache.get_seq_length() if cache is not None else 0
        longest = packed.max_length if rows else past_length + input_shape[1]
        check_sequence_length(longest, self.config.max_position_embeddings, "decoder_input_ids")
        if packed is not None and (batch_layout.unpadded or position_ids is None):
            position_ids = packed.position_ids
        elif position_ids is None:
            position_ids = (torch.arange(input_shape[1], device=self.device) + past_length)[None]
        if packed is not None and batch_layout.unpadded:  # token-wise work on the real tokens only
            if input_ids is not None:
                input_ids = input_ids.flatten().index_select(0, packed.index)[None]
            else:
                inputs_embeds = inputs_embeds.flatten(0, 1).index_select(0, packed.index)[None]

        hidden_states = self.embeddings(input_ids, inputs_embeds, position_ids)
        self_attention_mask, cross_attention_mask = self.attention_masks(
            hidden_states,
            attention_mask,
            encoder_hidden_states,
            encoder_attention_mask,
            cache,
            batch_layout,
            memory_layout,
        )
        position_embeddings = self.rotary_emb(hidden_states, position_ids) if self.rotary_emb is not None else None
        for layer in self.layers:
            hidden_states = layer(
                hidden_states,
                self_attention_mask,
                encoder_hidden_states,
                cross_attention_mask,
                position_embeddings,
                cache,
                packed,
                source_packed,
                **kwargs,
            )
        hidden_states = self.final_norm(hidden_states)
        if packed is not None and batch_layout.unpadded:  # back in the batch's shape, zeros on padding
            hidden_states = packed.pad(hidden_states)
        return BaseModelOutputWithPastAndCrossAttentions(
            last_hidden_state=hidden_states, **{OUTPUT_CACHE_FIELD: cache}
        )

    def check_layouts(
        self,
        target: BatchLayout | None,
        memory: BatchLayout | None,
        input_shape: torch.Size,
        encoder_hidden_states: torch.Tensor,
        cache: EncoderDecoderCache | None,
    ) -> tuple[PackedBatch | None, PackedBatch | None]:
        """The targets' and the sources' packed layouts, which must agree: padding-free targets (one row) with
        padding-free sources, as many of each, and no cache."""
        if encoder_hidden_states.shape[0] != input_shape[0]:
            raise ValueError(
                f"The source batch has {encoder_hidden_states.shape[0]} sequences but the target batch has "
                f"{input_shape[0]}."
            )
        packed = target.packed if target is not None else None
        source_packed = memory.packed if memory is not None else None
        rows = packed is not None and not target.unpadded
        if rows != (source_packed is not None) or (rows and packed.num_sequences != source_packed.num_sequences):
            raise ValueError(
                "Padding-free batches pack sources and targets alike: one row each, with `position_ids` and "
                "`decoder_position_ids` restarting at every sequence, as many targets as sources; got "
                f"{packed.num_sequences if rows else 'no packed'} targets and "
                f"{source_packed.num_sequences if source_packed else 'no packed'} sources."
            )
        if rows and cache is not None:
            raise ValueError("Padding-free batches are for training: they take no cache.")
        return packed, source_packed

    def attention_masks(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None,
        encoder_hidden_states: torch.Tensor,
        encoder_attention_mask: torch.Tensor | None,
        cache: EncoderDecoderCache | None,
        target: BatchLayout | None,
        memory: BatchLayout | None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The causal self-attention mask and the cross-attention mask, from `transformers.masking_utils`, in the
        layout the attention kernels see (padding-free or unpadded targets re-padded). Where the layouts say whether
        there is padding, masking_utils need not look at the masks on the host."""
        packed, source_packed = target.packed if target else None, memory.packed if memory else None
        mask_embeds, target_mask = packed.mask_arguments(hidden_states) if packed else (hidden_states, attention_mask)
        source_embeds, source_mask = (
            source_packed.mask_arguments(hidden_states)
            if source_packed
            else (encoder_hidden_states, encoder_attention_mask)
        )
        target_skip, source_skip = True, True
        if target is not None and target.padding is not None:
            target_mask, target_skip = (target_mask, False) if target.padding else (None, True)
        if memory is not None and memory.padding is not None:
            source_mask, source_skip = (source_mask, False) if memory.padding else (None, True)
        self_attention_mask = decoder_causal_mask(
            self.config, mask_embeds, target_mask, cache, None, allow_is_causal_skip=target_skip
        )
        cross_attention_mask = create_bidirectional_mask(
            config=self.config,
            inputs_embeds=mask_embeds,
            attention_mask=source_mask,
            encoder_hidden_states=source_embeds,
            allow_is_bidirectional_skip=source_skip,
        )
        return self_attention_mask, cross_attention_mask


def check_config_family(model: Seq2SeqPreTrainedModel, config: Seq2SeqConfig) -> None:
    """Refuse a config of another member of the family (a `Seq2SeqVAEConfig` given to the plain classes would build
    a model without its variational bottleneck)."""
    if config.model_type != model.config_class.model_type:
        raise ValueError(
            f"{type(model).__name__} takes a `{model.config_class.__name__}` (model_type "
            f"{model.config_class.model_type!r}), got a `{type(config).__name__}` (model_type {config.model_type!r}); "
            "build the model with the Auto classes (`AutoModelForSeq2SeqLM.from_config(config)`) to get its class."
        )


class Seq2SeqModel(Seq2SeqPreTrainedModel):
    """Encoder (the encoder family's `EncoderModel`) and decoder; one vocabulary for source and target.

    The decoder's cross-attention reads what `decoder_memory` makes of the encoder's output: the output itself here,
    a latent's memory vectors in the sentence VAE (`Seq2SeqVAEModel`, which overrides it)."""

    _tied_weights_keys = {"decoder.embeddings.tok_embeddings.weight": "encoder.embeddings.tok_embeddings.weight"}
    output_class = Seq2SeqModelOutput

    def __init__(self, config: Seq2SeqConfig):
        check_config_family(self, config)
        super().__init__(config)
        self.encoder = EncoderModel(config)
        self.decoder = Seq2SeqDecoder(config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.encoder.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Embedding):
        self.encoder.set_input_embeddings(value)
        if self.config.tie_word_embeddings:
            self.decoder.set_input_embeddings(value)

    def get_encoder(self) -> EncoderModel:
        return self.encoder

    def get_decoder(self) -> Seq2SeqDecoder:
        return self.decoder

    def given_encoder_outputs(
        self, encoder_outputs: BaseModelOutput | tuple | None, kwargs: dict[str, Any], source_given: bool
    ) -> BaseModelOutput | None:
        """`encoder_outputs` as a `ModelOutput` (a tuple where `return_dict=False` gave one). The sentence VAE takes
        a `latent` from `kwargs` here instead."""
        if isinstance(encoder_outputs, (tuple, list)):
            return BaseModelOutputWithPooling(*encoder_outputs)
        return encoder_outputs

    def decoder_memory(
        self,
        encoder_outputs: BaseModelOutput,
        attention_mask: torch.Tensor | None,
        position_ids: torch.LongTensor | None,
        decoder_position_ids: torch.LongTensor | None,
        target_rows: int,
        source_layout: BatchLayout | None = None,
    ) -> DecoderMemory:
        """What the decoder attends to: the encoder's output, under the source's mask and positions (and layout: the
        encoder's output comes back in the batch's shape also where the encoder unpadded it)."""
        layout = source_layout
        if layout is not None and layout.unpadded:
            layout = BatchLayout(padding=True, read=layout.read)
        return DecoderMemory(encoder_outputs.last_hidden_state, attention_mask, position_ids, layout=layout)

    def read_batch(
        self,
        input_ids: torch.LongTensor | None,
        attention_mask: torch.Tensor | None,
        position_ids: torch.LongTensor | None,
        inputs_embeds: torch.Tensor | None,
        encoder_outputs: BaseModelOutput | None,
        decoder_input_ids: torch.LongTensor | None,
        decoder_attention_mask: torch.Tensor | None,
        decoder_position_ids: torch.LongTensor | None,
        decoder_inputs_embeds: torch.Tensor | None,
        cache: EncoderDecoderCache | None,
        kwargs: dict[str, Any],
        labels: torch.Tensor | None = None,
    ) -> dict[str, BatchLayout | None]:
        """The checked layouts of the sources (`"source"`: the encoder's input, or the mask and positions of given
        `encoder_outputs`) and of the targets (`"target"`, with the head's `labels`), read on the host once."""
        if encoder_outputs is None:
            source = self.encoder.probe(input_ids, attention_mask, position_ids, inputs_embeds, kwargs)
        else:
            given = attention_mask if attention_mask is not None else position_ids
            shape = given.shape if given is not None else torch.Size((1, 1))
            source = probe_batch(shape, None, attention_mask, position_ids)
        target = self.decoder.probe(
            decoder_input_ids,
            decoder_attention_mask,
            decoder_position_ids,
            decoder_inputs_embeds,
            cache,
            kwargs,
            labels,
        )
        return read_layouts({"source": source, "target": target})

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.LongTensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        encoder_outputs: BaseModelOutput | tuple | None = None,
        cache: EncoderDecoderCache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        decoder_inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        position_ids: torch.LongTensor | None = None,
        decoder_position_ids: torch.LongTensor | None = None,
        past_key_values: EncoderDecoderCache | None = None,
        batch_layouts: dict[str, BatchLayout | None] | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> Seq2SeqModelOutput:
        r"""
        input_ids / attention_mask: the source batch. decoder_input_ids / decoder_attention_mask: the target prefix
            (with a cache, the mask covers the cached tokens and the new ones).
        encoder_outputs: the encoder's output, to skip running it again (as `generate` does).
        cache: the decoder's `EncoderDecoderCache` (`past_key_values` is its name before transformers 5.24; either is
            accepted).
        position_ids / decoder_position_ids: for padding-free batches, sources packed in one row and targets in
            another, each with positions restarting at 0 per sequence.
        batch_layouts: what `read_batch` found, when the head has read the batch already (with its labels).
        """
        cache = resolve_cache(cache, past_key_values)
        source_given = input_ids is not None or inputs_embeds is not None
        encoder_outputs = self.given_encoder_outputs(encoder_outputs, kwargs, source_given)
        if batch_layouts is None:
            batch_layouts = self.read_batch(
                input_ids,
                attention_mask,
                position_ids,
                inputs_embeds,
                encoder_outputs,
                decoder_input_ids,
                decoder_attention_mask,
                decoder_position_ids,
                decoder_inputs_embeds,
                cache,
                kwargs,
            )
        if encoder_outputs is None:
            encoder_outputs = self.encoder(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                inputs_embeds=inputs_embeds,
                batch_layout=batch_layouts["source"],
                **kwargs,
            )
        target_rows = (decoder_input_ids if decoder_input_ids is not None else decoder_inputs_embeds).shape[0]
        memory = self.decoder_memory(
            encoder_outputs, attention_mask, position_ids, decoder_position_ids, target_rows, batch_layouts["source"]
        )
        decoder_outputs = self.decoder(
            input_ids=decoder_input_ids,
            attention_mask=decoder_attention_mask,
            encoder_hidden_states=memory.hidden_states,
            encoder_attention_mask=memory.attention_mask,
            cache=cache,
            inputs_embeds=decoder_inputs_embeds,
            use_cache=use_cache,
            position_ids=decoder_position_ids,
            encoder_position_ids=memory.position_ids,
            batch_layout=batch_layouts["target"],
            memory_layout=memory.layout,
            **kwargs,
        )
        return self.output_class(
            last_hidden_state=decoder_outputs.last_hidden_state,
            **{OUTPUT_CACHE_FIELD: getattr(decoder_outputs, OUTPUT_CACHE_FIELD)},
            decoder_hidden_states=decoder_outputs.hidden_states,
            decoder_attentions=decoder_outputs.attentions,
            cross_attentions=decoder_outputs.cross_attentions,
            encoder_last_hidden_state=encoder_outputs.last_hidden_state,
            encoder_hidden_states=encoder_outputs.hidden_states,
            encoder_attentions=encoder_outputs.attentions,
            **memory.outputs,
        )


def copy_pipeline_code(save_directory: str | Path, checkpoint: str | None) -> bool:
    """Copy pipeline_seq2seq.py (the code of `CUSTOM_PIPELINES`) into `save_directory`: from beside this file (the
    package, or the module folder of a model loaded with `trust_remote_code=True` that already fetched it), else
    fetched from the checkpoint the model was loaded from. False where neither has it."""
    source = Path(__file__).with_name(PIPELINE_CODE)
    if not source.is_file() and checkpoint:
        try:
            source = Path(HF_MODULES_CACHE) / get_cached_module_file(checkpoint, PIPELINE_CODE)
        except (OSError, ValueError):
            return False
    if not source.is_file():
        return False
    target = Path(save_directory) / PIPELINE_CODE
    if not target.exists() or not target.samefile(source):
        shutil.copy(source, target)
    return True


class Seq2SeqForConditionalGeneration(Seq2SeqPreTrainedModel, GenerationMixin):
    """Encoder-decoder with a language-model head, for translation and other text-to-text tasks. Generates with
    `generate()` (greedy, beam search, sampling, ...) and serves `pipeline("translation")` and
    `pipeline("text2text-generation")`."""

    _tied_weights_keys = {"lm_head.weight": "model.encoder.embeddings.tok_embeddings.weight"}
    base_model_class = Seq2SeqModel
    output_class = Seq2SeqLMOutput

    def __init__(self, config: Seq2SeqConfig):
        check_config_family(self, config)
        super().__init__(config)
        self.model = self.base_model_class(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_encoder(self) -> EncoderModel:
        return self.model.encoder

    def get_decoder(self) -> Seq2SeqDecoder:
        return self.model.decoder

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, new_embeddings: nn.Linear):
        self.lm_head = new_embeddings

    def save_pretrained(self, save_directory, *args, **kwargs):
        # declare the text-to-text pipelines that transformers 5 no longer ships, whose code travels with the model
        self.config.custom_pipelines = CUSTOM_PIPELINES
        result = super().save_pretrained(save_directory, *args, **kwargs)
        if not copy_pipeline_code(save_directory, getattr(self.config, "_name_or_path", None)):
            logger.warning(
                "%s not found: the folder saved in %s declares its pipelines but lacks their code.",
                PIPELINE_CODE,
                save_directory,
            )
        return result

    # The generation hooks below are called by transformers' `generate` with its own calling convention, which
    # changes between releases: each accepts the conventions of every release in the tested range.

    def _reorder_cache(self, cache: EncoderDecoderCache, beam_idx: torch.LongTensor) -> EncoderDecoderCache:
        """Beam search: the beams follow their parents in the self-attention cache. Beams never change source, and
        the cross-attention keys and values are the same for all beams of a source, so they stay where they are."""
        cache.self_attention_cache.reorder_cache(beam_idx)
        return cache

    def create_masks_for_generate(
        self,
        config: Seq2SeqConfig,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor | None,
        cache: EncoderDecoderCache | None = None,
        position_ids: torch.Tensor | None = None,
        past_key_values: EncoderDecoderCache | None = None,
        **kwargs,
    ) -> torch.Tensor | None:
        """The decoder's causal self-attention mask, which `generate` prepares ahead of each step with a compileable
        cache (`cache_implementation="static"`), given the cache as `cache` (transformers >= 5.24) or
        `past_key_values`."""
        cache = resolve_cache(cache, past_key_values)
        return decoder_causal_mask(config, inputs_embeds, attention_mask, cache, position_ids)

    def prepare_inputs_for_generation(self, input_ids: torch.LongTensor, *args, **kwargs) -> dict:
        """`GenerationMixin`'s, in whatever calling convention the installed transformers uses, then checked: a
        step fed only its newest tokens must come with the cache of the others."""
        model_inputs = super().prepare_inputs_for_generation(input_ids, *args, **kwargs)
        check_generation_step(input_ids, model_inputs)
        return model_inputs

    def prepare_decoder_input_ids_from_labels(self, labels: torch.Tensor) -> torch.Tensor:
        return shift_tokens_right(labels, self.config.pad_token_id, self.config.decoder_start_token_id)

    # Sentence latents are the sentence VAE's (modeling_seq2seq_vae.py), which overrides both: refused here by name.

    def encode_latent(self, *args, **kwargs):
        raise ValueError(f"{type(self).__name__} has no variational bottleneck; {NO_BOTTLENECK}")

    def generate(self, *args, **kwargs):
        if kwargs.get("latent") is not None:
            raise ValueError(
                f"`latent` was given, but {type(self).__name__} has no variational bottleneck; {NO_BOTTLENECK}"
            )
        return super().generate(*args, **kwargs)

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.LongTensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        encoder_outputs: BaseModelOutput | tuple | None = None,
        cache: EncoderDecoderCache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        decoder_inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        position_ids: torch.LongTensor | None = None,
        decoder_position_ids: torch.LongTensor | None = None,
        past_key_values: EncoderDecoderCache | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> Seq2SeqLMOutput:
        r"""
        cache: the decoder's `EncoderDecoderCache` (`past_key_values` is its name before transformers 5.24; either is
            accepted).
        labels: (batch, target_len) target ids, -100 on positions to ignore. Without `decoder_input_ids`, the decoder
            reads the labels shifted right behind `config.decoder_start_token_id` (teacher forcing). With
            `config.sparse_prediction`, in training mode, the LM head runs only on labelled positions and `logits` has
            one row for each; in eval mode it is (batch, target_len, vocab).
        position_ids / decoder_position_ids: padding-free batches (see `Seq2SeqModel.forward`).
        """
        cache = resolve_cache(cache, past_key_values)
        if labels is not None:
            check_input_shape(labels.shape, "labels", "(batch_size, target_length)")
            if decoder_input_ids is not None and decoder_input_ids.shape != labels.shape:
                raise ValueError(
                    f"`decoder_input_ids` has shape {tuple(decoder_input_ids.shape)} but `labels` has shape "
                    f"{tuple(labels.shape)}; they must match (or leave out `decoder_input_ids` to shift the labels)."
                )
            if decoder_input_ids is None and decoder_inputs_embeds is None:
                decoder_input_ids = shift_tokens_right(
                    labels, self.config.pad_token_id, self.config.decoder_start_token_id, decoder_position_ids
                )
            given = decoder_attention_mask is not None or decoder_position_ids is not None
            if self.config.unpadding and cache is None and not given:  # the -100 after the last label: padding
                decoder_attention_mask = labelled_target_mask(labels)
        source_given = input_ids is not None or inputs_embeds is not None
        encoder_outputs = self.model.given_encoder_outputs(encoder_outputs, kwargs, source_given)
        layouts = self.model.read_batch(
            input_ids,
            attention_mask,
            position_ids,
            inputs_embeds,
            encoder_outputs,
            decoder_input_ids,
            decoder_attention_mask,
            decoder_position_ids,
            decoder_inputs_embeds,
            cache,
            kwargs,
            labels,
        )
        target = layouts["target"]

        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            decoder_input_ids=decoder_input_ids,
            decoder_attention_mask=decoder_attention_mask,
            encoder_outputs=encoder_outputs,
            cache=cache,
            inputs_embeds=inputs_embeds,
            decoder_inputs_embeds=decoder_inputs_embeds,
            use_cache=use_cache,
            position_ids=position_ids,
            decoder_position_ids=decoder_position_ids,
            batch_layouts=layouts,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        if labels is not None and self.config.sparse_prediction and self.training and target is not None:
            hidden_states, labels = labelled_rows(hidden_states, labels, target)
        logits = self.lm_head(hidden_states)
        loss = None
        if labels is not None:
            # token-level cross-entropy without a shift: the labels are aligned with the decoder outputs already
            loss = ForMaskedLMLoss(logits, labels, vocab_size=self.config.vocab_size, **kwargs)
        # the model's outputs but its last hidden state (the VAE's latents among them), behind the loss and logits
        reported = {name: value for name, value in outputs.items() if name != "last_hidden_state"}
        return self.output_class(loss=loss, logits=logits, **reported)


__all__ = [
    "Seq2SeqPreTrainedModel",
    "Seq2SeqModel",
    "Seq2SeqForConditionalGeneration",
    "shift_tokens_right",
]
