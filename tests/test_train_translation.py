"""training/train_translation.py end to end: a tiny model learns a handful of Multi30k pairs by heart, MarianMTModel
trains through the same script, and bad input is refused with a clear message."""

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from unittest import mock

import pytest
import sacrebleu
from conftest import ROOT, SHARED, run_script
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, MarianMTModel

from benchmarks import collect_translation
from hf_encoders import Seq2SeqForConditionalGeneration, translate
from hf_encoders.cards import build_model_card
from hf_encoders.tasks.translation import train as train_translation  # training/train_translation.py's

TINY = ["--config", str(ROOT / "hf_encoders" / "configs" / "translation_tiny.yaml")]


def test_a_tiny_model_learns_a_handful_of_pairs_until_greedy_reproduces_them(handful, translation_run):
    output, done = translation_run
    references = (handful / "test.en").read_text().splitlines()

    results = json.loads((output / "results.json").read_text())
    assert results["train"]["steps"] == 150 and results["train_pairs"] == 8
    assert results["test"]["bleu"]["score"] == pytest.approx(100.0)  # beam search on test, from the best model
    assert results["test"]["bleu"]["signature"].startswith("nrefs:1|case:mixed")
    assert (output / "best" / "hypotheses.test.de-en.en").read_text().splitlines() == references
    assert json.loads((output / "best" / "scores.test.de-en.json").read_text())["num_beams"] == 2
    rows = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    validation = [row["validation/bleu"] for row in rows if "validation/bleu" in row]
    assert len(validation) == 3 and max(validation) == pytest.approx(100.0)  # greedy BLEU at steps 50, 100, 150
    assert {"validation/loss", "validation/chrf", "validation/bleu_lowercased"} <= set(rows[-1])
    assert "test bleu " in done.stdout

    model = AutoModelForSeq2SeqLM.from_pretrained(output / "best")
    tokenizer = AutoTokenizer.from_pretrained(output / "best")
    assert isinstance(model, Seq2SeqForConditionalGeneration)
    sources = (handful / "test.de").read_text().splitlines()
    assert translate(model, tokenizer, sources, "en", num_beams=1, show_progress=False) == references


def test_marian_trains_through_the_same_script(handful, tmp_path):
    output = tmp_path / "marian"
    run_script(
        "train_translation.py",
        *TINY,
        "--data",
        str(handful),
        "--output_dir",
        str(output),
        "--vocab_size",
        "120",
        "--architecture",
        "marian",
        "--max_steps",
        "4",
        "--num_epochs",
        "0",
        "--eval_every",
        "2",
        "--max_new_tokens",
        "8",
    )
    results = json.loads((output / "results.json").read_text())
    assert results["architecture"] == "marian" and results["train"]["steps"] == 4
    model = AutoModelForSeq2SeqLM.from_pretrained(output / "best")
    assert isinstance(model, MarianMTModel) and model.config.d_model == 64 and model.config.encoder_layers == 2
    assert (
        model.generation_config.decoder_start_token_id == AutoTokenizer.from_pretrained(output / "best").bos_token_id
    )
    assert len((output / "best" / "hypotheses.test.de-en.en").read_text().splitlines()) == 8
    card = build_model_card(output)  # a transformers model: its card needs no remote code
    assert "custom_code" not in card.data.tags and "trust_remote_code" not in card.text
    assert "`MarianMTModel`" in card.text and card.data.pipeline_tag == "translation"
    prose = " ".join(card.text.split())
    assert "transformers' encoder-decoder (`MarianMTModel`" in prose and "`hf_encoders` encoder-decoder" not in prose


def test_embedding_dropout_reaches_our_model_and_is_marian_s_one_dropout(translation_run, caplog):
    tokenizer = AutoTokenizer.from_pretrained(translation_run[0] / "best")
    sizes = dict(hidden_size=32, num_hidden_layers=1, num_decoder_layers=1, intermediate_size=64)
    ours = train_translation.build_model(
        train_translation.ModelArguments(**sizes, hidden_dropout=0.2, embedding_dropout=0.3), tokenizer
    )
    assert ours.config.embedding_dropout == 0.3
    assert ours.model.encoder.embeddings.dropout.p == ours.model.decoder.embeddings.dropout.p == 0.3

    marian = train_translation.ModelArguments(
        architecture="marian", **sizes, hidden_dropout=0.2, embedding_dropout=0.3, position_embedding_type="sinusoidal"
    )
    with caplog.at_level("WARNING"):
        model = train_translation.build_model(marian, tokenizer)
    assert model.config.dropout == 0.2 and "embedding_dropout=0.3 does not apply to it" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        train_translation.build_model(replace(marian, embedding_dropout=0.2), tokenizer)
    assert "embedding_dropout" not in caplog.text


def test_averaged_checkpoints_and_a_decoding_grid_are_chosen_on_validation(handful, tmp_path):
    output = tmp_path / "run"
    flags = [*TINY, "--data", str(handful), "--output_dir", str(output), "--vocab_size", "120", "--num_epochs", "0"]
    flags += ["--max_steps", "6", "--save_every", "2", "--keep_checkpoints", "3", "--eval_every", "2"]
    flags += ["--max_new_tokens", "8", "--average_last", "2", "3"]
    run_script("train_translation.py", *flags, "--tune_num_beams", "1", "2", "--tune_length_penalty", "0.5", "2.0")
    results = json.loads((output / "results.json").read_text())
    assert set(results["train"]["averaged"]) == {"averaged_2", "averaged_3"}
    assert all((output / name / "model.safetensors").is_file() for name in ("averaged_2", "averaged_3"))
    tried = results["test"]["decoding_on_validation"]
    assert [(row["num_beams"], row["length_penalty"]) for row in tried] == [(1, 1.0), (2, 0.5), (2, 2.0)]
    chosen = max(tried, key=lambda row: row["bleu"])  # the run's best_metric: validation/bleu
    decoding = {key: results["test"][key] for key in ("num_beams", "length_penalty")}
    assert decoding == {"num_beams": chosen["num_beams"], "length_penalty": chosen["length_penalty"]}
    generation = AutoModelForSeq2SeqLM.from_pretrained(output / "best").generation_config
    assert (generation.num_beams, generation.length_penalty) == (decoding["num_beams"], decoding["length_penalty"])
    card = build_model_card(output).text
    assert f"length penalty {decoding['length_penalty']} (chosen among 3 on validation BLEU)" in card
    assert "averages of the last [2, 3] tried" in card

    # the finished run, resumed with another decoding: nothing trained, the test decoded again; a generation length
    # is refused, as validation BLEU (which chose the model) decodes with it
    with pytest.raises(ValueError, match=r"evaluation.max_new_tokens: 8 -> 16\. Drop them"):
        run_script("train_translation.py", *flags, "--resume", "--max_new_tokens", "16")
    run_script("train_translation.py", *flags, "--resume", "--test_num_beams", "3", "--length_penalty", "1.0")
    again = json.loads((output / "results.json").read_text())
    assert (
        again["train"]["steps"] == 6
        and again["test"]["num_beams"] == 3
        and again["test"]["decoding_on_validation"] == []
    )
    assert json.loads((output / "config.json").read_text())["evaluation"]["test_num_beams"] == 3

    collected, figure = tmp_path / "collected.json", tmp_path / "recipe.png"
    collect = [sys.executable, str(ROOT / "benchmarks" / "collect_translation.py"), str(output)]
    done = subprocess.run(
        [*collect, "--output", str(collected), "--plot", str(figure)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (run,) = json.loads(collected.read_text())["runs"]
    assert len(run["commands"]) == 2 and "--resume --test_num_beams 3" in run["commands"][1]
    assert set(run["averaged"]) == {"averaged_2", "averaged_3"} and len(run["validation_curve"]) == 3
    assert run["test"]["num_beams"] == 3 and run["test"]["bleu"]["score"] == again["test"]["bleu"]["score"]
    hypotheses = (output / "best" / "hypotheses.test.de-en.en").read_text().splitlines()
    references = (handful / "test.en").read_text().splitlines()
    expected = collect_translation.tokenized_bleu(hypotheses, references, "en")
    assert run["test"]["bleu_tokenized_lowercased"] == expected and expected["signature"].startswith("moses-en+")
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    saved = {}
    with mock.patch("hf_encoders.plots._save", lambda figure, path: saved.update(figure=figure)):
        collect_translation.plot([run, {**run, "run": "runs/other"}], figure)  # two runs of one kind: named apart
    labels = [text.get_text() for text in saved["figure"].axes[1].get_legend().get_texts()]
    assert labels == [f"hf_seq2seq de-en ({output.name})", "hf_seq2seq de-en (other)"]


def write_pairs(folder: Path, files: dict[str, list[str]]) -> Path:
    folder.mkdir()
    for name, lines in files.items():
        (folder / name).write_text("".join(line + "\n" for line in lines))
    return folder


@pytest.mark.parametrize(
    "flags, files, message",
    [
        (["--src", "xx"], None, "has no 'xx' side: its files give languages cs, de, en, fr"),
        (
            ["--src", "de", "--tgt", "en"],
            {"train.de": ["ein Hund"] * 3, "train.en": ["a dog"] * 2},
            "Parallel files differ in length",
        ),
        (
            ["--src", "de", "--tgt", "en"],
            {"train.de": ["ein Hund"] * 30, "train.en": ["a dog"] * 30},
            "has no 'test' split of de-en pairs",
        ),
        (
            ["--src", "de", "--tgt", "en"],
            {"train.de": ["ein Hund"] * 30, "train.fr": ["un chien"] * 30},
            "has no 'en' side: its files give languages de, fr",
        ),
        (["--architecture", "t5"], None, "architecture='t5': choose one of hf_seq2seq, marian"),
    ],
)
def test_bad_input_is_refused_with_a_clear_message(flags, files, message, tmp_path):
    data = write_pairs(tmp_path / "data", files) if files else SHARED / "multi30k"
    with pytest.raises(ValueError) as error:
        train_translation.main([*TINY, "--data", str(data), "--output_dir", str(tmp_path / "run"), *flags])
    assert message in str(error.value)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--hidden_size", "65", "--num_attention_heads", "2"], "--hidden_size 65 must be a multiple of"),
        (["--architecture", "marian", "--hidden_size", "65", "--num_attention_heads", "2"], "--hidden_size 65 must"),
        (["--hidden_dropout", "1.5"], "`hidden_dropout`"),
        (["--latent_size", "8", "--latent_memory_tokens", "0"], "`latent_memory_tokens` must be a positive integer"),
    ],
)
def test_model_settings_are_refused_before_anything_is_read_or_written(flags, message, tmp_path):
    """A model these settings cannot build is refused before the data and the tokenizer: no run folder is left that
    the corrected command would then be refused for."""
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        train_translation.main([*TINY, "--output_dir", str(tmp_path / "run"), *flags])
    assert not (tmp_path / "run").exists()


def test_tokenized_bleu_scores_moses_tokens_as_published_multi30k_figures_are():
    """Moses splits the English clitic that sacreBLEU's 13a tokenizer keeps (`dog's` -> `dog 's`), and the case is
    dropped: 9 tokens, the first one wrong, give n-gram precisions 8/9, 7/8, 6/7, 5/6 (13a: 8 tokens, 7/8 ... 4/5)."""
    hypothesis, reference = "A dog's toy lies on the grass.", "the dog's toy lies on the grass."
    scored = collect_translation.tokenized_bleu([hypothesis], [reference], "en")
    assert scored["score"] == pytest.approx(100 * (5 / 9) ** 0.25)
    assert sacrebleu.BLEU(lowercase=True).corpus_score([hypothesis], [[reference]]).score == pytest.approx(
        100 * (4 / 8) ** 0.25
    )
