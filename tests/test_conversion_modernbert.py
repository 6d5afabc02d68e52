"""ModernBERT checkpoints converted into the encoder family (`from_modernbert`, `hf-encoders convert`): the same
outputs as transformers' own classes, offline, on tiny models built from those classes."""

import json

import pytest
import torch
from conftest import REFUSE_HF_ENCODERS, random_batch, run_without_the_package, tiny_config
from transformers import (
    AutoModelForMaskedLM,
    BertConfig,
    BertForMaskedLM,
    ModernBertConfig,
    ModernBertForMaskedLM,
    ModernBertForQuestionAnswering,
    ModernBertForSequenceClassification,
    ModernBertForTokenClassification,
    ModernBertModel,
)

from hf_encoders import (
    EncoderForMaskedLM,
    EncoderForSequenceClassification,
    EncoderForTokenClassification,
    EncoderModel,
)
from hf_encoders.cli import main as cli

ATOL = 1e-5  # observed: 0 (the same operations in the same order), up to 1e-6 with other kernels
CONFIGS = {
    "local/global": {},  # ModernBERT's defaults: every third layer global, RoPE bases 160,000 and 10,000
    "global only": dict(global_attn_every_n_layers=1),
    "biases": dict(attention_bias=True, mlp_bias=True, norm_bias=True, classifier_bias=True),
    "no decoder bias, untied, mean pooling": dict(
        decoder_bias=False, tie_word_embeddings=False, classifier_pooling="mean"
    ),
    "sparse prediction": dict(sparse_prediction=True),
}
HEAD_PAIRS = [
    (ModernBertModel, EncoderModel),
    (ModernBertForMaskedLM, EncoderForMaskedLM),
    (ModernBertForSequenceClassification, EncoderForSequenceClassification),
    (ModernBertForTokenClassification, EncoderForTokenClassification),
]


def modernbert_config(**overrides) -> ModernBertConfig:
    values = dict(
        vocab_size=99,
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=48,
        max_position_embeddings=64,
        local_attention=4,
        num_labels=3,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        cls_token_id=1,
        sep_token_id=2,
        attn_implementation="sdpa",
    )
    return ModernBertConfig(**{**values, **overrides})


def modernbert(model_class, seed=0, **overrides):
    torch.manual_seed(seed)
    model = model_class(modernbert_config(**overrides)).eval()
    with torch.no_grad():  # biases and norms away from their initial zeros and ones, so that a lost one shows
        for parameter in model.parameters():
            if parameter.ndim == 1:
                parameter.add_(0.1 * torch.randn_like(parameter))
    return model


def main_output(output):
    return output.logits if hasattr(output, "logits") else output.last_hidden_state


@pytest.mark.parametrize("setting", CONFIGS)
@pytest.mark.parametrize("theirs_class, ours_class", HEAD_PAIRS, ids=lambda c: c.__name__)
def test_converted_model_gives_modernberts_outputs(theirs_class, ours_class, setting):
    """In eval and (dropout off) train mode, on a padded batch and on one without padding, with labels: the same
    outputs and losses, and the same gradients."""
    theirs = modernbert(theirs_class, **CONFIGS[setting])
    ours = ours_class.from_modernbert(theirs)
    config = ours.config
    assert config.rope_theta == 160_000 and config.local_rope_theta == 10_000
    assert config.local_attention == (None if setting == "global only" else 4)
    ids, mask = random_batch(config, lengths=(12, 5, 9))
    labels = {
        ModernBertForMaskedLM: ids.masked_fill((mask == 0) | (ids % 3 == 0), -100),
        ModernBertForSequenceClassification: torch.tensor([0, 2, 1]),
        ModernBertForTokenClassification: (ids % 3).masked_fill(mask == 0, -100),
    }.get(theirs_class)
    for training in (False, True):
        for batch_mask in (mask, torch.ones_like(mask)):
            theirs.train(training), ours.train(training)
            inputs = dict(input_ids=ids, attention_mask=batch_mask, labels=labels)
            if labels is None:
                del inputs["labels"]
            theirs.zero_grad(), ours.zero_grad()
            # (ours skips the logits in training by default: `skip_logits=False` returns them as ModernBERT does)
            wanted = {"skip_logits": False} if labels is not None and ours_class is EncoderForMaskedLM else {}
            their_output, our_output = theirs(**inputs), ours(**inputs, **wanted)
            their_main, our_main = main_output(their_output), main_output(our_output)
            if labels is not None and theirs_class is ModernBertForMaskedLM:  # compared on the labelled positions
                # theirs: a row per labelled position with sparse_prediction; ours: in training mode only
                their_main = their_main if theirs.config.sparse_prediction else their_main[labels != -100]
                our_main = our_main if training else our_main[labels != -100]
            elif their_main.ndim == 3:
                their_main, our_main = their_main[batch_mask.bool()], our_main[batch_mask.bool()]
            torch.testing.assert_close(our_main, their_main, atol=ATOL, rtol=1e-5)
            if labels is not None:
                torch.testing.assert_close(our_output.loss, their_output.loss, atol=ATOL, rtol=1e-5)
                their_output.loss.backward(), our_output.loss.backward()
                their_grads = dict(theirs.named_parameters())
                for name, parameter in ours.named_parameters():
                    their_name = name.replace("qkv_proj", "Wqkv").replace("o_proj", "Wo")
                    their_name = their_name.replace("up_proj", "Wi").replace("down_proj", "Wo")
                    expected = their_grads[their_name].grad
                    torch.testing.assert_close(parameter.grad, expected, atol=1e-5, rtol=1e-4, msg=name)


def test_a_head_the_checkpoint_lacks_is_new_and_named(caplog):
    theirs = modernbert(ModernBertForMaskedLM)
    with caplog.at_level("WARNING"):
        ours = EncoderForSequenceClassification.from_modernbert(theirs)
    assert "newly initialised" in caplog.text and "classifier.weight" in caplog.text
    ids, mask = random_batch(ours.config)
    with torch.no_grad():
        expected = theirs.model(ids, mask).last_hidden_state
        torch.testing.assert_close(ours.model(ids, mask).last_hidden_state[mask.bool()], expected[mask.bool()])
    backbone = EncoderModel.from_modernbert(theirs)  # and the bare encoder from a head's checkpoint
    with torch.no_grad():
        torch.testing.assert_close(backbone(ids, mask).last_hidden_state[mask.bool()], expected[mask.bool()])


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(mlp_dropout=0.1), "`mlp_dropout`=0.1 cannot be converted"),
        (dict(attention_dropout=0.1), "`attention_dropout`=0.1 cannot be converted"),
        (dict(classifier_activation="relu"), "`classifier_activation`='relu'"),
        (dict(hidden_activation="relu"), "`hidden_activation`='relu'"),
        (dict(layer_types=["full_attention", "sliding_attention", "full_attention", "full_attention"]), "layer_types"),
        (
            dict(rope_parameters={"full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}}),
            "plain (unscaled) RoPE",
        ),
        (dict(deterministic_flash_attn=True), "`deterministic_flash_attn`"),
    ],
)
def test_settings_this_family_cannot_compute_are_refused_by_name(overrides, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        EncoderForMaskedLM.from_modernbert(modernbert(ModernBertForMaskedLM, **overrides))


def test_a_head_that_does_not_convert_is_refused():
    with pytest.raises(ValueError, match="ModernBertForQuestionAnswering does not convert"):
        EncoderModel.from_modernbert(ModernBertForQuestionAnswering(modernbert_config()))


def test_convert_on_a_folder_that_is_not_modernbert_says_what_it_holds(tmp_path, capsys):
    """A BERT folder (it used to fail on "classifier_dropout") and one of this family: named, nothing written."""
    bert = BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37)
    BertForMaskedLM(bert).save_pretrained(tmp_path / "bert")
    EncoderModel(tiny_config()).save_pretrained(tmp_path / "ours")
    assert cli(["convert", str(tmp_path / "bert"), str(tmp_path / "converted")]) == 1
    error = capsys.readouterr().err
    assert (
        f"{tmp_path / 'bert'} is not a ModernBERT checkpoint (model_type 'modernbert'): it holds a 'bert' model (BertForMaskedLM)"
        in error
    ), error
    assert not (tmp_path / "converted").exists()
    with pytest.raises(ValueError, match="holds a 'hf_encoder' model \\(EncoderModel\\), already of this family"):
        EncoderModel.from_modernbert(tmp_path / "ours")


CONVERTED_SCRIPT = (
    REFUSE_HF_ENCODERS
    + """
import json, sys, torch
from transformers import AutoModelForMaskedLM, pipeline
folder, ids = sys.argv[1], torch.tensor(json.loads(sys.argv[2]))
model = AutoModelForMaskedLM.from_pretrained(folder, trust_remote_code=True).eval()
with torch.no_grad():
    logits = model(ids).logits
fill = pipeline("fill-mask", model=folder, trust_remote_code=True)
print(json.dumps({"logits": logits.tolist(), "top": fill("the cat [MASK] on the mat", top_k=1)[0]["token_str"]}))
"""
)


def test_convert_command_writes_a_folder_that_loads_anywhere(tmp_path, tokenizer):
    """`hf-encoders convert` on a saved ModernBERT folder: the model and its tokenizer (the mask token comes into
    the config), loadable with the Auto classes, and with trust_remote_code where the package is missing."""
    theirs = modernbert(ModernBertForMaskedLM, vocab_size=len(tokenizer))
    theirs.save_pretrained(tmp_path / "modernbert")
    tokenizer.save_pretrained(tmp_path / "modernbert")
    assert cli(["convert", str(tmp_path / "modernbert"), str(tmp_path / "converted")]) == 0
    config = json.loads((tmp_path / "converted" / "config.json").read_text())
    assert config["architectures"] == ["EncoderForMaskedLM"] and config["mask_token_id"] == tokenizer.mask_token_id
    assert (tmp_path / "converted" / "conversion_modernbert.py").is_file()
    ids = torch.tensor([[1, 7, 9, 11, 2]])
    with torch.no_grad():
        expected = theirs(ids).logits
        torch.testing.assert_close(AutoModelForMaskedLM.from_pretrained(tmp_path / "converted")(ids).logits, expected)
    result = run_without_the_package(
        CONVERTED_SCRIPT, tmp_path / "converted", json.dumps(ids.tolist()), modules=tmp_path / "modules"
    )
    torch.testing.assert_close(torch.tensor(result["logits"]), expected, atol=ATOL, rtol=1e-5)
    assert result["top"]
    assert cli(["convert", str(tmp_path / "modernbert"), str(tmp_path / "converted")]) == 2  # not empty: refused
    assert cli(["convert", str(tmp_path / "modernbert"), str(tmp_path / "embeddings"), "--head", "model"]) == 0
    assert json.loads((tmp_path / "embeddings" / "config.json").read_text())["architectures"] == ["EncoderModel"]
