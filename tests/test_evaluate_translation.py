"""training/evaluate_translation.py (hf_encoders.tasks.translation.evaluate) on a checkpoint of ours and on a
transformers MarianMTModel, both saved here."""

import json
from pathlib import Path

import pytest
import torch
from conftest import SHARED, ScriptRun, run_script
from transformers import MarianConfig, MarianMTModel

from hf_encoders import Seq2SeqConfig, Seq2SeqForConditionalGeneration, load_parallel_dataset, train_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    pairs = load_parallel_dataset(SHARED / "multi30k", "en", "de")["train"].select(range(2000))
    return train_tokenizer(
        list(pairs["en"]) + list(pairs["de"]), 600, kind="seq2seq", languages=["en", "de"], show_progress=False
    )


def evaluate(model_dir: Path, *flags: str) -> ScriptRun:
    return run_script(
        "evaluate_translation.py",
        "--model",
        str(model_dir),
        "--data",
        str(SHARED / "multi30k"),
        "--max_examples",
        "20",
        "--num_beams",
        "2",
        "--max_new_tokens",
        "12",
        "--batch_size",
        "8",
        *flags,
    )


@pytest.mark.parametrize("kind", ["hf_encoders", "marian"])
def test_evaluation_command_scores_a_checkpoint(kind, tokenizer, tmp_path):
    torch.manual_seed(0)
    if kind == "hf_encoders":
        model = Seq2SeqForConditionalGeneration(
            Seq2SeqConfig(
                vocab_size=len(tokenizer),
                hidden_size=32,
                num_hidden_layers=1,
                num_attention_heads=2,
                intermediate_size=48,
                max_position_embeddings=64,
            )
        )
    else:
        model = MarianMTModel(
            MarianConfig(
                vocab_size=len(tokenizer),
                d_model=32,
                encoder_layers=1,
                decoder_layers=1,
                encoder_attention_heads=2,
                decoder_attention_heads=2,
                encoder_ffn_dim=64,
                decoder_ffn_dim=64,
                max_position_embeddings=64,
                pad_token_id=0,
                eos_token_id=2,
                decoder_start_token_id=0,
                forced_eos_token_id=None,
            )
        )
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    done = evaluate(tmp_path)
    hypotheses = (tmp_path / "hypotheses.test.en-de.de").read_text().splitlines()
    assert len(hypotheses) == 20
    scores = json.loads((tmp_path / "scores.test.en-de.json").read_text())
    assert scores["examples"] == 20 and scores["settings"]["num_beams"] == 2
    assert scores["bleu"]["signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a")
    assert "case:lc" in scores["bleu_lowercased"]["signature"] and "nc:6" in scores["chrf"]["signature"]
    assert 0 <= scores["bleu"]["score"] <= 100 and 0 <= scores["chrf"]["score"] <= 100
    assert "bleu_lowercased" in done.stdout and "chrf" in done.stdout


def test_evaluation_command_refuses_unknown_languages(tmp_path):
    with pytest.raises(ValueError, match="has no 'xx' side: its files give languages cs, de, en, fr"):
        evaluate(tmp_path, "--tgt", "xx")
