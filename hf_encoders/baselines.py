"""transformers' own models of the same size as ours, for side-by-side runs on the same data, masks and schedule:
`BertForMaskedLM` beside `EncoderForMaskedLM` (`--architecture bert`), `MarianMTModel` beside
`Seq2SeqForConditionalGeneration` (`--architecture marian`).

    model = bert_for_masked_lm(tokenizer, hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                               intermediate_size=512, hidden_activation="geglu")
    model = marian_mt(tokenizer, hidden_size=256, num_hidden_layers=3, num_decoder_layers=3, num_attention_heads=4,
                      intermediate_size=1024)

What the baseline cannot do as ours does (RoPE, RMSNorm, pre-norm, local attention, GLU) is replaced by its own
design and logged as a warning: BERT and Marian are post-norm LayerNorm models with learned (BERT) or sinusoidal
(Marian) positions and global attention.
"""

import logging

from transformers import BertConfig, BertForMaskedLM, MarianConfig, MarianMTModel, PreTrainedTokenizerBase

from .tokenization import seq2seq_token_ids

logger = logging.getLogger(__name__)
GATED_ACTIVATIONS = ("geglu", "swiglu")


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


__all__ = ["bert_for_masked_lm", "marian_mt"]
