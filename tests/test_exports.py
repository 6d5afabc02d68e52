"""Serving exports follow their weights: each records the weights it was made from, a run that writes new weights
into a model folder removes the exports they make stale, `push` refuses a stale export by name, and an export
folder is replaced only with `--force`."""

import json
import logging
import shutil

import pytest
import torch
from conftest import CONFIGS, run_script
from transformers import AutoModelForMaskedLM, AutoModelForSeq2SeqLM

from hf_encoders.cli import main as cli
from hf_encoders.exports import stale_exports, weights_sha256
from hf_encoders.hub import upload_plan


def new_weights(model_dir, auto_class) -> None:
    """Other weights saved into `model_dir`, as a resumed run exports a better checkpoint there."""
    model = auto_class.from_pretrained(model_dir)
    with torch.no_grad():
        next(model.parameters()).add_(0.5)
    model.save_pretrained(model_dir)


def test_an_onnx_export_is_replaced_with_force_only_and_removed_by_the_run_that_outgrows_it(
    mlm_run, mlm_corpus, capsys, caplog, tmp_path
):
    run = shutil.copytree(mlm_run, tmp_path / "run")
    final = run / "final"
    assert cli(["export", str(final), "--format", "onnx"]) == 0
    info = json.loads((final / "onnx" / "export.json").read_text())
    assert info["weights_sha256"] == weights_sha256(final) and not stale_exports(final)
    assert cli(["export", str(final), "--format", "onnx"]) == 2
    assert f"{final / 'onnx'} is not empty: give an empty or new folder, or --force" in capsys.readouterr().err
    assert cli(["export", str(final), "--format", "onnx", "--force"]) == 0

    flags = ["--config", str(CONFIGS / "mlm_tiny.yaml"), "--train_data", str(mlm_corpus), "--train_split", "train"]
    flags += ["--eval_data", f"corpus={mlm_corpus}:validation", "--vocab_size", "200", "--block_size", "64"]
    flags += ["--eval_every", "6", "--save_every", "6", "--best_metric", "corpus/loss", "--num_proc", "1"]
    with caplog.at_level(logging.WARNING):
        run_script("pretrain_mlm.py", *flags, "--output_dir", str(run), "--max_steps", "14", "--resume")
    assert not (final / "onnx").exists()  # final/ holds step 14's weights now: its step-12 export is gone, and said
    assert f"removed {final / 'onnx'}: it was made from other weights than final/ holds now" in caplog.text


def test_push_refuses_an_export_made_from_other_weights(translation_run, tmp_path):
    run = shutil.copytree(translation_run[0], tmp_path / "run")
    best = run / "best"
    assert cli(["export", str(best), "--format", "ctranslate2"]) == 0
    assert "ctranslate2/model.bin" in upload_plan(run, "me/tiny")
    new_weights(best, AutoModelForSeq2SeqLM)
    assert set(stale_exports(best)) == {best / "ctranslate2"}
    with pytest.raises(ValueError, match=rf"Stale exports: {best / 'ctranslate2'}: it was made from other weights"):
        upload_plan(run, "me/tiny")
    info = best / "ctranslate2" / "export.json"  # an export of an older hf_encoders, which recorded no weights
    info.write_text(json.dumps({k: v for k, v in json.loads(info.read_text()).items() if k != "weights_sha256"}))
    with pytest.raises(ValueError, match="its export.json records no weights_sha256"):
        upload_plan(run, "me/tiny")
    assert cli(["export", str(best), "--format", "ctranslate2", "--force"]) == 0
    assert "ctranslate2/model.bin" in upload_plan(run, "me/tiny")


def test_the_weights_digest_follows_the_weights_only(mlm_run, tmp_path):
    model_dir = shutil.copytree(mlm_run / "final", tmp_path / "model")
    before = weights_sha256(model_dir)
    (model_dir / "config.json").write_text((model_dir / "config.json").read_text() + "\n")
    assert weights_sha256(model_dir) == before
    new_weights(model_dir, AutoModelForMaskedLM)
    assert weights_sha256(model_dir) != before


def test_each_export_refusal_names_what_the_model_is_and_what_serves_it():
    """An encoder sent to CTranslate2, an encoder-decoder sent to ONNX and a sentence VAE sent to either."""
    from conftest import tiny_config

    from hf_encoders import Seq2SeqConfig, Seq2SeqVAEConfig
    from hf_encoders.export_ctranslate2 import check_convertible
    from hf_encoders.export_onnx import check_exportable

    sizes = dict(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=48)
    encoder = tiny_config(architectures=["EncoderForMaskedLM"])
    seq2seq = Seq2SeqConfig(**sizes, architectures=["Seq2SeqForConditionalGeneration"])
    vae = Seq2SeqVAEConfig(**sizes, architectures=["Seq2SeqVAEForConditionalGeneration"])
    with pytest.raises(ValueError, match=r"EncoderForMaskedLM is an encoder \(model_type 'hf_encoder'\): export it "):
        check_convertible(encoder)
    with pytest.raises(
        ValueError, match=r"is an encoder-decoder \(model_type 'hf_seq2seq'\): export it with .*ctranslate2"
    ):
        check_exportable(seq2seq)
    for check in (check_convertible, check_exportable):
        with pytest.raises(
            ValueError, match=r"Seq2SeqVAEForConditionalGeneration is a sentence VAE .*text2text"
        ) as error:
            check(vae)
        assert "hf-encoders export" not in str(error.value)  # no export serves it
