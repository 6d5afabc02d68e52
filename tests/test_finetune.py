"""training/finetune_classification.py: a tiny encoder learns a separable task to 100%, label names survive saving,
multi-label and regression train through the same script, token labels sit on each word's first sub-token, and bad
data is refused with a message naming the problem."""

import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, SPECIALS, WORDS, run_script, tiny_config
from datasets import Dataset
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification, PreTrainedTokenizerFast

from hf_encoders import EncoderForMaskedLM
from hf_encoders.cards import build_model_card
from hf_encoders.tasks.classification import finetune as finetune_classification  # what the script runs
from hf_encoders.tasks.classification.card import pretraining_tokens

ANIMALS = {"cat", "dog"}


def make_tokenizer() -> PreTrainedTokenizerFast:
    """WordPiece over the conftest words plus the piece `##s`, so that "cats" is two sub-tokens."""
    vocab = {token: i for i, token in enumerate(SPECIALS + WORDS + ["##s"])}
    backend = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 1), ("[SEP]", 2)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        unk_token="[UNK]",
    )


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    """A tiny (untrained) EncoderForMaskedLM and its tokenizer: what fine-tuning starts from."""
    folder = tmp_path_factory.mktemp("encoder")
    torch.manual_seed(0)
    EncoderForMaskedLM(tiny_config(local_attention=None, global_attn_every_n_layers=None)).save_pretrained(folder)
    make_tokenizer().save_pretrained(folder)
    return str(folder)


def sentences(count: int, seed: int) -> list[list[str]]:
    """Word lists with exactly one of cat/dog among other words."""
    generator = random.Random(seed)
    others = [word for word in WORDS if word not in ANIMALS]
    return [generator.sample(others, 4) + [generator.choice(sorted(ANIMALS))] for _ in range(count)]


def write_splits(folder, rows_by_split: dict[str, list[dict]]):
    folder.mkdir()
    for split, rows in rows_by_split.items():
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return folder


def finetune(checkpoint, data, output, *flags):
    return run_script(
        "finetune_classification.py",
        "--model",
        checkpoint,
        "--data",
        str(data),
        "--output_dir",
        str(output),
        "--text_column",
        "text",
        "--per_device_batch_size",
        "8",
        "--eval_batch_size",
        "16",
        "--num_proc",
        "1",
        *flags,
    )


def test_a_tiny_model_learns_a_separable_task_and_keeps_its_label_names(checkpoint, tmp_path):
    def rows(count, seed):
        return [
            {"text": " ".join(words), "label": "cat" if "cat" in words else "dog"} for words in sentences(count, seed)
        ]

    data = write_splits(tmp_path / "data", {"train": rows(64, 0), "validation": rows(24, 1), "test": rows(24, 2)})
    output = tmp_path / "run"
    finetune(
        checkpoint,
        data,
        output,
        "--max_steps",
        "60",
        "--num_epochs",
        "0",
        "--learning_rate",
        "3e-3",
        "--eval_every",
        "20",
        "--best_metric",
        "validation/accuracy",
        "--greater_is_better",
        "true",
    )
    results = json.loads((output / "results.json").read_text())
    assert results["labels"] == ["cat", "dog"] and results["test"]["accuracy"] == 1.0
    assert {"f1", "matthews_correlation"} <= set(results["test"]) and results["train"]["metrics"][
        "validation/accuracy"
    ]
    model = AutoModelForSequenceClassification.from_pretrained(output / "best")
    assert model.config.id2label == {0: "cat", 1: "dog"} and model.config.label2id == {"cat": 0, "dog": 1}
    predictions = [json.loads(line) for line in (output / "best" / "predictions.test.jsonl").read_text().splitlines()]
    assert [p["prediction"] for p in predictions] == [row["label"] for row in rows(24, 2)]
    assert set(predictions[0]["probabilities"]) == {"cat", "dog"}

    card = build_model_card(output, repo_id="org/cat-or-dog", language=["en"])  # the run's card: test scores
    assert {(r.metric_type, r.dataset_split, r.metric_value) for r in card.data.eval_results} >= {
        ("accuracy", "test", 1.0)
    }
    assert card.data.pipeline_tag == "text-classification" and "labels: cat, dog" in card.text
    assert 'AutoModelForSequenceClassification.from_pretrained("org/cat-or-dog")' in card.text


def test_the_model_is_chosen_on_examples_held_out_of_train_and_the_reported_split_is_scored_once(checkpoint, tmp_path):
    rows = [{"text": " ".join(words), "label": sorted(ANIMALS & set(words))[0]} for words in sentences(64, 8)]
    data = write_splits(tmp_path / "data", {"train": rows, "validation": rows[:24]})
    arguments = finetune_classification.DataArguments(
        data=str(data), text_column="text", validation_from_train=16, test_split="validation"
    )
    splits = finetune_classification.load_splits(arguments, "single_label")
    held_out, train = splits[finetune_classification.HELD_OUT], splits["train"]
    assert (len(held_out), len(train)) == (16, 48)
    assert sorted([*held_out["text"], *train["text"]]) == sorted(row["text"] for row in rows)  # a partition of train
    again = finetune_classification.load_splits(arguments, "single_label")[finetune_classification.HELD_OUT]
    assert list(again["text"]) == list(held_out["text"])  # seeded (split_seed)

    output = tmp_path / "run"
    finetune(
        checkpoint, data, output, "--validation_from_train", "16", "--test_split", "validation", "--max_steps", "4"
    )
    results = json.loads((output / "results.json").read_text())
    assert results["validation_split"] == finetune_classification.HELD_OUT and results["train_examples"] == 48
    assert results["test"]["split"] == "validation" and results["test"]["examples"] == 24
    card = build_model_card(output, language=["en"])
    assert f"Scores of the `{finetune_classification.HELD_OUT}` split (the checkpoint was chosen on it)" in card.text
    assert {row.dataset_split for row in card.data.eval_results} == {"validation"}  # only the reported split

    too_many = finetune_classification.DataArguments(
        data=str(data), text_column="text", validation_from_train=64, test_split="validation"
    )
    with pytest.raises(ValueError, match="validation_from_train=64: the training split has 64 examples"):
        finetune_classification.load_splits(too_many, "single_label")


def test_multi_label_and_regression_train_through_the_same_script(checkpoint, tmp_path):
    multi = [
        {"text": " ".join(words), "label": sorted(ANIMALS & set(words)) + (["red"] if "red" in words else [])}
        for words in sentences(24, 3)
    ]
    data = write_splits(tmp_path / "multi", {"train": multi, "validation": multi[:8], "test": multi[:8]})
    finetune(
        checkpoint,
        data,
        tmp_path / "multi_run",
        "--task",
        "multi_label",
        "--max_steps",
        "3",
        "--num_epochs",
        "0",
        "--label_names",
        "cat",
        "dog",
        "red",
    )
    results = json.loads((tmp_path / "multi_run" / "results.json").read_text())
    assert {"exact_match", "f1_micro", "f1_macro"} <= set(results["test"]) and results["labels"] == [
        "cat",
        "dog",
        "red",
    ]
    model = AutoModelForSequenceClassification.from_pretrained(results["model"])
    assert model.config.problem_type == "multi_label_classification" and model.config.num_labels == 3

    scored = [
        {"text": " ".join(words), "other": " ".join(reversed(words)), "label": float(len(" ".join(words)))}
        for words in sentences(24, 4)
    ]  # text pairs, as in STS-B
    data = write_splits(tmp_path / "scores", {"train": scored, "validation": scored[:8], "test": scored[:8]})
    finetune(
        checkpoint,
        data,
        tmp_path / "regression_run",
        "--task",
        "regression",
        "--max_steps",
        "3",
        "--num_epochs",
        "0",
        "--text_pair_column",
        "other",
    )
    results = json.loads((tmp_path / "regression_run" / "results.json").read_text())
    assert {"pearson", "spearman", "mse"} <= set(results["test"]) and torch.isfinite(
        torch.tensor(results["train"]["train_loss"])
    )
    model = AutoModelForSequenceClassification.from_pretrained(results["model"])
    assert model.config.problem_type == "regression" and model.config.num_labels == 1


def test_token_labels_sit_on_the_first_sub_token_of_each_word():
    tokenizer = make_tokenizer()
    data = finetune_classification.DataArguments(text_column="tokens", label_column="tags", max_length=16)
    rows = {"tokens": [["the", "cats", "sat"]], "tags": [["O", "ANIMAL", "O"]]}
    encoded = finetune_classification.tokenize(
        "train", Dataset.from_dict(rows), tokenizer, data, "token", {"O": 0, "ANIMAL": 1}
    )
    assert tokenizer.convert_ids_to_tokens(encoded[0]["input_ids"]) == ["[CLS]", "the", "cat", "##s", "sat", "[SEP]"]
    assert encoded[0]["labels"] == [-100, 0, 1, -100, 0, -100]

    pairs = finetune_classification.DataArguments(text_column="a", text_pair_column="b", max_length=16)
    encoded = finetune_classification.tokenize(
        "train",
        Dataset.from_dict({"a": ["the cat"], "b": ["a dog"], "label": [1.5]}),
        tokenizer,
        pairs,
        "regression",
        {"score": 0},
    )
    assert tokenizer.convert_ids_to_tokens(encoded[0]["input_ids"]) == [
        "[CLS]",
        "the",
        "cat",
        "[SEP]",
        "a",
        "dog",
        "[SEP]",
    ]
    assert encoded[0]["labels"] == 1.5


def test_a_tagger_learns_to_find_the_animals(checkpoint, tmp_path):
    def rows(count, seed):
        return [
            {"tokens": words, "tags": ["ANIMAL" if word in ANIMALS else "O" for word in words]}
            for words in sentences(count, seed)
        ]

    data = write_splits(tmp_path / "tags", {"train": rows(48, 5), "validation": rows(16, 6), "test": rows(16, 7)})
    output = tmp_path / "tagger"
    finetune(
        checkpoint,
        data,
        output,
        "--task",
        "token",
        "--text_column",
        "tokens",
        "--label_column",
        "tags",
        "--max_steps",
        "40",
        "--num_epochs",
        "0",
        "--learning_rate",
        "3e-3",
    )
    results = json.loads((output / "results.json").read_text())
    assert results["test"]["accuracy"] == 1.0 and results["labels"] == ["ANIMAL", "O"]
    model = AutoModelForTokenClassification.from_pretrained(output / "final")
    assert model.config.id2label == {0: "ANIMAL", 1: "O"}


@pytest.mark.parametrize(
    "rows, flags, message",
    [
        (
            {"train": [{"text": "a cat", "label": 5}] * 4},
            ["--label_names", "no", "yes"],
            "split 'train', row 0: label 5 is outside num_labels=2 (ids 0..1)",
        ),
        ({"train": [{"sentence": "a cat", "label": 1}] * 4}, [], "has no 'text' column; it has ['sentence', 'label']"),
        (
            {"train": [{"text": "a cat", "label": "cat"}] * 4},
            ["--label_names", "dog"],
            "label 'cat' is not one of the label names ['dog']",
        ),
        (
            {"train": [{"text": "a cat", "label": 1}] * 4, "validation": [{"text": "a dog", "label": 0}]},
            [
                "--max_train_examples",
                "0",
                "--train_split",
                "validation",
                "--validation_split",
                "train",
                "--test_split",
                "nope",
            ],
            "has no split 'nope'",
        ),
    ],
)
def test_bad_data_is_refused_with_a_clear_message(checkpoint, tmp_path, rows, flags, message):
    data = write_splits(tmp_path / "data", rows)
    with pytest.raises(ValueError) as error:
        finetune_classification.main(
            [
                "--model",
                checkpoint,
                "--data",
                str(data),
                "--text_column",
                "text",
                "--output_dir",
                str(tmp_path / "run"),
                "--test_split",
                "",
                *flags,
            ]
        )
    assert message in str(error.value)


def test_an_empty_training_split_is_refused(checkpoint, tmp_path):
    blank = write_splits(
        tmp_path / "blank", {"train": [{"text": " ", "label": 1}] * 4, "validation": [{"text": "a dog", "label": 0}]}
    )
    with pytest.raises(
        ValueError, match=r"blank: split 'train' holds no text \(all its 4 rows have an empty 'text'\)"
    ):
        finetune_classification.main(
            [
                "--model",
                checkpoint,
                "--data",
                str(blank),
                "--text_column",
                "text",
                "--output_dir",
                str(tmp_path / "run"),
                "--test_split",
                "",
            ]
        )
    empty = write_splits(tmp_path / "empty", {"train": [], "validation": [{"text": "a dog", "label": 0}]})
    with pytest.raises(ValueError, match=r"train.jsonl is empty: its split would hold no examples"):
        finetune_classification.main(
            [
                "--model",
                checkpoint,
                "--data",
                str(empty),
                "--text_column",
                "text",
                "--output_dir",
                str(tmp_path / "run"),
                "--test_split",
                "",
            ]
        )


@pytest.mark.parametrize("task", finetune_classification.TASKS)
def test_the_declared_metric_names_are_what_each_task_reports(task):
    """start_run checks best_metric against TASK_METRICS before any data is read: they must be the real names."""
    if task == "token":
        logits, labels = [torch.tensor([[2.0, 0.0], [0.0, 1.0]])], [[0, 1]]
    elif task == "multi_label":
        logits, labels = [torch.tensor([1.0, -1.0]), torch.tensor([-1.0, 1.0])], [[1, 0], [0, 0]]
    elif task == "regression":
        logits, labels = [torch.tensor([0.5]), torch.tensor([1.5]), torch.tensor([0.1])], [0.4, 1.2, 0.3]
    else:
        logits, labels = [torch.tensor([2.0, 0.0]), torch.tensor([0.0, 1.0])], [0, 0]
    assert sorted(finetune_classification.scores(task, logits, labels)) == sorted(
        finetune_classification.TASK_METRICS[task]
    )


def test_runs_over_seeds_are_gathered_with_their_spread_pretraining_and_curves(mlm_run, tmp_path):
    rows = [{"text": " ".join(words), "label": sorted(ANIMALS & set(words))[0]} for words in sentences(48, 9)]
    data = write_splits(tmp_path / "data", {"train": rows, "validation": rows[:16]})
    folders = []
    for seed in ("0", "1"):
        folders.append(tmp_path / f"seed{seed}")
        flags = ["--validation_from_train", "16", "--test_split", "validation", "--max_steps", "4", "--seed", seed]
        finetune(
            str(mlm_run / "best"),
            data,
            folders[-1],
            *flags,
            "--eval_every",
            "2",
            "--best_metric",
            "validation/accuracy",
        )
    output = tmp_path / "gathered.json"
    command = [sys.executable, str(ROOT / "benchmarks" / "collect_finetune.py"), "--output", str(output)]
    command += ["--method", "full=" + ",".join(map(str, folders)), "--pretraining", str(mlm_run)]
    subprocess.run([*command, "--plot", str(tmp_path / "curves.png")], check=True, capture_output=True, timeout=120)
    assert (tmp_path / "curves.png").read_bytes().startswith(b"\x89PNG")
    pretraining = json.loads(output.read_text())["settings"]["pretraining"]
    pretrained = json.loads((mlm_run / "results.json").read_text())
    assert pretraining["tokens_seen"] == pretrained["tokens_seen"] and len(pretraining["commands"]) == 1
    assert [row["step"] for row in pretraining["validation_curve"]] == [6, 12]  # evaluated every 6 of 12 steps
    card = build_model_card(folders[0]).text  # the pretraining tokens beside the figures
    assert f"fine-tuned from `run/best` (pretrained on {pretrained['tokens_seen']:,} tokens)" in card
    gathered = json.loads(output.read_text())["methods"]["full"]
    accuracies = [json.loads((folder / "results.json").read_text())["test"]["accuracy"] for folder in folders]
    assert gathered["summary"]["accuracy"]["values"] == accuracies and gathered["summary"]["seeds"] == [0, 1]
    assert gathered["summary"]["accuracy"]["std"] == pytest.approx(statistics.stdev(accuracies))
    assert gathered["summary"]["chosen_on"] == finetune_classification.HELD_OUT
    assert [row["step"] for row in gathered["runs"][0]["validation_curve"]] == [2, 4]


def test_the_card_states_the_base_tokens_counted_at_fine_tuning_not_those_of_a_base_resumed_since(
    mlm_run, tmp_path, monkeypatch
):
    base = tmp_path / "base"
    shutil.copytree(mlm_run, base)
    rows = [{"text": " ".join(words), "label": sorted(ANIMALS & set(words))[0]} for words in sentences(24, 9)]
    data = write_splits(tmp_path / "data", {"train": rows, "validation": rows[:8]})
    output = tmp_path / "fine-tuned"
    finetune(str(base / "best"), data, output, "--test_split", "validation", "--max_steps", "2")
    counted = json.loads((base / "results.json").read_text())["tokens_seen"]
    results = json.loads((output / "results.json").read_text())
    assert results["base_pretraining_tokens"] == counted
    resumed = json.loads((base / "results.json").read_text()) | {"tokens_seen": 10 * counted}
    (base / "results.json").write_text(json.dumps(resumed))  # the base run resumed in place, after the fine-tuning
    assert f"(pretrained on {counted:,} tokens)" in build_model_card(output).text
    del results["base_pretraining_tokens"]  # a run of an older hf_encoders: nothing recorded, the base changed since
    (output / "results.json").write_text(json.dumps(results))
    os.utime(base / "results.json", (time.time() + 60,) * 2)
    assert "pretrained on" not in build_model_card(output).text
    monkeypatch.chdir(base)  # a Hub id is not the run folder it happens to be run from
    assert pretraining_tokens(Path("some-model")) is None and pretraining_tokens(base / "best") == 10 * counted
