"""Embedding training and evaluation (hf-encoders train-embeddings, evaluate-embeddings) on real Multi30k pairs and
SST-2 texts, with a tiny jointly tokenized encoder."""

import gzip
import json
from pathlib import Path

import pytest
import torch
from conftest import SHARED, run_main, run_script, tiny_config

from hf_encoders import EncoderForMaskedLM, train_tokenizer
from hf_encoders.cli import main as cli
from hf_encoders.tasks.embeddings import evaluate
from hf_encoders.tasks.embeddings.contrastive import retrieval_scores


@pytest.fixture(scope="module")
def joint_encoder(tmp_path_factory) -> Path:
    """An untrained encoder whose WordPiece vocabulary covers English and German captions."""
    lines = []
    for language in ("en", "de"):
        with gzip.open(SHARED / "multi30k" / f"train.{language}.gz", "rt", encoding="utf-8") as handle:
            lines += [next(handle).strip() for _ in range(3000)]
    tokenizer = train_tokenizer(lines, 1000, show_progress=False)
    folder = tmp_path_factory.mktemp("joint_encoder")
    torch.manual_seed(0)
    config = tiny_config(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, max_position_embeddings=64)
    EncoderForMaskedLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_retrieval_scores_rank_the_relevant_document():
    queries = torch.eye(3)
    documents = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0]])  # 1 and 2 swapped
    scores = retrieval_scores(queries, documents, k=10)
    assert scores["recall@1"] == pytest.approx(1 / 3)
    assert scores["mrr@10"] == pytest.approx((1 + 1 / 2 + 1 / 2) / 3)  # a tie with the relevant one ranks it first


def test_contrastive_training_lifts_retrieval_on_held_out_pairs(joint_encoder, tmp_path):
    output = tmp_path / "run"
    flags = ["--config", "embeddings_multi30k", "--model", str(joint_encoder), "--output_dir", str(output)]
    flags += ["--max_train_examples", "2000", "--max_eval_pairs", "200", "--per_device_batch_size", "32"]
    flags += ["--max_steps", "60", "--eval_every", "30", "--warmup_steps", "5", "--learning_rate", "1e-3"]
    summary = run_script("train_embeddings", *flags).result
    start, test = summary["start"], summary["test"]
    assert summary["test_pairs"] == 200
    for key in ("recall@1", "mrr@10"):  # both directions, held-out pairs
        assert test[f"test/{key}"] > start[f"test/{key}"] + 0.1, (key, start, test)
    assert test["test/en-de/mrr@10"] > 0 and test["test/de-en/mrr@10"] > 0
    best = output / "best"
    assert json.loads((best / "1_Pooling" / "config.json").read_text())["pooling_mode_mean_tokens"]
    # the same figure through sentence-transformers from the saved folder (what the test split reported)
    texts = evaluate.retrieval(best, ["A dog runs."] * 2, ["Ein Hund rennt.", "Zwei Katzen."], ("en", "de"), "x")
    assert set(texts) >= {"x/recall@1", "x/mrr@10"}
    assert cli(["card", str(output)]) == 0
    card = (output / "README.md").read_text()
    assert "library_name: sentence-transformers" in card and "- sentence-transformers" in card
    assert "SentenceTransformer(" in card


def test_evaluate_embeddings_probes_and_retrieves(joint_encoder, tmp_path):
    flags = ["--model", str(joint_encoder), "--pairs", str(SHARED / "multi30k"), "--split", "test"]
    flags += ["--probe_data", str(SHARED / "sst2"), "--max_probe_train_examples", "400"]
    flags += ["--probe_experiments", "3", "--samples_per_label", "4", "--output_dir", str(tmp_path)]
    results = run_main(evaluate.main, *flags).result
    assert results["retrieval_pairs"] == 1000 and 0 <= results["retrieval"]["test/mrr@10"] <= 1
    probe = results["probe"]
    assert probe["sampled"]["experiments"] == 3 and probe["full"]["train_examples"] == 400
    assert 0.3 < probe["full"]["accuracy"] <= 1 and probe["sampled"]["accuracy_std"] >= 0
    assert json.loads((tmp_path / "results.json").read_text())["probe"] == probe
    with pytest.raises(ValueError, match="Give --model"):
        evaluate.main(["--model", str(joint_encoder)])


def test_embedding_training_refuses_other_encoders(tmp_path, tokenizer):
    from transformers import BertConfig, BertModel

    BertModel(
        BertConfig(
            vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37
        )
    ).save_pretrained(tmp_path / "bert")
    tokenizer.save_pretrained(tmp_path / "bert")
    flags = ["--config", "embeddings_multi30k", "--model", str(tmp_path / "bert"), "--output_dir", str(tmp_path / "r")]
    with pytest.raises(ValueError, match="takes an encoder of this family"):
        run_script("train_embeddings", *flags, "--max_train_examples", "50", "--max_eval_pairs", "20")
