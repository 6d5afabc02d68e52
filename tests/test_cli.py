"""The `hf-encoders` command: every sub-command's --help, one-line errors with a non-zero status, the tokenizer,
translate and the main job (`demo`) end to end in a reduced mode."""

import argparse
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, run_main
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

from hf_encoders.cli import build_parser, main

COMMANDS = [
    "demo",
    "train-tokenizer",
    "pretrain",
    "train-translation",
    "finetune",
    "evaluate-translation",
    "pretrain-denoising",
    "evaluate-anomaly",
    "train-embeddings",
    "evaluate-embeddings",
    "translate",
    "export",
    "convert",
    "card",
    "push",
    "merge-lora",
]
ENTRY_POINT = Path(sys.executable).parent / "hf-encoders"


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_a_complete_help(command, capsys):
    with pytest.raises(SystemExit) as exit:
        main([command, "--help"])
    assert exit.value.code == 0
    text = capsys.readouterr().out
    assert "usage:" in text and len(text.splitlines()) > 5
    if command in ("pretrain", "train-translation", "finetune", "pretrain-denoising"):  # every script setting
        assert "--learning_rate" in text and "--max_steps" in text and "--config" in text


def test_the_console_script_is_installed():
    done = subprocess.run([str(ENTRY_POINT), "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and all(command in done.stdout for command in COMMANDS)


@pytest.mark.parametrize(
    "argv, status, message",
    [
        (["frobnicate"], 2, "invalid choice: 'frobnicate'"),
        (["push"], 2, "the following arguments are required: run_dir, repo_id"),
        (["translate", "some/model", "Hallo"], 2, "the following arguments are required: --tgt-lang"),
        (["card", "run", "--colour", "red"], 2, "unrecognized arguments: --colour red"),
        (["pretrain", "--config", "mlm_huge"], 2, "--config mlm_huge: no such file, nor a packaged config"),
        (["pretrain", "--max_steps", "many"], 1, "invalid int value: 'many'"),
        (["demo", "--output_dir", "x"], 2, "--output_dir: give the demo's own"),
        (["card", "no/such/run"], 1, "No run folder 'no/such/run'"),
        (["translate", "m", "--tgt-lang", "de", "--file", "no/such/file"], 2, "--file no/such/file: no such file"),
        (["push", "run", "org/name", "--to", "/some/folder"], 2, "unrecognized arguments: --to /some/folder"),
        (["push", "run", "org/name", "--dry"], 2, "unrecognized arguments: --dry"),
        (["--deb", "card", "run"], 2, "unrecognized arguments: --deb"),
        (
            ["translate", "/no/such/model", "Hallo", "--tgt-lang", "de"],
            2,
            "/no/such/model: no such model folder, and not a Hub id (ORG/NAME) either",
        ),
        (["translate", "./model", "Hallo", "--tgt-lang", "de"], 2, "./model: no such model folder"),
        (["translate", "runs/demo/bst", "Hallo", "--tgt-lang", "de"], 2, "runs/demo/bst: no such model folder"),
    ],
)
def test_bad_arguments_give_one_line_and_a_non_zero_status(argv, status, message, capsys):
    assert main(argv) == status
    error = capsys.readouterr().err
    assert len(error.strip().splitlines()) == 1 and error.startswith("hf-encoders") and message in error, error


def all_parsers(parser: argparse.ArgumentParser):
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from all_parsers(sub)


def test_no_parser_takes_abbreviations():
    parsers = list(all_parsers(build_parser()))
    assert len(parsers) == len(COMMANDS) + 1 and not any(parser.allow_abbrev for parser in parsers)


def test_translate_tells_a_missing_local_folder_from_a_hub_id(tmp_path, monkeypatch, capsys):
    (tmp_path / "runs").mkdir()
    (tmp_path / "notes.txt").write_text("not a model")
    monkeypatch.chdir(tmp_path)
    for model in ("runs/typo", "notes.txt"):  # partly there, or a file: not a Hub id
        assert main(["translate", model, "Hallo", "--tgt-lang", "de"]) == 2
        assert f"{model}: no such model folder" in capsys.readouterr().err
    asked = []

    def from_pretrained(name, **kwargs):
        asked.append(name)
        raise OSError("offline")

    monkeypatch.setattr(AutoTokenizer, "from_pretrained", from_pretrained)  # the first to ask the Hub
    monkeypatch.setattr(AutoModelForSeq2SeqLM, "from_pretrained", from_pretrained)
    assert main(["translate", "some-org/some-model", "Hallo", "--tgt-lang", "de"]) == 1
    assert asked == ["some-org/some-model"] and "offline" in capsys.readouterr().err


def test_translate_refuses_a_language_the_tokenizer_has_no_tag_for(translation_run, capsys):
    assert main(["translate", str(translation_run[0] / "best"), "Hallo", "--tgt-lang", "xx"]) == 1
    error = capsys.readouterr().err
    assert "no '<2xx>' tag" in error and "de, en" in error, error


def test_a_resumed_training_command_says_so_on_stderr(mlm_corpus, tmp_path):
    """The training loop's INFO lines ("Resumed from ...") reach the command's stderr; other libraries' do not."""
    run = tmp_path / "run"
    flags = [
        "pretrain",
        "--config",
        "mlm_tiny",
        "--train_data",
        str(mlm_corpus),
        "--train_split",
        "train",
        "--eval_data",
        f"corpus={mlm_corpus}:validation",
        "--output_dir",
        str(run),
        "--vocab_size",
        "200",
        "--block_size",
        "64",
        "--max_steps",
        "2",
        "--eval_every",
        "2",
        "--save_every",
        "2",
        "--num_proc",
        "1",
        "--best_metric",
        "corpus/loss",
    ]
    assert run_main(main, *flags).result == 0
    done = subprocess.run(
        [str(ENTRY_POINT), *flags, "--max_steps", "3", "--resume", "true"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert f"INFO hf_encoders.training: Resumed from {run / 'checkpoint-2'} (step 2)" in done.stderr, done.stderr
    assert "INFO pretrain_mlm: done:" in done.stderr
    others = [
        line
        for line in done.stderr.splitlines()
        if line.startswith("INFO ") and not line.startswith(("INFO hf_encoders", "INFO pretrain_mlm"))
    ]
    assert not others, others


def test_debug_shows_the_traceback():
    with pytest.raises(FileNotFoundError, match="No run folder"):
        main(["--debug", "card", "no/such/run"])


def test_train_tokenizer_on_parallel_data_and_on_a_corpus(handful, mlm_corpus, tmp_path, capsys):
    assert (
        main(
            [
                "train-tokenizer",
                str(handful),
                str(tmp_path / "joint"),
                "--kind",
                "seq2seq",
                "--languages",
                "de",
                "en",
                "--vocab-size",
                "100",
            ]
        )
        == 0
    )
    joint = AutoTokenizer.from_pretrained(tmp_path / "joint")
    assert {"<2de>", "<2en>"} <= set(joint.get_vocab()) and len(joint) <= 100
    assert main(["train-tokenizer", str(mlm_corpus), str(tmp_path / "wordpiece"), "--vocab-size", "80"]) == 0
    wordpiece = AutoTokenizer.from_pretrained(tmp_path / "wordpiece")
    assert wordpiece.mask_token == "[MASK]" and wordpiece("a dull movie")["input_ids"][0] == wordpiece.cls_token_id
    assert "saved to" in capsys.readouterr().out
    assert (
        main(["train-tokenizer", str(handful), str(tmp_path / "bad"), "--kind", "seq2seq", "--languages", "de"]) == 2
    )


def test_translate_from_arguments_a_file_and_stdin(translation_run, handful, tmp_path, capsys, monkeypatch):
    model = str(translation_run[0] / "best")
    sources = (handful / "test.de").read_text().splitlines()[:3]
    references = (handful / "test.en").read_text().splitlines()[:3]
    common = ["--tgt-lang", "en", "--num-beams", "1"]
    assert main(["translate", model, *sources, *common]) == 0
    assert capsys.readouterr().out.splitlines() == references
    (tmp_path / "sources.txt").write_text("\n".join(sources) + "\n")
    assert main(["translate", model, "--file", str(tmp_path / "sources.txt"), *common]) == 0
    assert capsys.readouterr().out.splitlines() == references
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n".join(sources)))
    assert main(["translate", model, *common]) == 0
    assert capsys.readouterr().out.splitlines() == references
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n\n"))
    assert main(["translate", model, *common]) == 2
    assert "Nothing to translate" in capsys.readouterr().err


def test_the_demo_runs_end_to_end_and_its_summary_names_real_files(tmp_path):
    """The main job with its own config and data, reduced to a few steps and sentences: tokenizer, training, test
    BLEU with beam search, card, push to a local Hub it starts and stops, reload in a fresh process, translate."""
    output = tmp_path / "demo"
    done = subprocess.run(
        [
            str(ENTRY_POINT),
            "demo",
            "--output-dir",
            str(output),
            "--max_steps",
            "3",
            "--max_train_examples",
            "500",
            "--vocab_size",
            "500",
            "--eval_max_examples",
            "8",
            "--test_max_examples",
            "8",
            "--max_new_tokens",
            "12",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    summary = json.loads((output / "demo_summary.json").read_text())
    for key in ("run_dir", "model", "card"):
        assert Path(summary[key]).exists(), key
    assert summary["train_steps"] == 3 and summary["test"]["examples"] == 8 and summary["test"]["num_beams"] == 4
    assert "local Hub" in summary["pushed_to"] and {"README.md", "model.safetensors"} <= set(summary["pushed_files"])
    assert summary["reloaded_class"].startswith("transformers_modules")  # loaded from the pushed repository's code
    assert len(summary["translations"]) == 3
    assert "test BLEU" in done.stdout and str(output / "demo_summary.json") in done.stdout
    assert "Multi30k" in (output / "README.md").read_text()  # the card, from the shared data's SOURCE.md


def test_the_demo_can_push_to_a_folder_and_replaces_only_a_finished_demo(handful, tmp_path):
    output, folder = tmp_path / "demo", tmp_path / "exported"

    def demo(push_to: Path) -> subprocess.CompletedProcess:
        return subprocess.run(
            [
                str(ENTRY_POINT),
                "demo",
                "--config",
                "translation_tiny",
                "--data",
                str(handful),
                "--src",
                "de",
                "--tgt",
                "en",
                "--output-dir",
                str(output),
                "--push-to",
                str(push_to),
                "--max_steps",
                "2",
                "--vocab_size",
                "120",
                "--max_new_tokens",
                "8",
            ],
            capture_output=True,
            text=True,
            timeout=600,
            cwd=ROOT,
        )

    done = demo(folder)
    assert done.returncode == 0, done.stderr[-4000:]
    summary = json.loads((output / "demo_summary.json").read_text())
    assert summary["pushed_to"] == str(folder)
    assert sorted(path.name for path in folder.iterdir()) == summary["pushed_files"]
    assert {"README.md", "model.safetensors", "modeling_seq2seq.py", "eval_results.json"} <= set(
        summary["pushed_files"]
    )
    again = demo(tmp_path / "exported_again")  # a finished demo is replaced ...
    assert again.returncode == 0, again.stderr[-4000:]
    (output / "demo_summary.json").unlink()  # ... any other run (here: an unfinished demo) is refused
    refused = demo(tmp_path / "exported_never")
    assert refused.returncode != 0 and f"output_dir {output} already holds a run" in refused.stderr
