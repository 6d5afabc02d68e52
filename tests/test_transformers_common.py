"""transformers' own common model and config tests (`ModelTesterMixin`, `ConfigTester`, from the sdist of the
installed release; see transformers_sdist.py) run against both families, the way transformers tests its own models.

A common test that cannot apply to this architecture is skipped where it is overridden below, with the reason.

Each family runs them on two tiny configs: a global and a local layer (every common test), and global attention in
every layer, the default of `EncoderConfig` (the common tests whose path depends on which layers are local: attention
kernels and outputs, masks and padding; several set `config.sliding_window`, which on such a config makes every layer
local). The second config runs a subset so that the file's time grows by about a third rather than doubling."""

import unittest
from unittest import mock

import torch
from transformers.models.auto import modeling_auto
from transformers_sdist import import_common_tests

from hf_encoders import (
    EncoderConfig,
    EncoderForMaskedLM,
    EncoderForSequenceClassification,
    EncoderForTokenClassification,
    EncoderModel,
    Seq2SeqConfig,
    Seq2SeqForConditionalGeneration,
    Seq2SeqModel,
)

test_modeling_common, test_configuration_common = import_common_tests()
ModelTesterMixin = test_modeling_common.ModelTesterMixin
GenerationTesterMixin = test_modeling_common.GenerationTesterMixin
ConfigTester = test_configuration_common.ConfigTester
ids_tensor, random_attention_mask = test_modeling_common.ids_tensor, test_modeling_common.random_attention_mask


# The common tests know transformers' own heads by name (labels for the training tests, which classes are bare
# models): while they run, ours are named in the same tables, as if they were transformers' own.
OUR_NAMES = {
    "MODEL_MAPPING_NAMES": {"hf_encoder": "EncoderModel", "hf_seq2seq": "Seq2SeqModel"},
    "MODEL_FOR_MASKED_LM_MAPPING_NAMES": {"hf_encoder": "EncoderForMaskedLM"},
    "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES": {"hf_encoder": "EncoderForSequenceClassification"},
    "MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES": {"hf_encoder": "EncoderForTokenClassification"},
    "MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES": {"hf_seq2seq": "Seq2SeqForConditionalGeneration"},
}


class NamedLikeTransformersModels:
    @classmethod
    def setUpClass(cls):
        cls.patches = [mock.patch.dict(getattr(modeling_auto, table), names) for table, names in OUR_NAMES.items()]
        for patch in cls.patches:
            patch.start()

    @classmethod
    def tearDownClass(cls):
        for patch in cls.patches:
            patch.stop()


# Which layers are local in the tiny configs (`EncoderConfig` fields)
LOCAL_AND_GLOBAL = dict(local_attention=4, global_attn_every_n_layers=2)  # layer 0 global, layer 1 local
ALL_GLOBAL = dict(local_attention=None, global_attn_every_n_layers=None)


class EncoderModelTester:
    """Tiny encoders of two layers (a global and a local one, or `layer_pattern`), batches of 13 sequences of 7 tokens
    with random padding."""

    config_class = EncoderConfig

    def __init__(self, parent, batch_size=13, seq_length=7, vocab_size=99, layer_pattern=LOCAL_AND_GLOBAL):
        self.parent = parent
        self.batch_size, self.seq_length, self.vocab_size = batch_size, seq_length, vocab_size
        self.is_training = True
        self.hidden_size, self.num_hidden_layers, self.num_attention_heads = 32, 2, 4
        self.layer_pattern = layer_pattern

    def config_fields(self) -> dict:
        return dict(
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            intermediate_size=37,
            max_position_embeddings=512,
            num_labels=3,
            **self.layer_pattern,
        )

    def get_config(self):
        return self.config_class(**self.config_fields())

    def prepare_config_and_inputs_for_common(self):
        input_ids = ids_tensor([self.batch_size, self.seq_length], self.vocab_size)
        attention_mask = random_attention_mask([self.batch_size, self.seq_length])
        return self.get_config(), {"input_ids": input_ids, "attention_mask": attention_mask}


class Seq2SeqModelTester(EncoderModelTester):
    """Tiny encoder-decoders (the encoder's layers as `EncoderModelTester`'s), sources and targets of 7 tokens."""

    config_class = Seq2SeqConfig

    def config_fields(self) -> dict:
        special_ids = dict(pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=0)
        return {**super().config_fields(), **special_ids}

    def prepare_config_and_inputs_for_common(self):
        config, inputs = super().prepare_config_and_inputs_for_common()
        inputs["input_ids"] = inputs["input_ids"].clamp(min=3)  # no special tokens inside the source
        inputs["decoder_input_ids"] = ids_tensor([self.batch_size, self.seq_length], self.vocab_size)
        inputs["decoder_attention_mask"] = torch.ones_like(inputs["decoder_input_ids"])
        return config, inputs


class EncoderModelTest(NamedLikeTransformersModels, ModelTesterMixin, unittest.TestCase):
    all_model_classes = (
        EncoderModel,
        EncoderForMaskedLM,
        EncoderForSequenceClassification,
        EncoderForTokenClassification,
    )

    layer_pattern = LOCAL_AND_GLOBAL

    def setUp(self):
        self.model_tester = EncoderModelTester(self, layer_pattern=self.layer_pattern)
        self.config_tester = ConfigTester(self, config_class=EncoderConfig, hidden_size=48)

    def test_config(self):
        self.config_tester.run_common_tests()


class Seq2SeqModelTest(NamedLikeTransformersModels, ModelTesterMixin, GenerationTesterMixin, unittest.TestCase):
    all_model_classes = (Seq2SeqModel, Seq2SeqForConditionalGeneration)
    is_encoder_decoder = True

    layer_pattern = LOCAL_AND_GLOBAL

    def setUp(self):
        self.model_tester = Seq2SeqModelTester(self, layer_pattern=self.layer_pattern)
        self.config_tester = ConfigTester(self, config_class=Seq2SeqConfig, hidden_size=48)

    def test_config(self):
        self.config_tester.run_common_tests()


def only(prefixes: tuple[str, ...]):
    """Keep, of a test class's inherited tests, those whose names start with one of `prefixes` (unittest and pytest
    collect only callables)."""

    def keep(cls):
        for name in dir(cls):
            if name.startswith("test") and not name.startswith(prefixes):
                setattr(cls, name, None)
        return cls

    return keep


# The common tests whose path depends on which layers are local: the attention kernels (eager against sdpa, each
# setting `config.sliding_window = 2`; flash and flex attention where there is a GPU), attention outputs, masks
# and padding.
ATTENTION_TESTS = (
    "test_eager_matches_sdpa_inference",
    "test_flash_attn",
    "test_flex_attention",
    "test_sdpa_can",
    "test_can_set_attention_dynamically",
    "test_attention_outputs",
    "test_batching_equivalence",
    "test_sliding_window_mask",
)


@only(ATTENTION_TESTS)
class EncoderAllGlobalModelTest(EncoderModelTest):
    layer_pattern = ALL_GLOBAL


@only(("test_eager_matches_sdpa_inference", "test_flash_attn", "test_flex_attention", "test_attention_outputs"))
class Seq2SeqAllGlobalModelTest(Seq2SeqModelTest):
    """(The decoder is global whatever the config says: the encoder's tests are the family's.)"""

    layer_pattern = ALL_GLOBAL
