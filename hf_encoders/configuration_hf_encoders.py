"""Configurations of the hf_encoders model families, written the transformers 5 way (dataclass fields).

This file is copied next to every saved checkpoint so that `trust_remote_code=True` works without the package:
it imports only `transformers` (and the standard library).
"""

import copy

from huggingface_hub.dataclasses import strict
from transformers.configuration_utils import PreTrainedConfig

HIDDEN_ACTIVATIONS = ("gelu", "geglu", "swiglu")
NORM_TYPES = ("layernorm", "rmsnorm")
POSITION_EMBEDDING_TYPES = ("rope", "absolute")
CLASSIFIER_POOLINGS = ("cls", "mean")
ATTENTION_IMPLEMENTATIONS = ("eager", "sdpa", "flex_attention", "flash_attention_2", "flash_attention_3")


def _check_choice(name: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"`{name}`={value!r} is not supported; choose one of {', '.join(map(repr, allowed))}.")


def _check_positive(config: PreTrainedConfig, *names: str) -> None:
    for name in names:
        if getattr(config, name) <= 0:
            raise ValueError(f"`{name}` must be a positive integer, got {getattr(config, name)}.")


def _check_probability(config: PreTrainedConfig, *names: str) -> None:
    for name in names:
        if not 0.0 <= getattr(config, name) < 1.0:
            raise ValueError(f"`{name}` is a dropout probability and must lie in [0, 1), got {getattr(config, name)}.")


@strict
class EncoderConfig(PreTrainedConfig):
    r"""
    Configuration of the hf_encoders encoder family (`EncoderModel` and its heads), a BERT/ModernBERT-like bidirectional
    transformer: pre-norm layers, RoPE or absolute positions, GLU feed-forward blocks, optional alternating
    local/global attention.

    Args:
        vocab_size: size of the token vocabulary.
        hidden_size: width of the residual stream.
        num_hidden_layers: number of transformer layers.
        num_attention_heads: attention heads per layer; must divide `hidden_size`.
        intermediate_size: width of the feed-forward block (of each half for the GLU activations).
        hidden_activation: `"gelu"` (plain MLP), `"geglu"` or `"swiglu"` (gated linear units).
        norm_type: `"layernorm"` or `"rmsnorm"`.
        norm_eps: epsilon of the normalisation layers.
        norm_bias: whether LayerNorm has a bias (ignored by RMSNorm).
        position_embedding_type: `"rope"` (rotary, applied to queries and keys) or `"absolute"` (learned table).
        rope_theta: base of the rotary frequencies.
        local_rope_theta: base of the rotary frequencies of the local (sliding-window) layers; None: `rope_theta`
            in every layer. ModernBERT's published models use 10,000 there and 160,000 (`rope_theta`) in the global
            layers.
        max_position_embeddings: longest sequence the model accepts.
        local_attention: total width of the sliding window of local layers (each token sees `local_attention // 2`
            tokens on either side; `sliding_window` is that half). Unset: every layer is global.
        global_attn_every_n_layers: with `local_attention`, every n-th layer (from the first) is global and the others
            are local (ModernBERT's alternation); unset, every layer is local. Setting `config.sliding_window` (as
            transformers' tests and ModernBERT's config do) sets `local_attention` to twice the value and keeps this
            pattern, so on a config without local layers it makes every layer local; `sliding_window = None` makes
            every layer global.
        first_layer_attention_norm: whether the first layer normalises its attention input as every other layer
            does. Off (ModernBERT's layout), it reads the already normalised embeddings directly. The encoder-decoder
            turns it on (see [`Seq2SeqConfig`]).
        attention_bias / mlp_bias / decoder_bias / classifier_bias: biases of the projections.
        embedding_dropout / attention_dropout / hidden_dropout / classifier_dropout: dropout probabilities of the
            embeddings, the attention probabilities, the residual branches and the classification heads.
        initializer_range: standard deviation of the (truncated normal) weight initialisation.
        initializer_cutoff_factor: truncation of the initialisation at this many standard deviations.
        classifier_pooling: `"cls"` (each sequence's first real token) or `"mean"` (mean over non-padding tokens) for
            `pooler_output` and the sequence-classification head.
        sparse_prediction: in training mode (`model.train()`) with `labels`, compute the masked-LM head only where
            `labels != -100`, so that `logits` has one row per labelled position (in that order): the speed of
            pretraining. In eval mode (`model.eval()`, as `Trainer.evaluate` and pipelines run), without labels
            (fill-mask) and in a compiled forward, `logits` is (batch, sequence, vocab), as transformers' masked-LM
            models return it and its evaluation tools expect; the loss is the same either way. Off, `logits` is
            (batch, sequence, vocab) always.
        unpadding: run the token-wise work (embeddings, projections, MLPs, norms) of a padded batch on its real
            tokens only, re-padding for attention kernels without a variable-length mode; outputs keep the batch's
            shape, with zeros at padding positions. Batches with little padding (`unpadding_pays` in
            modeling_encoder.py: under 5% in training, 10% in inference, or 16 positions), forwards that return hidden
            states or attentions, and compiled forwards are not unpadded.
        pad/bos/eos/cls/sep/mask_token_id: ids of the special tokens.
        tie_word_embeddings: share the masked-LM decoder matrix with the input embeddings.

    Example:

    ```python
    >>> from hf_encoders import EncoderConfig, EncoderForMaskedLM
    >>> config = EncoderConfig(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=512)
    >>> model = EncoderForMaskedLM(config)
    ```"""

    model_type = "hf_encoder"

    vocab_size: int = 32768
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 2048
    hidden_activation: str = "geglu"
    norm_type: str = "layernorm"
    norm_eps: float | int = 1e-5
    norm_bias: bool = False
    position_embedding_type: str = "rope"
    rope_theta: float | int = 10000.0
    local_rope_theta: float | int | None = None
    max_position_embeddings: int = 1024
    local_attention: int | None = None
    global_attn_every_n_layers: int | None = None
    first_layer_attention_norm: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False
    decoder_bias: bool = True
    classifier_bias: bool = False
    embedding_dropout: float | int = 0.0
    attention_dropout: float | int = 0.0
    hidden_dropout: float | int = 0.0
    classifier_dropout: float | int = 0.0
    initializer_range: float | int = 0.02
    initializer_cutoff_factor: float | int = 2.0
    classifier_pooling: str = "cls"
    sparse_prediction: bool = True
    unpadding: bool = True
    pad_token_id: int | None = 0
    cls_token_id: int | None = 1
    sep_token_id: int | None = 2
    mask_token_id: int | None = 3
    bos_token_id: int | None = 1
    eos_token_id: int | None = 2
    tie_word_embeddings: bool = True

    def __post_init__(self, **kwargs):
        _check_positive(
            self,
            "vocab_size",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
            "max_position_embeddings",
        )
        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"`hidden_size` ({self.hidden_size}) must be divisible by `num_attention_heads` "
                f"({self.num_attention_heads}); the remainder is {self.hidden_size % self.num_attention_heads}."
            )
        if self.position_embedding_type == "rope" and (self.hidden_size // self.num_attention_heads) % 2:
            raise ValueError(
                f"RoPE needs an even head dimension, but `hidden_size` / `num_attention_heads` = "
                f"{self.hidden_size // self.num_attention_heads}."
            )
        _check_choice("hidden_activation", self.hidden_activation, HIDDEN_ACTIVATIONS)
        _check_choice("norm_type", self.norm_type, NORM_TYPES)
        _check_choice("position_embedding_type", self.position_embedding_type, POSITION_EMBEDDING_TYPES)
        _check_choice("classifier_pooling", self.classifier_pooling, CLASSIFIER_POOLINGS)
        _check_probability(self, "embedding_dropout", "attention_dropout", "hidden_dropout", "classifier_dropout")
        if self.global_attn_every_n_layers is not None and self.local_attention is None:
            raise ValueError(
                f"`global_attn_every_n_layers`={self.global_attn_every_n_layers} says which layers stay global among "
                "local ones, but `local_attention` (the local layers' window) is not set: set both for alternating "
                "local/global attention, `local_attention` alone for local attention in every layer, or neither for "
                "global attention in every layer."
            )
        if self.local_attention is not None and (self.local_attention < 2 or self.local_attention % 2):
            raise ValueError(f"`local_attention` must be an even window width >= 2, got {self.local_attention}.")
        if self.global_attn_every_n_layers is not None and self.global_attn_every_n_layers <= 0:
            raise ValueError(
                f"`global_attn_every_n_layers` must be a positive integer, got {self.global_attn_every_n_layers}."
            )
        attn_implementation = kwargs.get("attn_implementation")
        if attn_implementation is not None and not attn_implementation.startswith("kernels-community/"):
            _check_choice("attn_implementation", attn_implementation, ATTENTION_IMPLEMENTATIONS)
        super().__post_init__(**kwargs)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def layer_types(self) -> list[str]:
        """`"full_attention"` or `"sliding_attention"` for each layer: all global without `local_attention`; with it,
        every `global_attn_every_n_layers`-th layer (from the first) global and the others local, or all local."""
        local, every = self.local_attention is not None, self.global_attn_every_n_layers
        return [
            "sliding_attention" if local and (every is None or i % every) else "full_attention"
            for i in range(self.num_hidden_layers)
        ]

    @property
    def sliding_window(self) -> int | None:
        """Tokens seen on each side by local layers (what `transformers.masking_utils` reads): half of
        `local_attention`; None without local layers."""
        return None if self.local_attention is None else self.local_attention // 2

    @sliding_window.setter
    def sliding_window(self, value: int | None) -> None:
        """Set `local_attention` to `2 * value` (as transformers' `ModernBertConfig` does), keeping which layers are
        global (`global_attn_every_n_layers`; without it, every layer is local); None makes every layer global."""
        if value is None:
            self.local_attention = self.global_attn_every_n_layers = None
            return
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(
                f"`sliding_window` is the number of tokens local layers see on each side and must be a positive "
                f"integer (or None for global attention in every layer), got {value!r}."
            )
        self.local_attention = 2 * value


# The settings of the variational bottleneck, which `Seq2SeqConfig` carried (`latent_size=None`: off) before
# `Seq2SeqVAEConfig` took them over. A plain config built with a latent size (a sentence VAE's config.json of that
# time, weights under `model.bottleneck.*`) is refused rather than loaded without its bottleneck; the defaults of a
# plain model's config.json of that time are dropped.
VAE_SETTINGS = ("latent_size", "latent_memory_tokens", "kl_free_bits")


def _refuse_vae_settings(kwargs: dict) -> None:
    settings = {name: kwargs.pop(name) for name in VAE_SETTINGS if name in kwargs}
    if settings.get("latent_size") is not None:
        raise ValueError(
            f"`latent_size`={settings['latent_size']} is a setting of the variational bottleneck, which "
            "`Seq2SeqConfig` and `Seq2SeqForConditionalGeneration` do not have: build a sentence VAE with "
            "`Seq2SeqVAEConfig` and `Seq2SeqVAEForConditionalGeneration`, and load a VAE saved as `hf_seq2seq` (its "
            "config.json has `latent_size`) with `Seq2SeqVAEForConditionalGeneration.from_pretrained(folder)`."
        )


@strict
class Seq2SeqConfig(EncoderConfig):
    r"""
    Configuration of the hf_encoders encoder-decoder family (`Seq2SeqModel`, `Seq2SeqForConditionalGeneration`).

    The encoder is the encoder family's, configured by the same fields (`hidden_size`, `num_attention_heads`,
    `intermediate_size`, `hidden_activation`, `norm_type`, `position_embedding_type`, `max_position_embeddings`,
    local/global attention, ...; see [`EncoderConfig`]). The decoder shares the width, heads, MLP, norm and position
    choices and has its own depth. Source and target share one vocabulary.

    Args:
        num_hidden_layers: encoder layers.
        num_decoder_layers: decoder layers (defaults to `num_hidden_layers`).
        tie_word_embeddings: one matrix for the encoder embeddings, the decoder embeddings and the LM head.
        decoder_start_token_id: the id the decoder starts from (what `labels` are shifted right with).
        use_cache: keep keys and values of past decoder steps during generation.
        first_layer_attention_norm: the first encoder and decoder layers normalise their attention input like every
            other layer (on by default): the standard pre-norm layout, which CTranslate2 runs (`hf-encoders export
            --format ctranslate2`). A config.json without the field was saved before it existed, when both first
            layers read the normalised embeddings directly: it loads with the field off.
        sparse_prediction: in training mode with `labels`, compute the LM head only on labelled target positions
            (`logits` then has one row for each), as the encoder's masked-LM head does; in eval mode (`Seq2SeqTrainer`'s
            evaluation) `logits` is (batch, target, vocab) either way, with the same loss. The training scripts turn
            it on.
        unpadding: as for the encoder, for the sources and for targets decoded from scratch (training, scoring). With
            `labels` and no `decoder_attention_mask`, a target's positions after its last label are its padding (as
            `DataCollatorForSeq2Seq` pads them with -100); their logits are zeros where the targets were unpadded.
        classifier_pooling: how the encoder's `pooler_output` (sentence embeddings, and the input of the variational
            bottleneck of [`Seq2SeqVAEConfig`]) is pooled; `"mean"` over the source tokens by default (sources carry
            no `[CLS]`).

    Generation defaults (beams, lengths, ...) belong in `generation_config.json`, not here.
    """

    model_type = "hf_seq2seq"

    num_hidden_layers: int = 6
    num_decoder_layers: int | None = None
    hidden_size: int = 512
    num_attention_heads: int = 8
    intermediate_size: int = 1536
    max_position_embeddings: int = 512
    pad_token_id: int | None = 0
    bos_token_id: int | None = 1
    eos_token_id: int | None = 2
    decoder_start_token_id: int | None = 1
    cls_token_id: int | None = None
    sep_token_id: int | None = None
    mask_token_id: int | None = None
    is_encoder_decoder: bool = True
    use_cache: bool = True
    classifier_pooling: str = "mean"
    first_layer_attention_norm: bool = True
    sparse_prediction: bool = False

    @classmethod
    def from_dict(cls, config_dict: dict, **kwargs) -> PreTrainedConfig:
        """A saved config.json without `first_layer_attention_norm` describes the layout of its time (first layers
        without an attention norm), not the default of new models."""
        if "first_layer_attention_norm" not in config_dict:
            config_dict = {**config_dict, "first_layer_attention_norm": False}
        return super().from_dict(config_dict, **kwargs)

    def __post_init__(self, **kwargs):
        _refuse_vae_settings(kwargs)
        if self.num_decoder_layers is None:
            self.num_decoder_layers = self.num_hidden_layers
        if self.num_decoder_layers <= 0:
            raise ValueError(f"`num_decoder_layers` must be a positive integer, got {self.num_decoder_layers}.")
        super().__post_init__(**kwargs)

    def get_text_config(self, decoder=None, encoder=None) -> PreTrainedConfig:
        """With `decoder=True`, a copy shaped like the decoder (its depth, global attention only), which is what
        transformers sizes the generation cache from."""
        if decoder and not encoder:
            decoder_config = copy.deepcopy(self)
            decoder_config.num_hidden_layers = self.num_decoder_layers
            decoder_config.local_attention = decoder_config.global_attn_every_n_layers = None
            return decoder_config
        return self


@strict
class Seq2SeqVAEConfig(Seq2SeqConfig):
    r"""
    Configuration of the sentence variational autoencoder (`Seq2SeqVAEModel`, `Seq2SeqVAEForConditionalGeneration`):
    the encoder-decoder of [`Seq2SeqConfig`] with a variational bottleneck between encoder and decoder.

    Args:
        latent_size: size of the Gaussian latent: the pooled encoder output (`classifier_pooling`) gives its mean and
            log-variance, and its sample (the mean at evaluation) is the decoder's only memory.
        latent_memory_tokens: how many memory vectors the latent is projected to for the decoder's cross-attention.
        kl_free_bits: free-bits floor (nats per latent dimension, averaged over the batch) under which the KL term
            stops pulling the posterior towards the prior, so that the latent keeps carrying information.

    A VAE saved before this class existed (`model_type` `"hf_seq2seq"` with `latent_size` in its config.json) loads
    with `Seq2SeqVAEForConditionalGeneration.from_pretrained(folder)`.
    """

    model_type = "hf_seq2seq_vae"

    latent_size: int = 32
    latent_memory_tokens: int = 1
    kl_free_bits: float | int = 0.0

    def __post_init__(self, **kwargs):
        kwargs.pop("model_type", None)  # a VAE saved as "hf_seq2seq" is loaded (and saved again) as this model type
        if self.latent_size is None or self.latent_size <= 0:
            raise ValueError(
                f"`latent_size` must be a positive integer, got {self.latent_size} (a model without the variational "
                "bottleneck is a `Seq2SeqConfig`)."
            )
        if self.latent_memory_tokens <= 0:
            raise ValueError(f"`latent_memory_tokens` must be a positive integer, got {self.latent_memory_tokens}.")
        if self.kl_free_bits < 0:
            raise ValueError(f"`kl_free_bits` must be >= 0 (nats per latent dimension), got {self.kl_free_bits}.")
        super().__post_init__(**kwargs)


__all__ = ["EncoderConfig", "Seq2SeqConfig", "Seq2SeqVAEConfig"]
