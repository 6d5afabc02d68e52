"""hf_encoders: Hugging Face-compatible transformer encoders.

Importing the package registers every config and model with the transformers Auto classes, and registers the
classes for auto classes so that `save_pretrained` writes `auto_map` and copies the self-contained modeling files
next to the weights (`trust_remote_code=True` then loads the folder where hf_encoders is not installed).

The configs and models are imported with the package; the rest (data, tokenizers, translation, pipelines, anomaly
scores, warm start) is imported on first use, so `import hf_encoders` does not load `datasets` or `evaluate`.
"""

import importlib

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForMaskedLM,
    AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
)

from .configuration_hf_encoders import EncoderConfig, Seq2SeqConfig, Seq2SeqVAEConfig
from .modeling_encoder import (
    EncoderForMaskedLM,
    EncoderForSequenceClassification,
    EncoderForTokenClassification,
    EncoderModel,
    EncoderPreTrainedModel,
)
from .modeling_seq2seq import Seq2SeqForConditionalGeneration, Seq2SeqModel, Seq2SeqPreTrainedModel
from .modeling_seq2seq_vae import Seq2SeqVAEForConditionalGeneration, Seq2SeqVAEModel

__version__ = "0.5.0"

_AUTO_CLASSES = {
    EncoderConfig: {
        AutoModel: EncoderModel,
        AutoModelForMaskedLM: EncoderForMaskedLM,
        AutoModelForSequenceClassification: EncoderForSequenceClassification,
        AutoModelForTokenClassification: EncoderForTokenClassification,
    },
    Seq2SeqConfig: {
        AutoModel: Seq2SeqModel,
        AutoModelForSeq2SeqLM: Seq2SeqForConditionalGeneration,
    },
    Seq2SeqVAEConfig: {
        AutoModel: Seq2SeqVAEModel,
        AutoModelForSeq2SeqLM: Seq2SeqVAEForConditionalGeneration,
    },
}

for _config_class, _models in _AUTO_CLASSES.items():
    AutoConfig.register(_config_class.model_type, _config_class, exist_ok=True)
    _config_class.register_for_auto_class()
    for _auto_class, _model_class in _models.items():
        _auto_class.register(_config_class, _model_class, exist_ok=True)
        _model_class.register_for_auto_class(_auto_class.__name__)

# name -> the submodule that defines it, imported when the name is first used (PEP 562)
_LAZY_NAMES = {
    "autoencoding": "active_units auroc pseudo_log_likelihood_scores reconstruction_scores sentence_embeddings",
    "data": "DenoisingCollator MLMCollator PairCollator Seq2SeqCollator build_dataloader load_monolingual_dataset "
    "load_parallel_dataset load_text_dataset pack_for_mlm prepare_denoising prepare_translation",
    "pipeline_seq2seq": "Text2TextGenerationPipeline TranslationPipeline",
    "tokenization": "language_tag target_language_token train_tokenizer",
    "translation": "score_translations translate write_translations",
    "warm_start": "seq2seq_from_encoder",
}
_LAZY = {name: module for module, names in _LAZY_NAMES.items() for name in names.split()}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value  # later uses do not come back here
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "EncoderConfig",
    "EncoderPreTrainedModel",
    "EncoderModel",
    "EncoderForMaskedLM",
    "EncoderForSequenceClassification",
    "EncoderForTokenClassification",
    "Seq2SeqConfig",
    "Seq2SeqPreTrainedModel",
    "Seq2SeqModel",
    "Seq2SeqForConditionalGeneration",
    "Seq2SeqVAEConfig",
    "Seq2SeqVAEModel",
    "Seq2SeqVAEForConditionalGeneration",
    *_LAZY,
]
