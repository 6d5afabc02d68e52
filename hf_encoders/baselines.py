"""transformers' own models of the same size as ours, for side-by-side runs on the same data, masks and schedule:
`BertForMaskedLM` and `ModernBertForMaskedLM` beside `EncoderForMaskedLM` (`--architecture bert`, `modernbert`),
`MarianMTModel` beside `Seq2SeqForConditionalGeneration` (`--architecture marian`).

    model = bert_for_masked_lm(tokenizer, hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                               intermediate_size=512, hidden_activation="geglu")
    model = modernbert_for_masked_lm(tokenizer, hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                                     intermediate_size=512, hidden_activation="geglu")
    model = marian_mt(tokenizer, hidden_size=256, num_hidden_layers=3, num_decoder_layers=3, num_attention_heads=4,
                      intermediate_size=1024)

What the baseline cannot do as ours does (RoPE, RMSNorm, pre-norm, local attention, GLU) is replaced by its own
design and logged as a warning: BERT and Marian are post-norm LayerNorm models with learned (BERT) or sinusoidal
(Marian) positions and global attention. ModernBERT is the design ours follows (pre-norm, RoPE, GLU, local/global
attention): it takes our settings as they are, and what it has in other places (dropout) is mapped and said.
"""

import logging

from transformers import (
    BertConfig,
    BertForMaskedLM,
    MarianConfig,
    MarianMTModel,
    ModernBertConfig,
    ModernBertForMaskedLM,
    PreTrainedTokenizerBase,
)

from .tokenization import seq2seq_token_ids

logger = logging.getLogger(__name__)
GATED_ACTIVATIONS = ("geglu", "swiglu")
MODERNBERT_ACTIVATIONS = {"geglu": "gelu", "swiglu": "silu"}  # ModernBERT's MLP is gated: its "gelu" is GeGLU


def bert_for_masked_lm(
    tokenizer: PreTrainedTokenizerBase,
    hidden_size: int,
    num_hidden_layers: int,
    num_attention_heads: int,
    intermediate_size: int,
    hidden_activation: str = "gelu",
    hidden_dropout: float = 0.0,
    attention_dropout: float = 0.0,
    max_position_embeddings: int = 512,
    attn_implementation: str = "sdpa",
    norm_type: str = "layernorm",
    position_embedding_type: str = "absolute",
    local_attention: int | None = None,
) -> BertForMaskedLM:
    """A fresh `BertForMaskedLM` of the given width, depth and heads. A GLU `hidden_activation` of width w costs
    what a plain MLP of width 1.5 w does: BERT gets that (gelu) MLP."""
    if norm_type != "layernorm" or position_embedding_type == "rope" or local_attention:
        logger.warning(
            "BertForMaskedLM is post-norm LayerNorm with learned absolute positions and global attention; "
            "norm_type, position_embedding_type and local_attention do not apply to it"
        )
    gated = hidden_activation in GATED_ACTIVATIONS
    config = BertConfig(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        hidden_size=hidden_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        intermediate_size=intermediate_size * 3 // 2 if gated else intermediate_size,
        hidden_act="gelu",
        hidden_dropout_prob=hidden_dropout,
        attention_probs_dropout_prob=attention_dropout,
        max_position_embeddings=max_position_embeddings,
    )
    return BertForMaskedLM._from_config(config, attn_implementation=attn_implementation)


def modernbert_for_masked_lm(
    tokenizer: PreTrainedTokenizerBase,
    hidden_size: int,
    num_hidden_layers: int,
    num_attention_heads: int,
    intermediate_size: int,
    hidden_activation: str = "geglu",
    hidden_dropout: float = 0.0,
    attention_dropout: float = 0.0,
    max_position_embeddings: int = 512,
    attn_implementation: str = "sdpa",
    norm_type: str = "layernorm",
    position_embedding_type: str = "rope",
    local_attention: int | None = None,
    global_attn_every_n_layers: int | None = None,
    rope_theta: float = 10000.0,
    local_rope_theta: float | None = None,
) -> ModernBertForMaskedLM:
    """A fresh `ModernBertForMaskedLM` of our settings: the same width, depth, heads, gated MLP, RoPE bases and
    local/global layer pattern, with its own sparse prediction head (its fastest path). A plain MLP of width w costs
    what a gated one of width 2 w / 3 does: ModernBERT, gated only, gets that. Its dropout sits in the MLP and on the
    embeddings, where ours drops the residual branches: `hidden_dropout` goes there."""
    if norm_type != "layernorm" or position_embedding_type != "rope":
        logger.warning(
            "ModernBertForMaskedLM is pre-norm LayerNorm with rotary positions; norm_type and "
            "position_embedding_type do not apply to it"
        )
    gated = hidden_activation in GATED_ACTIVATIONS
    if not gated:
        logger.warning(
            f"ModernBertForMaskedLM's MLP is gated: the plain {hidden_activation} MLP of width {intermediate_size} "
            f"becomes the GeGLU of the same FLOPs, width {intermediate_size * 2 // 3}"
        )
    if local_attention is None:  # as ours: every layer global; with a window, every n-th global, or none
        kinds = ["full_attention"] * num_hidden_layers
    else:
        every = global_attn_every_n_layers
        kinds = [
            "full_attention" if every and i % every == 0 else "sliding_attention" for i in range(num_hidden_layers)
        ]
    config = ModernBertConfig(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.cls_token_id,
        eos_token_id=tokenizer.sep_token_id,
        cls_token_id=tokenizer.cls_token_id,
        sep_token_id=tokenizer.sep_token_id,
        hidden_size=hidden_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        intermediate_size=intermediate_size if gated else intermediate_size * 2 // 3,
        hidden_activation=MODERNBERT_ACTIVATIONS.get(hidden_activation, "gelu"),
        max_position_embeddings=max_position_embeddings,
        layer_types=kinds,
        local_attention=local_attention or max_position_embeddings,
        rope_parameters={
            "full_attention": {"rope_type": "default", "rope_theta": rope_theta},
            "sliding_attention": {"rope_type": "default", "rope_theta": local_rope_theta or rope_theta},
        },
        embedding_dropout=hidden_dropout,
        mlp_dropout=hidden_dropout,
        attention_dropout=attention_dropout,
        sparse_prediction=True,
    )
    return ModernBertForMaskedLM._from_config(config, attn_implementation=attn_implementation)


def marian_mt(
    tokenizer: PreTrainedTokenizerBase,
    hidden_size: int,
    num_hidden_layers: int,
    num_decoder_layers: int,
    num_attention_heads: int,
    intermediate_size: int,
    hidden_activation: str = "gelu",
    hidden_dropout: float = 0.1,
    attention_dropout: float = 0.0,
    embedding_dropout: float | None = None,
    max_position_embeddings: int = 256,
    attn_implementation: str = "sdpa",
    norm_type: str = "layernorm",
    position_embedding_type: str = "sinusoidal",
) -> MarianMTModel:
    """A fresh `MarianMTModel` (shared, tied embeddings; gelu) with `num_hidden_layers` encoder and
    `num_decoder_layers` decoder layers, whose generation starts, ends and pads with the tokenizer's ids. Its one
    dropout, `hidden_dropout`, acts on the residual branches and on the input embeddings."""
    if hidden_activation != "gelu" or norm_type != "layernorm" or position_embedding_type == "rope":
        logger.warning(
            "MarianMTModel is post-norm LayerNorm with sinusoidal positions and one activation (gelu here); "
            "hidden_activation, norm_type and position_embedding_type do not apply to it"
        )
    if embedding_dropout is not None and embedding_dropout != hidden_dropout:
        logger.warning(
            f"MarianMTModel drops its input embeddings with its one dropout, hidden_dropout={hidden_dropout}; "
            f"embedding_dropout={embedding_dropout} does not apply to it"
        )
    special = seq2seq_token_ids(tokenizer)
    config = MarianConfig(
        d_model=hidden_size,
        encoder_layers=num_hidden_layers,
        decoder_layers=num_decoder_layers,
        encoder_attention_heads=num_attention_heads,
        decoder_attention_heads=num_attention_heads,
        encoder_ffn_dim=intermediate_size,
        decoder_ffn_dim=intermediate_size,
        activation_function="gelu",
        dropout=hidden_dropout,
        attention_dropout=attention_dropout,
        activation_dropout=0.0,
        max_position_embeddings=max_position_embeddings,
        scale_embedding=True,
        share_encoder_decoder_embeddings=True,
        tie_word_embeddings=True,
        forced_eos_token_id=None,
        **special,
        decoder_vocab_size=len(tokenizer),
    )
    model = MarianMTModel._from_config(config, attn_implementation=attn_implementation)
    for key in ("decoder_start_token_id", "bos_token_id", "eos_token_id", "pad_token_id"):
        setattr(model.generation_config, key, special[key])
    return model


__all__ = ["bert_for_masked_lm", "marian_mt", "modernbert_for_masked_lm"]
