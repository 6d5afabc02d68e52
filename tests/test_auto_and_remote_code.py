"""The ecosystem's entry points: Auto classes, trust_remote_code without the package, pipelines."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import REFUSE_HF_ENCODERS, random_batch, run_without_the_package, tiny_config, token_rows
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoTokenizer,
    pipeline,
)

import hf_encoders
from hf_encoders import (
    EncoderConfig,
    EncoderForMaskedLM,
    EncoderForSequenceClassification,
    EncoderForTokenClassification,
    EncoderModel,
)

HEADS = {
    "AutoModel": (AutoModel, EncoderModel),
    "AutoModelForMaskedLM": (AutoModelForMaskedLM, EncoderForMaskedLM),
    "AutoModelForSequenceClassification": (AutoModelForSequenceClassification, EncoderForSequenceClassification),
    "AutoModelForTokenClassification": (AutoModelForTokenClassification, EncoderForTokenClassification),
}


def main_output(output):
    return output.logits if hasattr(output, "logits") else output.last_hidden_state


@pytest.mark.parametrize("auto_name", HEADS)
def test_auto_classes_load_our_models_with_the_package(auto_name, tmp_path):
    auto_class, model_class = HEADS[auto_name]
    torch.manual_seed(0)
    model = model_class(tiny_config(num_labels=3)).eval()
    model.save_pretrained(tmp_path)
    assert isinstance(AutoConfig.from_pretrained(tmp_path), EncoderConfig)
    loaded = auto_class.from_pretrained(tmp_path).eval()
    assert type(loaded) is model_class
    ids, mask = random_batch(model.config)
    with torch.no_grad():
        torch.testing.assert_close(main_output(loaded(ids, mask)), main_output(model(ids, mask)))


def test_auto_classes_build_from_config():
    config = tiny_config()
    assert type(AutoModel.from_config(config)) is EncoderModel
    assert type(AutoModelForMaskedLM.from_config(config)) is EncoderForMaskedLM


def test_saved_folder_is_self_contained(tmp_path):
    torch.manual_seed(0)
    EncoderForMaskedLM(tiny_config()).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "hf_encoder"
    assert set(config["auto_map"]) == {"AutoConfig", *HEADS}
    for code in ("modeling_encoder.py", "configuration_hf_encoders.py", "conversion_modernbert.py"):
        source = (tmp_path / code).read_text()
        imports = [line for line in source.splitlines() if line.startswith(("import ", "from "))]
        assert not [line for line in imports if "hf_encoders" in line and "configuration_hf_encoders" not in line]
        assert all(
            line.split()[1].split(".")[0]
            in {
                "copy",
                "collections",
                "dataclasses",
                "functools",
                "json",
                "logging",
                "os",
                "pathlib",
                "re",
                "typing",
                "torch",
                "transformers",
                "huggingface_hub",
                "",
            }
            for line in imports
        ), imports


# Runs in a fresh interpreter where `hf_encoders` cannot be imported (the source tree is on sys.path, so imports of
# it are refused explicitly): everything must come from the folder's own code through trust_remote_code.
REMOTE_SCRIPT = REFUSE_HF_ENCODERS + textwrap.dedent(
    """
    try:
        import hf_encoders  # noqa: F401
        raise SystemExit("hf_encoders should not be importable here")
    except ModuleNotFoundError:
        pass

    import torch
    import transformers
    from transformers import pipeline

    folder, expected_file = sys.argv[1], sys.argv[2]
    expected = torch.load(expected_file)
    results = {}
    for auto_name, (key, tensor) in expected["outputs"].items():
        model = getattr(transformers, auto_name).from_pretrained(folder, trust_remote_code=True).eval()
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        with torch.no_grad():
            output = model(**expected["inputs"])
        results[auto_name] = float((getattr(output, key) - tensor).abs().max())
    fill = pipeline("fill-mask", model=folder, trust_remote_code=True)
    results["fill_mask"] = [p["token_str"] for p in fill("the cat [MASK] on the mat", top_k=3)]
    print(json.dumps(results))
    """
)


def test_trust_remote_code_without_the_package(tmp_path, tokenizer):
    torch.manual_seed(0)
    config = tiny_config(vocab_size=len(tokenizer), num_labels=3)
    ids, mask = random_batch(config)
    inputs = {"input_ids": ids, "attention_mask": mask}
    folder = tmp_path / "model"
    masked_lm = EncoderForMaskedLM(config).eval()
    masked_lm.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    with torch.no_grad():
        outputs = {
            "AutoModelForMaskedLM": ("logits", masked_lm(**inputs).logits),
            "AutoModel": ("last_hidden_state", masked_lm.model(**inputs).last_hidden_state),
        }
    torch.save({"inputs": inputs, "outputs": outputs}, tmp_path / "expected.pt")
    results = run_without_the_package(REMOTE_SCRIPT, folder, tmp_path / "expected.pt", modules=tmp_path / "modules")
    assert results["AutoModelForMaskedLM"] < 1e-5 and results["AutoModel"] < 1e-5, results
    assert len(results["fill_mask"]) == 3


@pytest.mark.parametrize("head", ["AutoModelForSequenceClassification", "AutoModelForTokenClassification"])
def test_trust_remote_code_classification_heads(head, tmp_path):
    torch.manual_seed(0)
    config = tiny_config(num_labels=3)
    model = HEADS[head][1](config).eval()
    model.save_pretrained(tmp_path / "model")
    ids, mask = random_batch(config)
    with torch.no_grad():
        logits = model(ids, mask).logits
    torch.save(
        {"inputs": {"input_ids": ids, "attention_mask": mask}, "outputs": {head: ("logits", logits)}},
        tmp_path / "expected.pt",
    )
    script = REMOTE_SCRIPT.split("fill = pipeline")[0] + "print(json.dumps(results))\n"
    results = run_without_the_package(
        script, tmp_path / "model", tmp_path / "expected.pt", modules=tmp_path / "modules"
    )
    assert results[head] < 1e-5


def test_fill_mask_and_feature_extraction_pipelines(tmp_path, tokenizer):
    torch.manual_seed(0)
    config = tiny_config(vocab_size=len(tokenizer), classifier_pooling="mean")
    EncoderForMaskedLM(config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    assert AutoTokenizer.from_pretrained(tmp_path).mask_token == "[MASK]"

    fill = pipeline("fill-mask", model=str(tmp_path))
    predictions = fill("the cat [MASK] on the mat", top_k=4)
    assert len(predictions) == 4
    assert all(p["sequence"].startswith("the cat ") for p in predictions)
    scores = [p["score"] for p in predictions]
    assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1

    extract = pipeline("feature-extraction", model=str(tmp_path))
    features = extract("the dog ran in the park")
    n_tokens = len(tokenizer("the dog ran in the park")["input_ids"])
    assert torch.tensor(features).shape == (1, n_tokens, config.hidden_size)
    model = AutoModel.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        direct = model(**tokenizer("the dog ran in the park", return_tensors="pt")).last_hidden_state
    torch.testing.assert_close(torch.tensor(features), direct, atol=1e-5, rtol=1e-4)


def test_importing_the_package_registers_the_models_and_loads_the_data_libraries_only_when_used():
    script = textwrap.dedent(
        """
        import json, sys
        import hf_encoders
        from transformers import AutoConfig
        registered = type(AutoConfig.for_model("hf_encoder")).__name__
        heavy = ["datasets", "evaluate", "matplotlib"]
        before = [name for name in heavy if name in sys.modules]
        hf_encoders.load_text_dataset, hf_encoders.score_translations
        after = [name for name in heavy if name in sys.modules]
        missing = [name for name in hf_encoders.__all__ if not hasattr(hf_encoders, name)]
        print(json.dumps({"registered": registered, "before": before, "after": after, "missing": missing}))
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"registered": "EncoderConfig", "before": [], "after": ["datasets", "evaluate"], "missing": []}
    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        hf_encoders.not_a_name  # noqa: B018


def test_batched_pipelines_give_what_each_text_alone_gives(tmp_path, tokenizer):
    """A pipeline pads a batch of texts of different lengths, and the model runs it on the real tokens only:
    fill-mask and feature extraction give each text what they give it alone."""
    torch.manual_seed(0)
    EncoderForMaskedLM(tiny_config(vocab_size=len(tokenizer))).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    texts = [
        "the cat [MASK] on the mat",
        "a [MASK] ran",
        "the big dog sat with a small [MASK] in the red park and the cat ran on the blue mat",
    ]
    fill = pipeline("fill-mask", model=str(tmp_path), batch_size=3)
    with token_rows(fill.model.model.layers[0].mlp) as rows:
        batched = fill(texts, top_k=3)
    real_tokens = sum(len(tokenizer(text)["input_ids"]) for text in texts)
    assert rows == [(1, real_tokens)]  # unpadded inside the model
    for text, predictions in zip(texts, batched, strict=True):
        alone = fill(text, top_k=3)
        assert [p["token"] for p in predictions] == [p["token"] for p in alone]
        assert [p["score"] for p in predictions] == pytest.approx([p["score"] for p in alone], abs=1e-5)

    extract = pipeline("feature-extraction", model=str(tmp_path), batch_size=3)
    for text, features in zip(texts, extract(texts), strict=True):
        length = len(tokenizer(text)["input_ids"])
        alone = torch.tensor(extract(text))
        torch.testing.assert_close(torch.tensor(features)[:, :length], alone, atol=1e-5, rtol=1e-4)
