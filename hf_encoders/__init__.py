"""hf_encoders: Hugging Face-compatible transformer encoders.

Importing the package registers every config and model with the transformers Auto classes, and registers the
classes for auto classes so that `save_pretrained` writes `auto_map` and copies the self-contained modeling files
next to the weights (`trust_remote_code=True` then loads the folder where hf_encoders is not installed).
"""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
)

from .configuration_hf_encoders import EncoderConfig
from .modeling_encoder import (
    EncoderForMaskedLM,
    EncoderForSequenceClassification,
    EncoderForTokenClassification,
    EncoderModel,
    EncoderPreTrainedModel,
)

__version__ = "0.1.0"

_AUTO_CLASSES = {
    AutoModel: EncoderModel,
    AutoModelForMaskedLM: EncoderForMaskedLM,
    AutoModelForSequenceClassification: EncoderForSequenceClassification,
    AutoModelForTokenClassification: EncoderForTokenClassification,
}

AutoConfig.register(EncoderConfig.model_type, EncoderConfig, exist_ok=True)
EncoderConfig.register_for_auto_class()
for _auto_class, _model_class in _AUTO_CLASSES.items():
    _auto_class.register(EncoderConfig, _model_class, exist_ok=True)
    _model_class.register_for_auto_class(_auto_class.__name__)

__all__ = [
    "EncoderConfig",
    "EncoderPreTrainedModel",
    "EncoderModel",
    "EncoderForMaskedLM",
    "EncoderForSequenceClassification",
    "EncoderForTokenClassification",
]
