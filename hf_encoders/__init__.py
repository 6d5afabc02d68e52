"""hf_encoders: Hugging Face-compatible transformer encoders.

Importing the package registers every config and model with the transformers Auto classes, and registers the
classes for auto classes so that `save_pretrained` writes `auto_map` and copies the self-contained modeling files
next to the weights (`trust_remote_code=True` then loads the folder where hf_encoders is not installed).
"""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForMaskedLM,
    AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
)

from .autoencoding import active_units, auroc, pseudo_log_likelihood_scores, reconstruction_scores, sentence_embeddings
from .configuration_hf_encoders import EncoderConfig, Seq2SeqConfig
from .data import (
    DenoisingCollator,
    MLMCollator,
    Seq2SeqCollator,
    build_dataloader,
    load_monolingual_dataset,
    load_parallel_dataset,
    load_text_dataset,
    pack_for_mlm,
    prepare_denoising,
    prepare_translation,
)
from .modeling_encoder import (
    EncoderForMaskedLM,
    EncoderForSequenceClassification,
    EncoderForTokenClassification,
    EncoderModel,
    EncoderPreTrainedModel,
)
from .modeling_seq2seq import Seq2SeqForConditionalGeneration, Seq2SeqModel, Seq2SeqPreTrainedModel
from .pipeline_seq2seq import Text2TextGenerationPipeline, TranslationPipeline
from .tokenization import language_tag, target_language_token, train_tokenizer
from .translation import score_translations, translate, write_translations

__version__ = "0.1.0"

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
}

for _config_class, _models in _AUTO_CLASSES.items():
    AutoConfig.register(_config_class.model_type, _config_class, exist_ok=True)
    _config_class.register_for_auto_class()
    for _auto_class, _model_class in _models.items():
        _auto_class.register(_config_class, _model_class, exist_ok=True)
        _model_class.register_for_auto_class(_auto_class.__name__)

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
    "Text2TextGenerationPipeline",
    "TranslationPipeline",
    "train_tokenizer",
    "language_tag",
    "target_language_token",
    "translate",
    "score_translations",
    "write_translations",
    "load_text_dataset",
    "load_parallel_dataset",
    "load_monolingual_dataset",
    "pack_for_mlm",
    "prepare_translation",
    "prepare_denoising",
    "MLMCollator",
    "Seq2SeqCollator",
    "DenoisingCollator",
    "build_dataloader",
    "sentence_embeddings",
    "reconstruction_scores",
    "pseudo_log_likelihood_scores",
    "auroc",
    "active_units",
]
