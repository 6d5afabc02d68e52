"""`hf-encoders export --format onnx`: every encoder head runs in ONNX Runtime as in PyTorch, on padded batches of any
size and length, int8 stays close, the folder serves without torch (the module docstring's snippet, as written), and
what cannot be exported is refused by name."""

import json
import shutil
import subprocess
import sys

import numpy as np
import onnxruntime
import pytest
import torch
from conftest import tiny_config

import hf_encoders.export_onnx as export_module
from hf_encoders import (
    EncoderForMaskedLM,
    EncoderForSequenceClassification,
    EncoderForTokenClassification,
    EncoderModel,
    Seq2SeqConfig,
    Seq2SeqForConditionalGeneration,
)
from hf_encoders.cards import build_model_card, read_run
from hf_encoders.cli import main as cli
from hf_encoders.export_onnx import INPUTS, OnnxOutputs, export_onnx, verify
from hf_encoders.hub import upload_plan

ATOL = 1e-4  # float32 in both; observed differences are about 1e-6
# int8 (weights per tensor, activations quantized on the fly) on 32-wide random models, which quantize worse than
# trained wide ones: the root-mean-square error at most this share of the outputs' root-mean-square (observed: 0.005
# for the features, 0.02 for sequence labels, 0.07 for token labels, 0.15 for the masked-LM logits), and for the
# classifiers at least this share of equal argmax predictions (observed: all)
INT8_RELATIVE_RMS = 0.25
INT8_ARGMAX = 0.9
LABELS = {"0": "negative", "1": "neutral", "2": "positive"}
# The body (two layers: global, then local attention) is tested under the feature extractor; the heads on one layer
HEADS = {
    "feature-extraction": (EncoderModel, {"classifier_pooling": "mean", "num_hidden_layers": 2}),
    "text-classification": (EncoderForSequenceClassification, {"id2label": LABELS}),
    "token-classification": (EncoderForTokenClassification, {"id2label": LABELS}),
    "fill-mask": (EncoderForMaskedLM, {"sparse_prediction": True}),  # the export must still give full logits
}
BATCHES = {
    "padded": ["the cat sat on the mat", "a dog", "the big red dog ran in the park with a small blue cat and a dog"],
    "one text": ["a small dog sat"],
    "no padding": ["the cat sat", "a dog ran", "big red mat"],
}
# Appended to the docstring's snippet: the same texts as PyTorch's, then the outputs compared with PyTorch's
CHECK_WITHOUT_TORCH = """
import sys
expected = np.load(sys.argv[1])
for key, texts in json.loads(sys.argv[2]).items():
    encodings = tokenizer.encode_batch(texts)
    inputs = {
        "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
        "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
    }
    real = inputs["attention_mask"].astype(bool)
    for name, value in zip(info["outputs"], session.run(list(info["outputs"]), inputs)):
        want = expected[f"{key}/{name}"]
        assert (inputs["input_ids"] == expected[f"{key}/input_ids"]).all(), key
        if value.ndim == 3:
            value, want = value[real], want[real]
        assert np.abs(value - want).max() <= float(sys.argv[3]), (key, name, np.abs(value - want).max())
assert "torch" not in sys.modules and "transformers" not in sys.modules, "serving imported torch"
print(json.dumps({"checked": sorted(expected.files)}))
"""


def checkpoint(model_class, overrides: dict, tokenizer, folder):
    torch.manual_seed(0)
    config = tiny_config(**{"num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64, **overrides})
    model = model_class(config).eval()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model


def outputs_both_ways(model, folder, file: str, inputs: dict) -> tuple[dict, dict]:
    """(PyTorch, ONNX Runtime) outputs of `inputs`, by output name."""
    info = json.loads((folder / "export.json").read_text())
    session = onnxruntime.InferenceSession(str(folder / file), providers=["CPUExecutionProvider"])
    got = session.run(list(info["outputs"]), {name: inputs[name].numpy() for name in INPUTS})
    with torch.no_grad():
        result = model(**{name: inputs[name] for name in INPUTS})
    return {name: result[name].numpy() for name in info["outputs"]}, dict(zip(info["outputs"], got, strict=True))


def real_tokens(value: np.ndarray, mask: torch.Tensor) -> np.ndarray:
    """Per-token outputs on real tokens only (what padding positions hold is not defined); others as they are."""
    return value[mask.numpy().astype(bool)] if value.ndim == 3 else value


def run_the_docstring_snippet(folder, expected: dict, tmp_path) -> dict:
    """The module docstring's serving snippet, with `CHECK_WITHOUT_TORCH`, in a fresh interpreter."""
    snippet = "\n".join(line[4:] for line in export_module.__doc__.split("no torch:\n")[1].splitlines())
    script = snippet.replace('Path("model/onnx")', f"Path({str(folder)!r})") + CHECK_WITHOUT_TORCH
    np.savez(tmp_path / "expected.npz", **expected)
    done = subprocess.run(
        [sys.executable, "-c", script, tmp_path / "expected.npz", json.dumps(BATCHES), str(ATOL)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("task", HEADS)
def test_every_head_runs_in_onnx_runtime_as_in_pytorch(task, tokenizer, tmp_path):
    model_class, overrides = HEADS[task]
    model = checkpoint(model_class, overrides, tokenizer, tmp_path / "model")
    info = export_onnx(tmp_path / "model", tmp_path / "onnx", quantize=True, atol=ATOL)
    assert info == json.loads((tmp_path / "onnx" / "export.json").read_text())
    assert info["task"] == task and info["opset"] >= 18
    assert all((tmp_path / "onnx" / file).is_file() for file in info["files"])
    assert {"model.onnx", "model_quantized.onnx", "tokenizer.json", "config.json"} <= set(info["files"])
    assert max(info["verification"]["float32"]["max_abs_diff"].values()) <= ATOL
    assert info.get("id2label") == (LABELS if "classification" in task else None)

    expected = {}
    for key, texts in BATCHES.items():
        inputs = tokenizer(texts, padding=True, return_tensors="pt")
        assert inputs["attention_mask"].all() == (key != "padded")
        ours, theirs = outputs_both_ways(model, tmp_path / "onnx", "model.onnx", inputs)
        _, theirs_int8 = outputs_both_ways(model, tmp_path / "onnx", "model_quantized.onnx", inputs)
        expected[f"{key}/input_ids"] = inputs["input_ids"].numpy()
        for name, value in ours.items():
            expected[f"{key}/{name}"] = value
            want, got = (
                real_tokens(value, inputs["attention_mask"]),
                real_tokens(theirs[name], inputs["attention_mask"]),
            )
            np.testing.assert_allclose(got, want, atol=ATOL, rtol=0, err_msg=f"{key}: {name}")
            got_int8 = real_tokens(theirs_int8[name], inputs["attention_mask"])
            relative_rms = np.sqrt(np.mean((got_int8 - want) ** 2) / np.mean(want**2))
            assert relative_rms <= INT8_RELATIVE_RMS, f"{key}: int8 {name} is {relative_rms:.2f} off (RMS)"
    int8 = info["verification"]["int8"]
    assert all(diff > 0 for diff in int8["max_abs_diff"].values())  # it is another model, not a copy of float32
    if "classification" in task:  # (fill-mask reports it too, but 99 near-tied random logits make it a coin toss)
        assert int8["argmax_agreement"] >= INT8_ARGMAX

    assert run_the_docstring_snippet(tmp_path / "onnx", expected, tmp_path)["checked"]

    # a model that no longer matches its export is refused (before export.json is written) by output name
    with torch.no_grad():
        model.get_parameter(next(n for n, _ in model.named_parameters() if n.endswith("final_norm.weight"))).add_(0.5)
    batches = [tokenizer(BATCHES["padded"], padding=True, return_tensors="pt")]
    with pytest.raises(RuntimeError, match=rf"`{list(info['outputs'])[0]}` differs by .*No export\.json was written"):
        verify(OnnxOutputs(model, list(info["outputs"])), tmp_path / "onnx" / "model.onnx", batches, ATOL)


def test_seq2seq_checkpoints_are_sent_to_ctranslate2(tmp_path):
    config = Seq2SeqConfig(
        vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=48
    )
    Seq2SeqForConditionalGeneration(config).save_pretrained(tmp_path / "seq2seq")
    with pytest.raises(
        ValueError, match="Seq2SeqForConditionalGeneration is an encoder-decoder.*--format ctranslate2"
    ):
        export_onnx(tmp_path / "seq2seq", tmp_path / "onnx")
    assert not (tmp_path / "onnx").exists()


def test_an_unknown_architecture_is_refused_by_name(tmp_path):
    config = tiny_config()
    config.architectures = ["EncoderForQuestionAnswering"]
    config.save_pretrained(tmp_path / "model")
    with pytest.raises(ValueError, match="'EncoderForQuestionAnswering' cannot be exported to ONNX.*EncoderModel"):
        export_onnx(tmp_path / "model", tmp_path / "onnx")


def test_export_card_and_push_from_the_command_line(mlm_run, capsys, tmp_path):
    run = shutil.copytree(mlm_run, tmp_path / "run")
    model_dir = read_run(run).model_dir
    assert cli(["export", str(model_dir), "--format", "onnx", "--quantize"]) == 0
    assert f"to {model_dir / 'onnx'}" in capsys.readouterr().out
    files = upload_plan(run, "me/tiny-mlm")
    assert {"onnx/model.onnx", "onnx/model_quantized.onnx", "onnx/tokenizer.json", "onnx/export.json"} <= set(files)
    card = str(build_model_card(run, repo_id="me/tiny-mlm"))
    assert "## Serving" in card and "onnxruntime.InferenceSession" in card and "- onnx" in card
    assert 'snapshot_download("me/tiny-mlm", allow_patterns=["onnx/*"])' in card
    assert cli(["export", str(model_dir), "--format", "onnx", "--quantization", "int8"]) == 2
