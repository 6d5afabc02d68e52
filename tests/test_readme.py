"""The README's examples work as written.

Every ```python block runs, in a fresh interpreter and a scratch folder, where a tiny translation model stands at the
path the README names (runs/translation_tiny/best). Every command line of a ```bash block that starts with
`hf-encoders`, `python training/`, `accelerate launch` or `make` names a real command, script, Makefile target, config
and flags: it is run with `--help` appended (which parses the line and resolves `--config NAME`, but trains
nothing), and each of its `--flags` must be one that `--help` lists.
"""

import contextlib
import io
import json
import os
import re
import runpy
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from hf_encoders import Seq2SeqConfig, Seq2SeqForConditionalGeneration, cli, train_tokenizer
from hf_encoders.tasks.harness import CONFIGS

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
TRANSLATION_MODEL = "runs/translation_tiny/best"  # where the README's translation example loads its model from


def readme_blocks(language: str) -> list[tuple[int, str]]:
    """(line number, code) of each fenced block of `language` in the README."""
    text = README.read_text(encoding="utf-8")
    return [
        (text.count("\n", 0, match.start()) + 1, match.group(1))
        for match in re.finditer(rf"^```{language}\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL)
    ]


def readme_commands() -> list[tuple[int, list[str]]]:
    """(line number, words) of the command lines to check in the README's bash blocks (continuations joined,
    comments and leading `VAR=value` settings dropped)."""
    commands = []
    for start, block in readme_blocks("bash"):
        lines = block.splitlines()
        for offset, line in enumerate(lines):
            if offset and lines[offset - 1].endswith("\\"):
                continue  # a continuation, read with the line it continues
            number, following = start + 1 + offset, iter(lines[offset + 1 :])
            while line.endswith("\\"):
                line = line[:-1] + " " + next(following, "")
            words = shlex.split(line, comments=True)
            while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", words[0]):
                words = words[1:]
            checked = words[:1] in (["hf-encoders"], ["make"]) or words[:2] == ["accelerate", "launch"]
            if checked or (words[:1] == ["python"] and len(words) > 1 and words[1].startswith("training/")):
                commands.append((number, words))
    return commands


PYTHON_BLOCKS = readme_blocks("python")
COMMANDS = readme_commands()

# Runs each block in a namespace of its own, in order, and reports the failures as one JSON line.
RUNNER = """
import json, sys, traceback
failures = []
for line, code in json.loads(sys.argv[1]):
    try:
        exec(compile(code, f"README.md (the block at line {line})", "exec"), {"__name__": "__main__"})
    except BaseException:
        failures.append(traceback.format_exc())
print(json.dumps(failures))
"""


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    """A folder to run the examples in, holding an (untrained) tiny German-English model at TRANSLATION_MODEL, as
    `hf-encoders train-translation --config translation_tiny` leaves one."""
    folder = tmp_path_factory.mktemp("readme")
    pairs = ["Ein Hund rennt durch den Park.", "A dog runs through the park.", "Zwei Hunde spielen im Schnee."]
    tokenizer = train_tokenizer(pairs * 20, 120, kind="seq2seq", languages=["de", "en"], show_progress=False)
    config = Seq2SeqConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=1,
        num_decoder_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=256,  # hf_encoders.translate asks for up to 128 new tokens
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.bos_token_id,
    )
    model = Seq2SeqForConditionalGeneration(config)
    model.generation_config.max_new_tokens = 8  # an untrained model would otherwise write to the length limit
    model.save_pretrained(folder / TRANSLATION_MODEL)
    tokenizer.save_pretrained(folder / TRANSLATION_MODEL)
    return folder


def test_readme_has_examples():
    assert len(PYTHON_BLOCKS) >= 3 and len(COMMANDS) >= 10, "the README's examples were not found"


def test_python_examples_run(scratch):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(scratch / "modules")}
    env["TOKENIZERS_PARALLELISM"] = "false"
    command = [sys.executable, "-c", RUNNER, json.dumps(PYTHON_BLOCKS)]
    done = subprocess.run(command, cwd=scratch, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    failures = json.loads(done.stdout.strip().splitlines()[-1])
    assert not failures, "\n\n".join(failures)


def help_of(run) -> str:
    """What `run()` prints before it exits with status 0 (as `--help` does)."""
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            status = run()
        except SystemExit as exit:
            status = exit.code
    assert status in (0, None), f"exit status {status}: {stderr.getvalue()[-2000:]}"
    return stdout.getvalue()


@pytest.mark.parametrize(
    ("line", "words"), COMMANDS, ids=[f"line{line}-{'-'.join(words[:2])}" for line, words in COMMANDS]
)
def test_shell_commands_name_real_things(line, words, monkeypatch):
    monkeypatch.chdir(ROOT)  # the README's commands run from the repository root
    if words[0] == "make":
        targets = re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), flags=re.MULTILINE)
        assert set(words[1:]) <= set(targets), f"README.md:{line}: no Makefile target {words[1:]}"
        return
    if words[0] == "accelerate":
        from accelerate.commands.launch import launch_command_parser

        launch = launch_command_parser().parse_args(words[2:])
        if launch.config_file:
            assert Path(launch.config_file).is_file(), f"README.md:{line}: no accelerate config {launch.config_file}"
        words = ["python", launch.training_script, *launch.training_script_args]
    arguments = words[1:] if words[0] == "hf-encoders" else words[2:]
    for flag, value in zip(arguments, arguments[1:], strict=False):
        if flag == "--config" and not Path(value).is_file():
            assert (CONFIGS / f"{value}.yaml").is_file(), f"README.md:{line}: no packaged config {value!r}"
    if words[0] == "hf-encoders":
        text = help_of(lambda: cli.main([*arguments, "--help"]))
    else:
        script = Path(words[1])
        assert script.is_file(), f"README.md:{line}: no script {script}"
        monkeypatch.setattr(sys, "argv", [str(script), *arguments, "--help"])
        text = help_of(lambda: runpy.run_path(str(script), run_name="__main__"))
    for flag in (word.split("=")[0] for word in arguments if word.startswith("--")):
        assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text), f"README.md:{line}: {flag} is not a flag"
