"""LoRA adapters (PEFT) on the encoder family: fine-tuning trains only the adapters and the head, the adapter saves,
loads with PEFT's Auto classes (also from the Hub, without the package), merges into a model that gives the same
outputs; the encoder-decoder the same; targets that match nothing are refused."""

import json
import os
import random
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import (
    CONFIGS,
    REFUSE_HF_ENCODERS,
    WORDS,
    run_script,
    tiny_config,
    wordpiece_tokenizer,
)
from huggingface_hub import HfApi
from peft import AutoPeftModelForSequenceClassification, PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForSeq2SeqLM, AutoModelForSequenceClassification, AutoTokenizer, pipeline

from hf_encoders import EncoderForMaskedLM, EncoderForSequenceClassification, Seq2SeqConfig
from hf_encoders import Seq2SeqForConditionalGeneration as Seq2Seq
from hf_encoders.adapters import LoraArguments, load_adapted, with_lora
from hf_encoders.cards import build_model_card
from hf_encoders.cli import main as cli
from hf_encoders.hub import push_to_hub, upload_plan
from hf_encoders.testing.local_hub import LocalHub

TEXTS = ["the cat sat on the mat", "a big dog ran in the park", "a small red cat"]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> str:
    """A tiny (untrained) EncoderForMaskedLM and its tokenizer: what the adapter fine-tunes."""
    folder = tmp_path_factory.mktemp("base")
    torch.manual_seed(0)
    EncoderForMaskedLM(tiny_config(local_attention=None, global_attn_every_n_layers=None)).save_pretrained(folder)
    wordpiece_tokenizer().save_pretrained(folder)
    return str(folder)


def cat_or_dog(count: int, seed: int) -> list[dict]:
    generator = random.Random(seed)
    others = [word for word in WORDS if word not in ("cat", "dog")]
    rows = []
    for _ in range(count):
        animal = generator.choice(["cat", "dog"])
        rows.append({"text": " ".join(generator.sample(others, 4) + [animal]), "label": animal})
    return rows


@pytest.fixture(scope="module")
def lora_run(base, tmp_path_factory):
    """training/finetune_classification.py with --lora_r 4 on a cat-or-dog task."""
    data = tmp_path_factory.mktemp("cat_or_dog")
    for split, (count, seed) in {"train": (64, 0), "validation": (24, 1), "test": (24, 2)}.items():
        (data / f"{split}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in cat_or_dog(count, seed)))
    output = tmp_path_factory.mktemp("lora") / "run"
    flags = "--text_column text --per_device_batch_size 8 --eval_batch_size 16 --num_proc 1 --max_steps 60"
    flags += " --num_epochs 0 --learning_rate 1e-2 --eval_every 20 --best_metric validation/accuracy"
    flags += " --greater_is_better true --lora_r 4 --lora_alpha 8"
    run_script(
        "finetune_classification.py", "--model", base, "--data", str(data), "--output_dir", str(output), *flags.split()
    )
    return output


def logits(model, tokenizer, texts=TEXTS) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(**tokenizer(texts, return_tensors="pt", padding=True)).logits


def test_lora_fine_tuning_trains_only_the_adapters_and_the_head(base, lora_run):
    results = json.loads((lora_run / "results.json").read_text())
    assert results["test"]["accuracy"] == 1.0 and results["labels"] == ["cat", "dog"]
    assert 0 < results["trainable_parameters"] < results["parameters"] / 2
    best = lora_run / "best"
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json"} <= {p.name for p in best.iterdir()}
    assert not (best / "model.safetensors").exists()  # the adapter, not a copy of the model
    saved = load_file(best / "adapter_model.safetensors")
    assert all(".lora_" in key or ".head." in key or ".classifier." in key for key in saved)
    targets = json.loads((best / "adapter_config.json").read_text())["target_modules"]
    assert sorted(targets) == ["down_proj", "o_proj", "qkv_proj", "up_proj"]  # every projection the encoder has

    adapted = AutoPeftModelForSequenceClassification.from_pretrained(best)  # PEFT's own class, the base from config
    frozen = EncoderForMaskedLM.from_pretrained(base).state_dict()
    layer = adapted.get_base_model().model.layers[1].attn.qkv_proj
    assert torch.equal(layer.base_layer.weight, frozen["model.layers.1.attn.qkv_proj.weight"])
    assert layer.lora_B["default"].weight.abs().sum() > 0  # the adapter learned
    tokenizer = AutoTokenizer.from_pretrained(best)
    assert logits(adapted, tokenizer).argmax(-1).tolist() == [0, 1, 0]  # cat, dog, cat


def test_the_merged_model_equals_the_adapted_one(lora_run, tmp_path):
    assert cli(["merge-lora", str(lora_run / "best"), str(tmp_path / "merged")]) == 0
    merged = AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged")
    assert type(merged) is EncoderForSequenceClassification and merged.config.id2label == {0: "cat", 1: "dog"}
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "merged")
    adapted = load_adapted(lora_run / "best")
    torch.testing.assert_close(logits(merged, tokenizer), logits(adapted, tokenizer), atol=1e-5, rtol=1e-5)
    classify = pipeline("text-classification", model=str(tmp_path / "merged"))
    assert [answer["label"] for answer in classify(TEXTS)] == ["cat", "dog", "cat"]


PEFT_FROM_HUB = REFUSE_HF_ENCODERS + textwrap.dedent(
    """
    import torch
    from peft import AutoPeftModelForSequenceClassification
    from transformers import AutoTokenizer
    model = AutoPeftModelForSequenceClassification.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(sys.argv[1])
    with torch.no_grad():
        logits = model(**tokenizer(json.loads(sys.argv[2]), return_tensors="pt", padding=True)).logits
    base = type(model.get_base_model())
    print(json.dumps({"class": base.__module__, "logits": logits.tolist()}))
    """
)


def test_the_adapter_pushes_to_the_hub_and_loads_there_without_the_package(base, lora_run, tmp_path):
    with pytest.raises(ValueError, match="adapts the local model .* give its Hub id as base_model"):
        upload_plan(lora_run, "org/cat-or-dog")
    files = upload_plan(lora_run, "org/cat-or-dog", base_model="org/tiny-base")
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "README.md"} <= set(files)
    assert json.loads(files["adapter_config.json"])["base_model_name_or_path"] == "org/tiny-base"
    card = files["README.md"].decode()
    assert "library_name: peft" in card and "base_model: org/tiny-base" in card and "- lora" in card
    assert 'AutoPeftModelForSequenceClassification.from_pretrained("org/cat-or-dog", id2label=' in card
    assert "hf-encoders merge-lora org/cat-or-dog merged/" in card

    expected = logits(load_adapted(lora_run / "best"), AutoTokenizer.from_pretrained(lora_run / "best"))
    with LocalHub() as hub:
        HfApi(endpoint=hub.endpoint, token="local").create_repo("org/tiny-base")
        HfApi(endpoint=hub.endpoint, token="local").upload_folder(repo_id="org/tiny-base", folder_path=base)
        push_to_hub(lora_run, "org/cat-or-dog", endpoint=hub.endpoint, token="local", base_model="org/tiny-base")
        env = {**os.environ, "HF_ENDPOINT": hub.endpoint, "HF_HUB_CACHE": str(tmp_path / "cache"), "HF_TOKEN": "local"}
        env.pop("HF_HUB_OFFLINE", None)
        command = [sys.executable, "-c", PEFT_FROM_HUB, "org/cat-or-dog", json.dumps(TEXTS)]
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert loaded["class"].startswith("transformers_modules")  # the base repository's own code
    torch.testing.assert_close(torch.tensor(loaded["logits"]), expected, atol=1e-5, rtol=1e-5)


def test_a_lora_target_that_matches_no_layer_is_refused(base):
    model = EncoderForSequenceClassification.from_pretrained(base, num_labels=2)
    with pytest.raises(ValueError, match="LoRA target 'query' matches no linear layer .* qkv_proj, up_proj"):
        with_lora(model, LoraArguments(lora_r=4, lora_target=["qkv_proj", "query"]), "sequence-classification")
    with pytest.raises(ValueError, match="LoRA target 'classifier' matches no linear layer"):  # the head trains whole
        with_lora(model, LoraArguments(lora_r=4, lora_target=["classifier"]), "sequence-classification")
    with pytest.raises(ValueError, match="lora_r=-1: give a positive rank"):
        LoraArguments(lora_r=-1)


def test_chosen_targets_are_adapted_and_the_rest_frozen(base):
    model = EncoderForSequenceClassification.from_pretrained(base, num_labels=2)
    adapted = with_lora(model, LoraArguments(lora_r=2, lora_target=["o_proj"]), "sequence-classification")
    trains = {name for name, parameter in adapted.named_parameters() if parameter.requires_grad}
    assert trains and all(".o_proj.lora_" in name or ".head." in name or ".classifier." in name for name in trains)
    assert any(".o_proj.lora_" in name for name in trains) and any(".classifier." in name for name in trains)


@pytest.fixture(scope="module")
def lora_translation(translation_run, handful, tmp_path_factory):
    """training/train_translation.py adapting the tiny translation model with LoRA."""
    trained, _ = translation_run
    output = tmp_path_factory.mktemp("lora_translation") / "run"
    flags = f"--data {handful} --output_dir {output} --init_from {trained / 'best'} --lora_r 4 --max_steps 6"
    flags += " --num_epochs 0 --per_device_batch_size 8 --eval_every 3 --warmup_steps 0 --learning_rate 1e-3"
    run_script("train_translation.py", "--config", str(CONFIGS / "translation_tiny.yaml"), *flags.split())
    return trained, output


def test_lora_adapts_the_encoder_decoder_and_merges_into_the_same_translations(lora_translation, tmp_path):
    trained, output = lora_translation
    results = json.loads((output / "results.json").read_text())
    assert 0 < results["trainable_parameters"] < results["parameters"] / 4 and results["test"]["examples"] == 8
    config = json.loads((output / "best" / "adapter_config.json").read_text())
    assert config["task_type"] == "SEQ_2_SEQ_LM"
    assert sorted(config["target_modules"]) == ["down_proj", "kv_proj", "o_proj", "q_proj", "qkv_proj", "up_proj"]

    adapted = load_adapted(output / "best")
    assert isinstance(adapted, PeftModel)
    tokenizer = AutoTokenizer.from_pretrained(output / "best")
    assert cli(["merge-lora", str(output / "best"), str(tmp_path / "merged")]) == 0
    merged = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "merged")
    inputs = tokenizer(["Ein Hund läuft.", "Zwei Männer spielen Fußball."], return_tensors="pt", padding=True)
    start = {"forced_bos_token_id": tokenizer.convert_tokens_to_ids("<2en>"), "max_new_tokens": 12}
    assert torch.equal(
        adapted.generate(**inputs, num_beams=3, **start), merged.generate(**inputs, num_beams=3, **start)
    )

    card = build_model_card(output, repo_id="org/de-en-lora", base_model="org/de-en")
    assert card.data.library_name == "peft" and card.data.base_model == "org/de-en"
    assert 'AutoPeftModelForSeq2SeqLM.from_pretrained("org/de-en-lora")' in card.text


def test_lora_translation_needs_a_trained_model():
    with pytest.raises(ValueError, match="LoRA adapts a trained model: give it with --init_from"):
        run_script("train_translation.py", "--config", str(CONFIGS / "translation_tiny.yaml"), "--lora_r", "4")


def test_default_targets_of_the_encoder_decoder_include_cross_attention():
    config = Seq2SeqConfig(
        vocab_size=40, hidden_size=32, num_hidden_layers=1, num_decoder_layers=1, intermediate_size=48
    )
    model = Seq2Seq(config)
    adapted = with_lora(model, LoraArguments(lora_r=2), "translation")
    assert not any(parameter.requires_grad for name, parameter in adapted.named_parameters() if "lora_" not in name)
    assert sorted(adapted.peft_config["default"].target_modules) == sorted(
        ["qkv_proj", "q_proj", "kv_proj", "o_proj", "up_proj", "down_proj"]
    )


def test_a_multi_label_adapter_merges_into_a_multi_label_model(base, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    rows = [
        {"text": row["text"], "label": [row["label"]] + (["red"] if "red" in row["text"] else [])}
        for row in cat_or_dog(24, 3)
    ]
    for split in ("train", "validation", "test"):
        (data / f"{split}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    flags = "--text_column text --task multi_label --label_names cat dog red --max_steps 2 --num_epochs 0 --lora_r 2"
    run = tmp_path / "run"
    run_script(
        "finetune_classification.py", "--model", base, "--data", str(data), "--output_dir", str(run), *flags.split()
    )
    assert cli(["merge-lora", str(run / "final"), str(tmp_path / "merged")]) == 0
    merged = AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged")
    assert merged.config.problem_type == "multi_label_classification"  # the run's task: sigmoid, not softmax
    assert merged.config.id2label == {0: "cat", 1: "dog", 2: "red"}
