"""Every way of translating with a saved model agrees: `hf-encoders translate` through PyTorch and through
CTranslate2, `hf_encoders.translate` and `pipeline("translation")` with its defaults. Empty lines stay empty, the
length budget is the one the training chose, over-long lines are named (or cut, or skipped, and counted), a target
language the model was not trained to write is warned about, and an encoder is not taken for a translator."""

import json
import logging
import shutil

import pytest
import torch
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, pipeline

from hf_encoders import Seq2SeqConfig, Seq2SeqForConditionalGeneration, translate
from hf_encoders.cli import main as cli
from hf_encoders.export_ctranslate2 import translate_ctranslate2
from hf_encoders.tokenization import seq2seq_token_ids
from hf_encoders.translation import OverlongSourceError


@pytest.fixture(scope="module")
def exported(translation_run, tmp_path_factory):
    """The tiny run's best model, with its CTranslate2 export beside it."""
    model_dir = shutil.copytree(translation_run[0] / "best", tmp_path_factory.mktemp("exported") / "best")
    assert cli(["export", str(model_dir), "--format", "ctranslate2"]) == 0
    return model_dir


def test_the_saved_model_carries_the_length_and_direction_its_training_chose(translation_run):
    model_dir = translation_run[0] / "best"
    settings = json.loads((translation_run[0] / "config.json").read_text())
    generation = json.loads((model_dir / "generation_config.json").read_text())
    assert generation["max_new_tokens"] == settings["evaluation"]["max_new_tokens"] == 128
    assert json.loads((model_dir / "config.json").read_text())["translation_directions"] == ["de-en"]


def test_the_pipeline_with_its_defaults_translates_as_far_as_translate_does(translation_run, tmp_path):
    """A model that ends no sentence early, saved with the budget a training gives it (60 new tokens): the pipeline
    with its defaults, `generate` and `translate` all write 60 tokens (transformers' default length would cut the
    pipeline at 20)."""
    tokenizer = AutoTokenizer.from_pretrained(translation_run[0] / "best")
    config = Seq2SeqConfig(
        **seq2seq_token_ids(tokenizer),
        hidden_size=32,
        num_hidden_layers=1,
        num_decoder_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
    )
    torch.manual_seed(0)
    model = Seq2SeqForConditionalGeneration(config)
    model.generation_config.min_new_tokens = 60  # no end of sentence before: every output runs to the budget
    model.generation_config.max_new_tokens = 60
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    source = "Ein Hund rennt durch den Park."
    translator = pipeline("translation", model=str(tmp_path / "model"), trust_remote_code=True, tgt_lang="en")
    piped_ids, generate = [], translator.model.generate
    translator.model.generate = lambda *args, **kwargs: piped_ids.append(generate(*args, **kwargs)) or piped_ids[-1]
    piped = translator(source)[0]["translation_text"]
    ours = translate(model, tokenizer, [source], "en", show_progress=False)[0]
    forced = {"forced_bos_token_id": tokenizer.convert_tokens_to_ids("<2en>")}
    generated = model.generate(**tokenizer([source], return_tensors="pt"), **forced)
    assert generated.shape[1] == 1 + 60  # the decoder's start, then the budget
    assert piped == ours and piped_ids[0].tolist() == generated.tolist()


def test_an_empty_line_translates_to_an_empty_line_on_every_path(exported, handful, tmp_path, capsys):
    sources = (handful / "test.de").read_text().splitlines()[:2]
    references = (handful / "test.en").read_text().splitlines()[:2]
    (tmp_path / "lines.txt").write_text(f"{sources[0]}\n\n   \n{sources[1]}\n")
    expected = [references[0], "", "", references[1]]
    for model in (exported, exported / "ctranslate2"):
        assert cli(["translate", str(model), "--file", str(tmp_path / "lines.txt"), "--tgt-lang", "en"]) == 0
        assert capsys.readouterr().out.split("\n")[:-1] == expected, model
    translator = pipeline("translation", model=str(exported), trust_remote_code=True, tgt_lang="en")
    assert [row[0]["translation_text"] for row in translator(["", sources[0], " "])] == ["", references[0], ""]
    assert translator(["", " "], batch_size=2) == [[{"translation_text": ""}], [{"translation_text": ""}]]


def test_an_overlong_line_is_named_or_cut_or_skipped_and_counted(exported, handful, tmp_path, capsys):
    sources, long = (handful / "test.de").read_text().splitlines()[:2], " ".join(["Hund"] * 300)
    model, tokenizer = AutoModelForSeq2SeqLM.from_pretrained(exported), AutoTokenizer.from_pretrained(exported)
    length = len(tokenizer(long)["input_ids"])
    assert length > 256
    (tmp_path / "lines.txt").write_text(f"{sources[0]}\n{long}\n{sources[1]}\n")
    lines = ["translate", "--file", str(tmp_path / "lines.txt"), "--tgt-lang", "en", "--num-beams", "1"]
    for folder in (exported, exported / "ctranslate2"):
        assert cli([lines[0], str(folder), *lines[1:]]) == 2
        error = capsys.readouterr().err
        assert f"line 2 of {tmp_path / 'lines.txt'} has {length} tokens; the model takes at most 256" in error, error
        assert "--overlong truncate" in error and "--overlong skip" in error
        assert cli([lines[0], str(folder), *lines[1:], "--overlong", "skip"]) == 0
        done = capsys.readouterr()
        assert done.out.split("\n")[1] == "" and len(done.out.split("\n")) == 4
        assert "1 line(s) of" in done.err and "skipped (an empty line each), over 256 tokens: 2" in done.err
        assert cli([lines[0], str(folder), *lines[1:], "--overlong", "truncate"]) == 0
        done = capsys.readouterr()
        assert (
            done.out.split("\n")[1] != "" and "1 line(s) of" in done.err and "truncated to 256 tokens: 2" in done.err
        )
    with pytest.raises(OverlongSourceError, match=rf"source 2 has {length}\. Give max_source_length=256 to cut them"):
        translate(model, tokenizer, [sources[0], long], "en", show_progress=False)
    with pytest.raises(OverlongSourceError, match=rf"source 1 has {length}"):
        translate_ctranslate2(exported / "ctranslate2", [long], "en")


def test_a_target_the_model_was_not_trained_to_write_is_warned_about(exported, handful, caplog, capsys):
    source = (handful / "test.de").read_text().splitlines()[0]
    for model in (exported, exported / "ctranslate2"):
        with caplog.at_level(logging.WARNING):
            assert cli(["translate", str(model), source, "--tgt-lang", "de"]) == 0
        assert "This model was trained to translate de->en, not into 'de'" in caplog.text, model
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            assert cli(["translate", str(model), source, "--tgt-lang", "en"]) == 0
        assert "was trained to translate" not in caplog.text


def test_translate_on_an_encoder_says_what_it_is_and_what_serves_it(mlm_run, capsys):
    assert cli(["translate", str(mlm_run / "final"), "Ein Hund.", "--tgt-lang", "en"]) == 2
    error = capsys.readouterr().err
    assert "is an encoder (EncoderForMaskedLM, model_type 'hf_encoder'), not an encoder-decoder" in error, error
    assert "--format onnx" in error and "Unrecognized configuration class" not in error
