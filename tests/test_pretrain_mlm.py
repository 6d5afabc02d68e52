"""training/pretrain_mlm.py end to end on a corpus the test writes: tokenizer, packing, training, evaluation,
export, results."""

import json

import pytest
import torch
from accelerate import Accelerator
from conftest import CONFIGS, run_script
from transformers import AutoModelForMaskedLM, AutoTokenizer, BertForMaskedLM, ModernBertForMaskedLM, pipeline

from hf_encoders import load_text_dataset, pack_for_mlm
from hf_encoders.baselines import modernbert_for_masked_lm
from hf_encoders.cards import architecture_rows, build_model_card
from hf_encoders.tasks.masked_lm import train as pretrain_mlm  # what training/pretrain_mlm.py runs
from hf_encoders.tasks.masked_lm.evaluation import evaluate_masked_lm


def test_pretrain_mlm_script_end_to_end(mlm_run):
    output = mlm_run
    results = json.loads((output / "results.json").read_text())
    assert results["steps"] == 12 and results["stopped_by"] == "max_steps" and results["tokens_seen"] > 12 * 8
    assert {"corpus/loss", "corpus/perplexity", "corpus/accuracy"} <= set(results["metrics"])
    resolved = json.loads((output / "config.json").read_text())
    assert resolved["data"]["vocab_size"] == 200 and resolved["training"]["max_steps"] == 12
    assert resolved["device"].startswith("CPU (") and resolved["versions"]["torch"] == torch.__version__
    rows = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    assert any("corpus/loss" in row for row in rows) and any("train/loss" in row for row in rows)
    for name in ("final", "best"):
        model = AutoModelForMaskedLM.from_pretrained(output / name)
        tokenizer = AutoTokenizer.from_pretrained(output / name)
        assert model.config.vocab_size == len(tokenizer)
    fill = pipeline("fill-mask", model=str(output / "final"))
    assert len(fill(f"the film was a great {tokenizer.mask_token} to watch", top_k=2)) == 2
    with torch.no_grad():
        out = model(**tokenizer("a dull and tedious movie", return_tensors="pt"))
    assert torch.isfinite(out.logits).all()


def test_bert_pretrains_through_the_same_script_for_side_by_side_runs(mlm_run, mlm_corpus, tmp_path):
    """`--architecture bert`: BertForMaskedLM of the same width, depth and heads (the GLU's FLOPs as a plain MLP), on
    the same tokenizer, blocks and masks, with one padded row per document, in training and in evaluation."""
    output = tmp_path / "bert"
    run_script(
        "pretrain_mlm.py",
        "--config",
        str(CONFIGS / "mlm_tiny.yaml"),
        "--architecture",
        "bert",
        "--tokenizer",
        str(mlm_run / "final"),
        "--train_data",
        str(mlm_corpus),
        "--train_split",
        "train",
        "--eval_data",
        f"corpus={mlm_corpus}:validation",
        "--output_dir",
        str(output),
        "--block_size",
        "64",
        "--max_steps",
        "6",
        "--eval_every",
        "6",
        "--num_proc",
        "1",
        "--best_metric",
        "corpus/loss",
    )
    results = json.loads((output / "results.json").read_text())
    settings = json.loads((output / "config.json").read_text())
    assert results["steps"] == 6 and settings["model"]["architecture"] == "bert"
    model = AutoModelForMaskedLM.from_pretrained(output / "final")
    ours = AutoModelForMaskedLM.from_pretrained(mlm_run / "final")
    assert isinstance(model, BertForMaskedLM)
    assert (model.config.hidden_size, model.config.num_hidden_layers, model.config.num_attention_heads) == (
        ours.config.hidden_size,
        ours.config.num_hidden_layers,
        ours.config.num_attention_heads,
    )
    assert model.config.intermediate_size == ours.config.intermediate_size * 3 // 2  # geglu -> FLOP-equal gelu MLP
    tokenizer = AutoTokenizer.from_pretrained(output / "final")
    assert tokenizer.get_vocab() == AutoTokenizer.from_pretrained(mlm_run / "final").get_vocab()
    # the reported loss is BERT's on padded rows (on one packed row its documents would see each other)
    documents = load_text_dataset(str(mlm_corpus))["validation"]
    blocks = pack_for_mlm(documents.select(range(min(len(documents), 200))), tokenizer, 64, num_proc=1)
    accelerator = Accelerator(cpu=True)
    padded = evaluate_masked_lm(model, blocks, tokenizer, accelerator, 8, 0.3, padding_free=False)
    packed = evaluate_masked_lm(model, blocks, tokenizer, accelerator, 8, 0.3, padding_free=True)
    assert abs(results["metrics"]["corpus/loss"] - padded["loss"]) < 1e-4
    assert abs(padded["loss"] - packed["loss"]) > 1e-3
    # its card is a transformers model's: no custom code, and the usage example loads it without remote code
    card = build_model_card(output)
    assert "custom_code" not in card.data.tags and "trust_remote_code" not in card.text
    assert "`BertForMaskedLM`" in card.text and "| MLP activation | gelu |" in card.text


def test_modernbert_pretrains_through_the_same_script_with_our_settings(mlm_run, mlm_corpus, tmp_path):
    """`--architecture modernbert`: ModernBertForMaskedLM of our settings (width, depth, heads, GeGLU width, the
    local/global layer pattern and its window, RoPE): as many parameters as ours of the same settings, its sparse head,
    one padded row per document."""
    output = tmp_path / "modernbert"
    flags = ["--config", str(CONFIGS / "mlm_tiny.yaml"), "--tokenizer", str(mlm_run / "final")]
    flags += [
        "--train_data",
        str(mlm_corpus),
        "--train_split",
        "train",
        "--eval_data",
        f"corpus={mlm_corpus}:validation",
    ]
    flags += ["--block_size", "64", "--max_steps", "3", "--eval_every", "3", "--num_proc", "1"]
    flags += ["--best_metric", "corpus/loss", "--num_hidden_layers", "3", "--hidden_activation", "geglu"]
    run_script(
        "pretrain_mlm.py",
        *flags,
        "--architecture",
        "modernbert",
        "--local_attention",
        "16",
        "--global_attn_every_n_layers",
        "2",
        "--output_dir",
        str(output),
    )
    results = json.loads((output / "results.json").read_text())
    assert (
        results["steps"] == 3
        and json.loads((output / "config.json").read_text())["model"]["architecture"] == "modernbert"
    )
    model = AutoModelForMaskedLM.from_pretrained(output / "final")
    assert isinstance(model, ModernBertForMaskedLM) and model.config.sparse_prediction
    assert model.config.layer_types == ["full_attention", "sliding_attention", "full_attention"]
    assert model.config.local_attention == 16 and model.config.hidden_activation == "gelu"  # (ModernBERT's GeGLU)
    tokenizer = AutoTokenizer.from_pretrained(output / "final")
    ours = pretrain_mlm.build_model(
        pretrain_mlm.ModelArguments(
            hidden_size=64,
            num_hidden_layers=3,
            num_attention_heads=2,
            intermediate_size=128,
            hidden_activation="geglu",
            max_position_embeddings=128,
            local_attention=16,
            global_attn_every_n_layers=2,
        ),
        tokenizer,
    )
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in ours.parameters())
    assert [layer.attention_type for layer in ours.model.layers] == model.config.layer_types
    documents = load_text_dataset(str(mlm_corpus))["validation"]
    blocks = pack_for_mlm(documents.select(range(min(len(documents), 200))), tokenizer, 64, num_proc=1)
    padded = evaluate_masked_lm(model, blocks, tokenizer, Accelerator(cpu=True), 8, 0.3, padding_free=False)
    assert abs(results["metrics"]["corpus/loss"] - padded["loss"]) < 1e-4
    card = build_model_card(output)
    assert "custom_code" not in card.data.tags and "`ModernBertForMaskedLM`" in card.text
    assert "| MLP activation | gelu (gated: ModernBERT's MLP is a GLU) |" in card.text
    assert "| local attention window | 16 |" in card.text


def test_modernbert_takes_every_layer_pattern_and_a_plain_mlp_at_its_flops(mlm_run, caplog):
    """Without a window every layer is global (and the card names no window), a window without
    `global_attn_every_n_layers` makes every layer local, as ours; a plain MLP becomes the GeGLU of its FLOPs."""
    tokenizer = AutoTokenizer.from_pretrained(mlm_run / "final")
    dims = dict(hidden_size=64, num_hidden_layers=3, num_attention_heads=2, intermediate_size=96)
    everywhere = modernbert_for_masked_lm(tokenizer, **dims)
    assert everywhere.config.layer_types == ["full_attention"] * 3
    assert "local attention window" not in dict(architecture_rows(everywhere.config.to_dict(), 0))
    local = modernbert_for_masked_lm(tokenizer, **dims, local_attention=8)
    assert local.config.layer_types == ["sliding_attention"] * 3 and local.config.local_attention == 8
    plain = modernbert_for_masked_lm(tokenizer, **dims, hidden_activation="gelu")
    assert plain.config.intermediate_size == 64 and "becomes the GeGLU of the same FLOPs, width 64" in caplog.text


def test_unknown_architecture_is_refused():
    with pytest.raises(ValueError, match="architecture='roberta': choose one of hf_encoder, bert, modernbert"):
        pretrain_mlm.ModelArguments(architecture="roberta")


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--hidden_size", "65", "--num_attention_heads", "2"], "--hidden_size 65 must be a multiple of"),
        (["--architecture", "bert", "--hidden_size", "65", "--num_attention_heads", "2"], "--hidden_size 65 must"),
        (["--local_attention", "5"], "`local_attention` must be an even window width"),
    ],
)
def test_model_settings_are_refused_before_anything_is_read_or_written(flags, message, mlm_corpus, tmp_path):
    """Before the corpus and the tokenizer: no run folder (with a `tokenizer/`) is left that the corrected command
    would then be refused for."""
    with pytest.raises(ValueError, match=message):
        pretrain_mlm.main(
            ["--config", str(CONFIGS / "mlm_tiny.yaml"), "--train_data", str(mlm_corpus), "--train_split", "train"]
            + ["--output_dir", str(tmp_path / "run"), *flags]
        )
    assert not (tmp_path / "run").exists()


def test_time_to_quality_is_collected_from_each_architectures_sweep(mlm_run, mlm_corpus, tmp_path):
    """Runs log their wall-clock seconds (`train/seconds`); benchmarks/collect_mlm.py chooses each architecture's
    learning rate on one held-out metric and times another against those seconds, refusing to do both on one."""
    from benchmarks import collect_mlm

    flags = ["--config", str(CONFIGS / "mlm_tiny.yaml"), "--tokenizer", str(mlm_run / "final")]
    flags += ["--train_data", str(mlm_corpus), "--train_split", "train", "--block_size", "64", "--num_proc", "1"]
    flags += ["--eval_data", f"val={mlm_corpus}:validation", f"held={mlm_corpus}:train", "--best_metric", "val/loss"]
    flags += ["--max_steps", "4", "--log_every", "2", "--eval_every", "2"]
    runs = {}
    for name, architecture, learning_rate in [("ours_a", "hf_encoder", "3e-3"), ("ours_b", "hf_encoder", "1e-4")]:
        runs[name] = tmp_path / name
        run_script(
            "pretrain_mlm.py",
            *flags,
            "--architecture",
            architecture,
            "--learning_rate",
            learning_rate,
            "--output_dir",
            str(runs[name]),
        )
    runs["mb"] = tmp_path / "mb"
    run_script("pretrain_mlm.py", *flags, "--architecture", "modernbert", "--output_dir", str(runs["mb"]))
    rows = [json.loads(line) for line in (runs["mb"] / "metrics.jsonl").read_text().splitlines()]
    seconds = [row["train/seconds"] for row in rows if "train/seconds" in row]
    assert len(seconds) == 2 and 0 < seconds[0] < seconds[1]
    arches = [f"--arch=ours={runs['ours_a']},{runs['ours_b']}", f"--arch=modernbert={runs['mb']}"]
    common = [*arches, "--choose-on", "val/loss", "--output", str(tmp_path / "t.json")]
    figures = collect_mlm.main([*common, "--metric", "held/loss", "--plot", str(tmp_path / "t.png")])
    finals = {name: json.loads((runs[name] / "results.json").read_text())["metrics"] for name in runs}
    expected = min(("ours_a", "ours_b"), key=lambda name: finals[name]["val/loss"])
    assert figures["chosen"]["ours"]["run"] == str(runs[expected])
    assert [point["step"] for point in figures["chosen"]["modernbert"]["curve"]] == [2, 4]
    (row,) = figures["time_to_quality"]
    assert row["target"] == max(finals[name]["held/loss"] for name in (expected, "mb"))
    assert all(value is not None for value in row["seconds"].values()) and row["seconds_vs_ours"]["ours"] == 1.0
    assert (tmp_path / "t.png").stat().st_size > 0 and json.loads((tmp_path / "t.json").read_text())["chosen"]
    with pytest.raises(ValueError, match="chosen on the figures reported"):
        collect_mlm.main([*common, "--metric", "val/loss"])
