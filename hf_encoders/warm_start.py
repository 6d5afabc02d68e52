"""Warm-starting an encoder-decoder from a saved encoder, the way BERT2BERT does: `seq2seq_from_encoder`."""

import logging
from pathlib import Path

import torch

from .configuration_hf_encoders import EncoderConfig, Seq2SeqConfig
from .modeling_encoder import EncoderModel
from .modeling_seq2seq import Seq2SeqForConditionalGeneration

logger = logging.getLogger(__name__)

# decoder module <- encoder module of the same layer (self-attention, MLP and their norms; cross-attention is new)
DECODER_LAYER_SOURCES = {
    "self_attn.qkv_proj": "attn.qkv_proj",
    "self_attn.o_proj": "attn.o_proj",
    "self_attn_norm": "attn_norm",
    "mlp": "mlp",
    "mlp_norm": "mlp_norm",
}


def seq2seq_from_encoder(
    encoder_path: str | Path,
    num_decoder_layers: int | None = None,
    init_decoder_from_encoder: bool = True,
    model_class: type[Seq2SeqForConditionalGeneration] = Seq2SeqForConditionalGeneration,
    **config_overrides,
) -> Seq2SeqForConditionalGeneration:
    """An encoder-decoder (`model_class`, e.g. `Seq2SeqVAEForConditionalGeneration` with `latent_size=...`) warm
    started from a saved encoder checkpoint (an `EncoderForMaskedLM` or `EncoderModel` folder or Hub id).

    The encoder, the (shared) embeddings and the final norm are copied. With `init_decoder_from_encoder`, decoder
    layer i also takes its self-attention, MLP and their norms from encoder layer i (where the encoder has such a
    layer). Cross-attention (and a variational bottleneck) is always new. The special ids default to the encoder's:
    `[CLS]` starts the decoder, `[SEP]` ends it; `config_overrides` set any field of the model's config. What was
    copied and what is new is logged and kept in `model.warm_start_report`.
    """
    encoder = EncoderModel.from_pretrained(encoder_path)
    settings = seq2seq_settings(encoder.config, model_class.config_class, num_decoder_layers)
    model = model_class(model_class.config_class(**{**settings, **config_overrides}))
    encoder_state = encoder.state_dict()
    sources = weight_sources(encoder_state, model.config, encoder.config.num_hidden_layers, init_decoder_from_encoder)
    copy_weights(model, sources)
    model.warm_start_report = warm_start_report(model, sources, encoder_path)
    return model


def seq2seq_settings(
    encoder_config: EncoderConfig, config_class: type[Seq2SeqConfig], num_decoder_layers: int | None
) -> dict:
    """The encoder's settings that the encoder-decoder's config shares, with its special ids and the decoder depth."""
    values = encoder_config.to_dict()
    shared = set(config_class.__dataclass_fields__) & set(values) - {"model_type", "architectures"}
    return {
        **{name: values[name] for name in shared},
        "bos_token_id": encoder_config.cls_token_id,
        "decoder_start_token_id": encoder_config.cls_token_id,
        "eos_token_id": encoder_config.sep_token_id,
        "num_decoder_layers": num_decoder_layers or encoder_config.num_hidden_layers,
    }


def weight_sources(
    encoder_state: dict[str, torch.Tensor],
    config: Seq2SeqConfig,
    num_encoder_layers: int,
    init_decoder_from_encoder: bool,
) -> dict[str, torch.Tensor]:
    """The encoder-decoder's parameter name -> the encoder tensor it starts from."""
    sources = {f"model.encoder.{name}": tensor for name, tensor in encoder_state.items()}
    decoder_sources = {"embeddings.norm": "embeddings.norm", "final_norm": "final_norm"}
    if init_decoder_from_encoder:
        for i in range(min(config.num_decoder_layers, num_encoder_layers)):
            decoder_sources.update(
                {f"layers.{i}.{target}": f"layers.{i}.{source}" for target, source in DECODER_LAYER_SOURCES.items()}
            )
    for target, source in decoder_sources.items():
        for name, tensor in encoder_state.items():
            if name.startswith(source + "."):
                sources[f"model.decoder.{target}{name[len(source) :]}"] = tensor
    if not config.tie_word_embeddings:  # separate matrices: each starts from the encoder's embeddings
        embeddings = encoder_state["embeddings.tok_embeddings.weight"]
        sources["model.decoder.embeddings.tok_embeddings.weight"] = embeddings
        sources["lm_head.weight"] = embeddings
    return sources


def copy_weights(model: torch.nn.Module, sources: dict[str, torch.Tensor]) -> None:
    state = model.state_dict()
    unknown = sorted(set(sources) - set(state))
    if unknown:
        raise ValueError(f"Warm start found no place for encoder weights {unknown[:5]} (of {len(unknown)}).")
    with torch.no_grad():
        for name, tensor in sources.items():
            state[name].copy_(tensor)


def warm_start_report(model, sources: dict[str, torch.Tensor], encoder_path: str | Path) -> dict[str, list[str]]:
    """What was copied, what is tied to a copied tensor and what is newly initialised; logged."""
    state = model.state_dict()
    tied = {name for name in model.all_tied_weights_keys if name not in sources}
    report = {
        "source": str(encoder_path),
        "copied": sorted(sources),
        "tied": sorted(tied),
        "initialised": sorted(set(state) - set(sources) - tied),
    }
    logger.info(
        "Warm start from %s: copied %d tensors, %d tied to them, %d newly initialised: %s",
        encoder_path,
        len(report["copied"]),
        len(report["tied"]),
        len(report["initialised"]),
        ", ".join(report["initialised"]),
    )
    return report


__all__ = ["seq2seq_from_encoder"]
