"""Autoencoding: the denoising collator's noise, the variational bottleneck, anomaly scores, embeddings, the scripts."""

import gzip
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import CONFIGS, ROOT, SHARED, run_script, tiny_config
from datasets import Dataset
from test_modeling_seq2seq_vae import vae

from hf_encoders import (
    DenoisingCollator,
    EncoderForMaskedLM,
    Seq2SeqConfig,
    Seq2SeqForConditionalGeneration,
    active_units,
    auroc,
    prepare_denoising,
    pseudo_log_likelihood_scores,
    reconstruction_scores,
    sentence_embeddings,
    train_tokenizer,
)
from hf_encoders.cards import build_model_card
from hf_encoders.data import word_start_table
from hf_encoders.run_folder import start_run
from hf_encoders.training import TrainingConfig, train


def multi30k_lines(language: str, split: str = "train", count: int = 400) -> list[str]:
    with gzip.open(SHARED / "multi30k" / f"{split}.{language}.gz", "rt", encoding="utf-8") as handle:
        return [next(handle).strip() for _ in range(count)]


@pytest.fixture(scope="module")
def english():
    return multi30k_lines("en", count=2000)


@pytest.fixture(scope="module")
def joint(english):
    """A seq2seq joint (with <mask> and the <2en> tag) of Multi30k's English side."""
    return train_tokenizer(english, 600, kind="seq2seq", languages=["en"], show_progress=False)


def words(tokenizer, ids: list[int]) -> int:
    return int(word_start_table(tokenizer)[torch.tensor(ids)].sum()) if ids else 0


# --------------------------------------------------------------------------------------------------------------------
# The denoising collator


def test_text_infilling_hides_the_configured_share_of_words_in_poisson_spans(english, joint):
    documents = Dataset.from_dict({"text": english[:300]})
    segments = prepare_denoising(documents, joint, "en", max_length=64)
    collator = DenoisingCollator(joint, mask_ratio=0.3, poisson_lambda=3.0, permute_sentence_ratio=0.0, seed=1)
    tag, mask = joint.convert_tokens_to_ids("<2en>"), joint.mask_token_id
    total_words = hidden_words = masks = 0
    generator = torch.Generator().manual_seed(0)
    for example in segments:
        original = example["input_ids"][:-1]
        assert example["labels"] == [tag, *original, joint.eos_token_id]  # every original token, in the target
        noised = collator.corrupt(example, generator)
        assert noised[-1] == joint.eos_token_id
        kept = [token for token in noised[:-1] if token != mask]
        iterator = iter(original)  # the kept tokens are the original's, in order
        assert all(any(token == candidate for candidate in iterator) for token in kept)
        total_words += words(joint, original)
        hidden_words += words(joint, original) - words(joint, kept)
        masks += noised.count(mask)
    assert abs(hidden_words / total_words - 0.3) < 0.02
    # one <mask> per span; Poisson(3) spans, a few of length 0 (insertions), the last of each segment cut short
    assert 1.8 < hidden_words / masks < 3.2

    long_text = {"input_ids": [*joint(" ".join(english[:200]), add_special_tokens=False)["input_ids"], 2]}
    noised = collator.corrupt(long_text, generator)
    spans = noised.count(mask)
    assert 2.6 < round(words(joint, long_text["input_ids"][:-1]) * 0.3) / spans < 3.3  # mean span length


def test_sentence_permutation_rate_and_reproducibility(english, joint):
    sentences = [sentence.rstrip(" .") + "." for sentence in english[:600]]
    documents = Dataset.from_dict({"text": [" ".join(sentences[i : i + 3]) for i in range(0, 600, 3)]})
    segments = prepare_denoising(documents, joint, "en", max_length=128)
    assert all(len(lengths) == 3 for lengths in segments["sentence_lengths"])
    collator = DenoisingCollator(joint, mask_ratio=0.0, permute_sentence_ratio=0.6, seed=3)
    changed = 0
    for example in segments:
        noised = collator.corrupt(example)
        assert sorted(noised) == sorted(example["input_ids"])  # the same tokens
        changed += noised != example["input_ids"]
    assert abs(changed / len(segments) - 0.6 * 5 / 6) < 0.08  # 5 of the 6 orders of 3 sentences differ
    first, second = (DenoisingCollator(joint, seed=7)(list(segments)[:8]) for _ in range(2))
    assert all(torch.equal(first[key], second[key]) for key in first)


def test_denoising_settings_and_languages_are_checked(joint):
    with pytest.raises(ValueError, match="mask_ratio must lie"):
        DenoisingCollator(joint, mask_ratio=1.0)
    with pytest.raises(ValueError, match="poisson_lambda must be positive"):
        DenoisingCollator(joint, poisson_lambda=0)
    with pytest.raises(ValueError, match="Unknown language 'fr'"):
        prepare_denoising(Dataset.from_dict({"text": ["Un chien."]}), joint, "fr")


# --------------------------------------------------------------------------------------------------------------------
# The variational bottleneck


def test_auroc_and_active_units_by_hand():
    assert auroc(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([2.5, 3.0, 4.0])) == pytest.approx(7.5 / 9)
    assert auroc(torch.tensor([1.0]), torch.tensor([2.0])) == 1.0
    with pytest.raises(ValueError, match="at least one"):
        auroc(torch.tensor([]), torch.tensor([1.0]))
    means = torch.stack([torch.tensor([float(i), 0.0, 0.05 * i]) for i in range(4)])  # variances 1.67, 0, 0.004
    assert active_units(means) == 1 and active_units(means, threshold=0.001) == 2


def test_pseudo_log_likelihood_masks_each_token_in_turn(tokenizer):
    torch.manual_seed(0)
    model = EncoderForMaskedLM(tiny_config(vocab_size=len(tokenizer))).eval()
    text = "the cat sat"
    ids = tokenizer(text)["input_ids"]
    expected = 0.0
    for position in range(1, len(ids) - 1):  # every token but [CLS] and [SEP]
        masked = torch.tensor([ids])
        masked[0, position] = tokenizer.mask_token_id
        expected += model(input_ids=masked).logits[0, position].log_softmax(-1)[ids[position]].item()
    score = pseudo_log_likelihood_scores(model, tokenizer, [text, text], batch_size=2)
    torch.testing.assert_close(score, torch.tensor([-expected / (len(ids) - 2)] * 2))


# --------------------------------------------------------------------------------------------------------------------
# A denoising autoencoder trained here: anomaly scores and embeddings


@pytest.fixture(scope="module")
def autoencoder(english, joint, tmp_path_factory):
    segments = prepare_denoising(Dataset.from_dict({"text": english[:1200]}), joint, "en", max_length=48)
    config = Seq2SeqConfig(
        vocab_size=len(joint),
        hidden_size=64,
        num_hidden_layers=2,
        num_decoder_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=64,
        sparse_prediction=True,
    )
    torch.manual_seed(0)
    model = Seq2SeqForConditionalGeneration(config)
    settings = TrainingConfig(
        output_dir=str(tmp_path_factory.mktemp("autoencoder")),
        max_steps=80,
        per_device_batch_size=32,
        learning_rate=4e-3,
        warmup_steps=10,
        log_every=40,
    )
    train(model, segments, DenoisingCollator(joint, padding_free=True, seed=0), start_run(settings), joint)
    return model.eval()


def test_anomaly_scores_rank_out_of_domain_text_above_held_out_text(autoencoder, joint):
    held_out = multi30k_lines("en", "val", 40)
    gibberish = [
        "Qx7 zzvb!! 0931 kklpq wrrt @@@ vnnxz.",
        "1987-2003 %% ZZZ QQQ fjfjfj xkcd",
        "ggg hhh jjj kkk lll mmm",
    ]
    out_of_domain = [f"{g} {i}" for i in range(10) for g in gibberish][:30]
    inside = reconstruction_scores(autoencoder, joint, held_out, "en", batch_size=16)
    outside = reconstruction_scores(autoencoder, joint, out_of_domain, "en", batch_size=16)
    assert inside.shape == (40,) and outside.shape == (30,)
    assert auroc(inside, outside) > 0.95
    again = reconstruction_scores(autoencoder, joint, held_out[:5], "en", batch_size=2)
    torch.testing.assert_close(again, inside[:5])  # the same noise, whatever the batch size


def test_sentence_embeddings_retrieve_their_sentences(autoencoder, joint):
    sentences = multi30k_lines("en", "val", 30)
    queries = [sentence.rsplit(" ", 2)[0] for sentence in sentences]  # the last two words dropped
    embeddings = sentence_embeddings(autoencoder, joint, sentences, batch_size=7)
    alone = torch.cat([sentence_embeddings(autoencoder, joint, [s]) for s in sentences[:4]])
    torch.testing.assert_close(embeddings[:4], alone, atol=1e-5, rtol=1e-4)  # padding changes nothing
    assert torch.allclose(embeddings.norm(dim=-1), torch.ones(30))
    nearest = (sentence_embeddings(autoencoder, joint, queries) @ embeddings.T).argmax(-1)
    assert (nearest == torch.arange(30)).float().mean() >= 0.8


# --------------------------------------------------------------------------------------------------------------------
# The scripts


def test_denoising_pretraining_then_translation_fine_tuning(handful, tmp_path):
    denoised = tmp_path / "denoised"
    run_script(
        "pretrain_denoising.py",
        "--config",
        str(CONFIGS / "denoising_multi30k.yaml"),
        "--texts",
        f"en={handful}",
        f"de={handful}",
        "--best_metric",
        f"{handful.name}.de/loss",
        "--output_dir",
        str(denoised),
        "--vocab_size",
        "120",
        "--hidden_size",
        "32",
        "--intermediate_size",
        "64",
        "--num_hidden_layers",
        "1",
        "--num_decoder_layers",
        "1",
        "--max_steps",
        "6",
        "--num_epochs",
        "0",
        "--per_device_batch_size",
        "8",
        "--eval_every",
        "3",
        "--warmup_steps",
        "1",
    )
    results = json.loads((denoised / "results.json").read_text())
    assert results["steps"] == 6 and results["train_segments"] == 16
    assert {f"{handful.name}.en/loss", f"{handful.name}.de/loss"} <= set(results["metrics"])
    card = build_model_card(denoised)  # the best model's validation figures, one row per source and metric
    best = min(
        (
            json.loads(line)
            for line in (denoised / "metrics.jsonl").read_text().splitlines()
            if f"{handful.name}.de/loss" in line
        ),
        key=lambda row: row[f"{handful.name}.de/loss"],
    )
    figures = {(result.dataset_config, result.metric_type): result.metric_value for result in card.data.eval_results}
    assert figures == pytest.approx(
        {
            (language, key): best[f"{handful.name}.{language}/{key}"]
            for language in ("en", "de")
            for key in ("perplexity", "accuracy")
        },
        abs=1e-4,
    )
    assert card.data.pipeline_tag == "text2text-generation" and card.data.language == ["de", "en"]
    assert "text infilling (30% of the words hidden in spans of Poisson(3) lengths)" in card.text
    assert 'pipeline("text2text-generation"' in card.text and "<mask>" in card.text
    translated = tmp_path / "translated"
    run_script(
        "train_translation.py",
        "--config",
        str(CONFIGS / "translation_tiny.yaml"),
        "--data",
        str(handful),
        "--init_from",
        str(denoised / "final"),
        "--output_dir",
        str(translated),
        "--max_steps",
        "3",
        "--num_epochs",
        "0",
        "--per_device_batch_size",
        "8",
        "--eval_every",
        "0",
        "--warmup_steps",
        "1",
    )
    config = json.loads((translated / "final" / "config.json").read_text())
    assert config["hidden_size"] == 32 and config["vocab_size"] == 120  # the denoised model, fine-tuned


def test_variational_autoencoder_script_reports_latent_figures(handful, tmp_path):
    output = tmp_path / "vae"
    run_script(
        "pretrain_denoising.py",
        "--config",
        str(CONFIGS / "vae_multi30k_en.yaml"),
        "--texts",
        f"en={handful}",
        "--best_metric",
        f"{handful.name}.en/loss",
        "--output_dir",
        str(output),
        "--vocab_size",
        "100",
        "--hidden_size",
        "32",
        "--intermediate_size",
        "64",
        "--num_hidden_layers",
        "1",
        "--num_decoder_layers",
        "1",
        "--latent_size",
        "4",
        "--max_steps",
        "4",
        "--kl_annealing_steps",
        "2",
        "--eval_every",
        "2",
        "--per_device_batch_size",
        "8",
        "--reconstruction_examples",
        "4",
        "--max_new_tokens",
        "8",
    )
    results = json.loads((output / "results.json").read_text())
    latent = {key.split("/", 1)[1] for key in results["metrics"] if key.startswith("latent/")}
    assert latent == {"kl_per_sentence", "active_units", "reconstruction_bleu", "reconstruction_chrf"}
    assert len(results["latent_examples"]["prior_samples"]) == 5
    assert len(results["latent_examples"]["interpolation"]["steps"]) == 5
    rows = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    weights = [row["train/kl_weight"] for row in rows if "train/kl_weight" in row]
    assert weights and weights[-1] == 1.0 and all(0 < w <= 1 for w in weights)
    card = build_model_card(output)
    assert {result.metric_type for result in card.data.eval_results} == {"perplexity", "accuracy", *latent}
    assert "sentence variational autoencoder: a 4-dimensional Gaussian latent" in card.text
    assert "KL weight annealed from 0 to 1 over 2 steps" in card.text
    with pytest.raises(ValueError, match="label_smoothing replaces"):
        run_script(
            "pretrain_denoising.py",
            "--config",
            str(CONFIGS / "vae_multi30k_en.yaml"),
            "--texts",
            f"en={handful}",
            "--label_smoothing",
            "0.1",
            "--output_dir",
            str(tmp_path / "no"),
        )


def test_a_latent_best_metric_works_across_two_cpu_processes(handful, tmp_path):
    """The latent figures are decoded on the main process and shared, so every process can pick the best model."""
    output = tmp_path / "vae"
    launcher = [
        str(Path(sys.executable).with_name("accelerate")),
        "launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        "29521",
    ]
    flags = [
        "--config",
        str(CONFIGS / "vae_multi30k_en.yaml"),
        "--texts",
        f"en={handful}",
        "--best_metric",
        "latent/reconstruction_chrf",
        "--greater_is_better",
        "--output_dir",
        str(output),
        "--vocab_size",
        "100",
        "--hidden_size",
        "32",
        "--intermediate_size",
        "64",
        "--num_hidden_layers",
        "1",
        "--num_decoder_layers",
        "1",
        "--latent_size",
        "4",
        "--max_steps",
        "2",
        "--eval_every",
        "0",
        "--per_device_batch_size",
        "4",
        "--reconstruction_examples",
        "4",
        "--max_new_tokens",
        "8",
    ]
    done = subprocess.run(
        [*launcher, str(ROOT / "training" / "pretrain_denoising.py"), *flags],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env={**os.environ, "ACCELERATE_USE_CPU": "1"},
    )
    assert done.returncode == 0, done.stderr[-4000:]
    results = json.loads((output / "results.json").read_text())
    assert "latent/reconstruction_chrf" in results["metrics"] and (output / "best" / "model.safetensors").is_file()
    assert json.loads((output / "config.json").read_text())["num_processes"] == 2


def test_anomaly_script_writes_auroc_scores_and_histograms(autoencoder, joint, tmp_path):
    autoencoder.save_pretrained(tmp_path / "model")
    joint.save_pretrained(tmp_path / "model")
    (tmp_path / "inside").mkdir()
    (tmp_path / "inside" / "test.txt").write_text("\n".join(multi30k_lines("en", "val", 30)) + "\n")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "test.txt").write_text("zz qq xx vv kk 123 77\n" * 11 + "too short\n")
    run_script(
        "evaluate_anomaly.py",
        "--model",
        str(tmp_path / "model"),
        "--in_domain",
        f"captions={tmp_path / 'inside'}:test",
        "--out_of_domain",
        f"noise={tmp_path / 'outside'}:test",
        "--max_examples",
        "20",
        "--output_dir",
        str(tmp_path / "anomaly"),
    )
    results = json.loads((tmp_path / "anomaly" / "results.json").read_text())
    assert results["score"] == "reconstruction" and results["in_domain"]["examples"] == 20
    assert results["out_of_domain"]["noise"]["examples"] == 11  # "too short" has fewer than 5 words
    assert results["out_of_domain"]["noise"]["auroc"] > 0.9
    assert len((tmp_path / "anomaly" / "scores.jsonl").read_text().splitlines()) == 31
    assert (tmp_path / "anomaly" / "score_histograms.png").stat().st_size > 1000
    assert math.isfinite(results["in_domain"]["mean_score"])


def test_sentence_embeddings_of_a_variational_model_are_its_posterior_means(joint):
    model = vae(vocab_size=len(joint), max_position_embeddings=64)
    sentences = ["A dog runs in the park.", "Two men sit on a bench near the water."]
    batch = joint(sentences, padding=True, return_tensors="pt")
    means = model.encode_latent(batch["input_ids"], batch["attention_mask"])[0]
    expected = torch.nn.functional.normalize(means, dim=-1)
    torch.testing.assert_close(sentence_embeddings(model, joint, sentences), expected)
