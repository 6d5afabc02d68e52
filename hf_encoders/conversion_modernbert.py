"""transformers' ModernBERT checkpoints in the encoder family: `EncoderForMaskedLM.from_modernbert(...)` (and the other
heads'), `hf-encoders convert`.

The encoder family is ModernBERT's architecture (pre-norm, RoPE with separate global and local bases, GeGLU,
alternating local/global attention, a first layer without its own attention norm, the prediction head's dense + act +
norm), so a checkpoint converts exactly: the config field by field, the weights by name. What ModernBERT can be set to
and this family cannot compute is refused by name, never approximated.

This file is copied next to every saved checkpoint with modeling_encoder.py (whose `from_modernbert` imports it):
it imports only `torch`, `transformers` and its siblings.
"""

import logging
import os
import re
from typing import Any

import torch
from transformers import AutoTokenizer, ModernBertConfig, PreTrainedConfig, PreTrainedModel
from transformers.models.modernbert import modeling_modernbert

from .configuration_hf_encoders import EncoderConfig

logger = logging.getLogger(__name__)

# ModernBERT's classes and the names of ours that take their weights (in modeling_encoder.py)
HEADS = {
    "ModernBertModel": "EncoderModel",
    "ModernBertForMaskedLM": "EncoderForMaskedLM",
    "ModernBertForSequenceClassification": "EncoderForSequenceClassification",
    "ModernBertForTokenClassification": "EncoderForTokenClassification",
}

# ModernBERT's module names inside a layer -> ours
RENAMES = {r"\.attn\.Wqkv\.": ".attn.qkv_proj.", r"\.attn\.Wo\.": ".attn.o_proj.", r"\.mlp\.Wi\.": ".mlp.up_proj."}
RENAMES[r"\.mlp\.Wo\."] = ".mlp.down_proj."

GLU_ACTIVATIONS = {"gelu": "geglu", "silu": "swiglu", "swish": "swiglu"}

# settings copied as they are
SAME = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "max_position_embeddings",
    "norm_eps",
    "norm_bias",
    "attention_bias",
    "mlp_bias",
    "decoder_bias",
    "classifier_bias",
    "classifier_pooling",
    "embedding_dropout",
    "classifier_dropout",
    "initializer_range",
    "initializer_cutoff_factor",
    "pad_token_id",
    "bos_token_id",
    "eos_token_id",
    "cls_token_id",
    "sep_token_id",
    "tie_word_embeddings",
    "num_labels",
    "id2label",
    "label2id",
    "problem_type",
)


def refuse(setting: str, value: Any, why: str) -> None:
    raise ValueError(f"ModernBERT's `{setting}`={value!r} cannot be converted: {why}")


def local_attention_pattern(config: ModernBertConfig) -> dict[str, int | None]:
    """ModernBERT's per-layer attention kinds as ours describe them: every layer global, or layer i global when
    i % n == 0 and local (within `local_attention`) otherwise."""
    kinds = list(config.layer_types)
    if "sliding_attention" not in kinds:
        return {"local_attention": None, "global_attn_every_n_layers": None}
    every = next((i for i, kind in enumerate(kinds[1:], start=1) if kind == "full_attention"), len(kinds))
    expected = ["full_attention" if i % every == 0 else "sliding_attention" for i in range(len(kinds))]
    if kinds != expected:
        refuse("layer_types", kinds, "this family alternates one global layer with n - 1 local ones, from layer 0.")
    return {"local_attention": config.local_attention, "global_attn_every_n_layers": every}


def rope_bases(config: ModernBertConfig) -> dict[str, float]:
    """The global and local RoPE bases, refusing RoPE scalings (this family has plain RoPE)."""
    parameters = config.rope_parameters
    for kind in ("full_attention", "sliding_attention"):
        if parameters[kind].get("rope_type", "default") != "default":
            refuse(f"rope_parameters[{kind!r}]", parameters[kind], "this family has plain (unscaled) RoPE.")
    return {
        "rope_theta": parameters["full_attention"]["rope_theta"],
        "local_rope_theta": parameters["sliding_attention"]["rope_theta"],
    }


def check_convertible(config: ModernBertConfig) -> None:
    """Refuse, by name, what ModernBERT can be set to and this family cannot compute."""
    if config.hidden_activation not in GLU_ACTIVATIONS:
        refuse("hidden_activation", config.hidden_activation, f"the gated MLP here takes {sorted(GLU_ACTIVATIONS)}.")
    if config.classifier_activation != "gelu":
        refuse("classifier_activation", config.classifier_activation, "the prediction head here uses gelu.")
    for setting in ("mlp_dropout", "attention_dropout"):
        if getattr(config, setting):
            refuse(
                setting,
                getattr(config, setting),
                "ModernBERT drops out inside the MLP and after the attention output, where this family has no "
                "dropout (it has `hidden_dropout` on the residual branches); set it to 0 to convert.",
            )
    if config.sparse_pred_ignore_index != -100:
        refuse("sparse_pred_ignore_index", config.sparse_pred_ignore_index, "the labels here ignore -100.")
    if config.deterministic_flash_attn:
        refuse("deterministic_flash_attn", True, "this family has no deterministic flash-attention switch.")


def encoder_config_from_modernbert(
    config: ModernBertConfig, config_class: type[EncoderConfig] = EncoderConfig, mask_token_id: int | None = None
) -> EncoderConfig:
    """Our config of the same model, field by field (`mask_token_id` from the tokenizer: ModernBERT's config has
    none)."""
    if config.model_type != "modernbert":
        raise ValueError(f"Not a ModernBERT config: model_type is {config.model_type!r}.")
    check_convertible(config)
    return config_class(
        **{name: getattr(config, name) for name in SAME},
        **local_attention_pattern(config),
        **rope_bases(config),
        hidden_activation=GLU_ACTIVATIONS[config.hidden_activation],
        norm_type="layernorm",
        position_embedding_type="rope",
        first_layer_attention_norm=False,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        sparse_prediction=True,
        mask_token_id=mask_token_id,
        attn_implementation=config._attn_implementation,
    )


def encoder_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """ModernBERT's weights under our names."""
    renamed = {}
    for name, tensor in state_dict.items():
        for pattern, replacement in RENAMES.items():
            name = re.sub(pattern, replacement, name)
        renamed[name] = tensor
    return renamed


def check_is_modernbert(source: "str | os.PathLike", **kwargs) -> None:
    """Refuse, naming what it is, a checkpoint whose config.json is not ModernBERT's: read as a `ModernBertConfig`,
    another model's settings fail on whichever field first differs, with a message that names neither model."""
    config, _ = PreTrainedConfig.get_config_dict(source, **kwargs)
    model_type = config.get("model_type")
    if model_type == ModernBertConfig.model_type:
        return
    what = f"a {model_type!r} model" if model_type else "a model whose config.json names no model_type"
    if config.get("architectures"):
        what += f" ({', '.join(config['architectures'])})"
    if model_type == EncoderConfig.model_type:
        what += ", already of this family: load it with from_pretrained, there is nothing to convert"
    raise ValueError(
        f"{source} is not a ModernBERT checkpoint (model_type {ModernBertConfig.model_type!r}): it holds {what}."
    )


def load_modernbert(source: "str | os.PathLike | PreTrainedModel", **kwargs) -> tuple[PreTrainedModel, int | None]:
    """A ModernBERT model (given, or loaded from a folder or Hub id with `kwargs` for `from_pretrained`) and its
    tokenizer's mask token id (None where there is no tokenizer)."""
    if isinstance(source, PreTrainedModel):
        return source, None
    check_is_modernbert(source, **kwargs)
    config = ModernBertConfig.from_pretrained(source, **kwargs)
    architecture = (config.architectures or ["ModernBertForMaskedLM"])[0]
    if architecture not in HEADS:
        raise ValueError(f"{source} holds a {architecture}; the heads that convert are {sorted(HEADS)}.")
    model = getattr(modeling_modernbert, architecture).from_pretrained(source, config=config, **kwargs)
    try:
        mask_token_id = AutoTokenizer.from_pretrained(source).mask_token_id
    except (OSError, ValueError):
        mask_token_id = None
    return model, mask_token_id


def convert_modernbert(model_class: type[PreTrainedModel], source, **kwargs) -> PreTrainedModel:
    """`model_class` (one of this family's encoder heads) holding the ModernBERT model `source` exactly: a model of
    one of the `HEADS`, or a folder or Hub id of one (`kwargs` go to its `from_pretrained`). A part that the source
    lacks (a classifier, from a masked-LM checkpoint) keeps its new initialisation, as `from_pretrained` leaves it,
    and is named in a warning."""
    modernbert, mask_token_id = load_modernbert(source, **kwargs)
    if type(modernbert).__name__ not in HEADS:
        raise ValueError(f"A {type(modernbert).__name__} does not convert; the heads that do are {sorted(HEADS)}.")
    config = encoder_config_from_modernbert(modernbert.config, model_class.config_class, mask_token_id)
    model = model_class(config)
    weights = encoder_state_dict(modernbert.state_dict())
    source_bare, target_bare = type(modernbert).__name__ == "ModernBertModel", model_class.__name__ == "EncoderModel"
    if source_bare and not target_bare:  # a head's backbone from a bare model
        weights = {f"model.{name}": tensor for name, tensor in weights.items()}
    elif target_bare and not source_bare:  # a bare model from a head's backbone
        weights = {
            name.removeprefix("model."): tensor for name, tensor in weights.items() if name.startswith("model.")
        }
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if backbone := [name for name in unexpected if not name.startswith(("decoder.", "classifier."))]:
        raise ValueError(f"ModernBERT weights with no place in {model_class.__name__}: {sorted(backbone)}.")
    if unexpected:  # the source's own head (a masked-LM decoder converted into a classifier, say)
        logger.warning("%s: the checkpoint's %s are not used", model_class.__name__, sorted(unexpected))
    if new := sorted(set(missing) - set(model._tied_weights_keys or {})):
        logger.warning("%s: not in the ModernBERT checkpoint, newly initialised: %s", model_class.__name__, new)
    model.to(device=modernbert.device, dtype=modernbert.dtype)
    check_same_outputs(modernbert, model, same_head=HEADS[type(modernbert).__name__] == model_class.__name__)
    return model.train(modernbert.training)


@torch.no_grad()
def check_same_outputs(modernbert: PreTrainedModel, model: PreTrainedModel, same_head: bool) -> None:
    """Raise unless both give the same outputs on a small padded batch (the last layer's hidden states where the
    heads differ): a conversion is exact, or it fails here, also when a transformers release changes ModernBERT."""
    training = modernbert.training, model.training
    modernbert.eval(), model.eval()
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, modernbert.config.vocab_size, (2, 24), generator=generator).to(modernbert.device)
    mask = torch.ones_like(ids)
    mask[1, 16:] = 0
    hidden = not same_head
    theirs, ours = modernbert(ids, mask, output_hidden_states=hidden), model(ids, mask, output_hidden_states=hidden)
    theirs, ours = (theirs.hidden_states[-1], ours.hidden_states[-1]) if hidden else (theirs[0], ours[0])
    real = mask.bool() if theirs.ndim == 3 else torch.ones(len(theirs), dtype=torch.bool)
    difference = (theirs[real].float() - ours[real].float()).abs().max().item()
    tolerance = (1e-4 if ours.dtype == torch.float32 else 5e-2) * (1 + theirs[real].abs().max().item())
    modernbert.train(training[0]), model.train(training[1])
    if not difference <= tolerance:
        raise RuntimeError(
            f"The converted {type(model).__name__} differs from the {type(modernbert).__name__} by {difference:.3g} "
            f"(tolerance {tolerance:.3g}): this transformers release computes ModernBERT otherwise than this "
            "conversion knows."
        )


__all__ = ["convert_modernbert", "encoder_config_from_modernbert"]
