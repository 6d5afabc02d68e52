"""Checkpoints saved here load, without the package, under every transformers the project supports: the folder's own
code (trust_remote_code) gives the tokens and logits that the process which saved it got.

The checkpoints are trained by the scripts (the `translation_run` and `mlm_run` fixtures). They are loaded by this
interpreter and by those named in HF_ENCODERS_MATRIX_PYTHONS (separated by `:`): `make matrix` names the
interpreters of its floor and newest environments, so that CI loads them under both."""

import os
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import REFUSE_HF_ENCODERS, run_without_the_package
from transformers import AutoModelForMaskedLM, AutoModelForSeq2SeqLM, AutoTokenizer

INTERPRETERS = [sys.executable, *filter(None, os.environ.get("HF_ENCODERS_MATRIX_PYTHONS", "").split(":"))]
VENV_NAMES = [Path(python).parents[1].name for python in INTERPRETERS]  # test ids: .venv, .venv-floor, ...

LOAD_SCRIPT = REFUSE_HF_ENCODERS + textwrap.dedent(
    """
    import torch
    import transformers

    folder, kind, expected_file = sys.argv[1:4]
    expected = torch.load(expected_file)
    model = getattr(transformers, kind).from_pretrained(folder, trust_remote_code=True).eval()
    assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
    with torch.no_grad():
        logits = model(**expected["inputs"]).logits
    result = {"transformers": transformers.__version__, "logits": float((logits - expected["logits"]).abs().max())}
    if "generated" in expected:
        generated = model.generate(**expected["generate_inputs"], num_beams=2, max_new_tokens=60)
        result["generated"] = generated.tolist()
    print(json.dumps(result))
    """
)


def expected_outputs(kind: str, folder, tmp_path, sources: list[str], targets: list[str] | None = None) -> dict:
    """Inputs and outputs of the saved model in this process, written for the loading processes to compare with."""
    tokenizer = AutoTokenizer.from_pretrained(folder)
    inputs = dict(tokenizer(sources, return_tensors="pt", padding=True))
    model_class = AutoModelForSeq2SeqLM if targets is not None else AutoModelForMaskedLM
    model = model_class.from_pretrained(folder).eval()
    expected = {"inputs": dict(inputs)}
    if targets is not None:
        labels = tokenizer(targets, return_tensors="pt", padding=True)
        expected["inputs"]["labels"] = labels["input_ids"].masked_fill(labels["attention_mask"] == 0, -100)
        expected["generate_inputs"] = inputs
        expected["generated"] = model.generate(**inputs, num_beams=2, max_new_tokens=60)
    with torch.no_grad():
        expected["logits"] = model(**expected["inputs"]).logits
    torch.save(expected, tmp_path / "expected.pt")
    return expected


def load_elsewhere(python: str, kind: str, folder, tmp_path) -> dict:
    return run_without_the_package(
        LOAD_SCRIPT, folder, kind, tmp_path / "expected.pt", modules=tmp_path / "modules", python=python
    )


@pytest.mark.parametrize("python", INTERPRETERS, ids=VENV_NAMES)
def test_a_saved_translation_model_translates_alike(python, translation_run, handful, tmp_path):
    folder = translation_run[0] / "best"
    sources, targets = ((handful / f"test.{lang}").read_text().splitlines()[:3] for lang in ("de", "en"))
    expected = expected_outputs("AutoModelForSeq2SeqLM", folder, tmp_path, sources, targets)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert tokenizer.batch_decode(expected["generated"], skip_special_tokens=True) == targets  # learnt by heart
    loaded = load_elsewhere(python, "AutoModelForSeq2SeqLM", folder, tmp_path)
    assert loaded["logits"] < 1e-4, loaded
    assert loaded["generated"] == expected["generated"].tolist(), loaded["transformers"]


@pytest.mark.parametrize("python", INTERPRETERS, ids=VENV_NAMES)
def test_a_saved_masked_lm_predicts_alike(python, mlm_run, tmp_path):
    folder = mlm_run / "best"
    sentences = ["the film was a [MASK] joy", "the [MASK] made me cry ."]
    expected_outputs("AutoModelForMaskedLM", folder, tmp_path, sentences)
    loaded = load_elsewhere(python, "AutoModelForMaskedLM", folder, tmp_path)
    assert loaded["logits"] < 1e-4, loaded
