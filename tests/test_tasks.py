"""The task registry: every task's commands, scripts and card section resolve, and a new task is one folder that
the command line and the model cards find without being edited."""

import importlib
import json
import sys
import textwrap

import pytest

from hf_encoders import cli, tasks

TOY_INIT = '''
"""A toy task for the registry test."""

from .. import Task

TASK = Task(name="toy", commands={"toy-run": "run"}, scripts=("toy_script",), summary="a toy task")
'''
TOY_RUN = '''
"""Write the arguments it was given.

    hf-encoders toy-run --output FILE
"""

import json
import sys


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    with open(argv[argv.index("--output") + 1], "w") as file:
        json.dump(argv, file)
    return {"argv": argv}
'''


def test_every_task_resolves_its_commands_scripts_and_card_section():
    assert set(tasks.TASKS) == {"masked_lm", "translation", "classification", "denoising", "embeddings"}
    commands = [command for task in tasks.TASKS.values() for command in task.commands]
    scripts = [script for task in tasks.TASKS.values() for script in task.scripts]
    assert len(commands) == len(set(commands)) and len(scripts) == len(set(scripts))
    for task in tasks.TASKS.values():
        for command in task.commands:
            assert tasks.task_for_command(command) is task
            assert callable(task.entry_point(command))
        for script in task.scripts:
            assert tasks.task_for_script(script) is task
        assert callable(task.module(task.card).card_section)
    with pytest.raises(ValueError, match=r"No task records runs as script 'nope'.*pretrain_mlm"):
        tasks.task_for_script("nope")


def test_a_new_task_is_one_folder_that_the_command_line_finds(tmp_path, monkeypatch):
    folder = tmp_path / "toy"
    folder.mkdir()
    (folder / "__init__.py").write_text(textwrap.dedent(TOY_INIT))
    (folder / "run.py").write_text(textwrap.dedent(TOY_RUN))
    monkeypatch.setattr(tasks, "__path__", [*tasks.__path__, str(tmp_path)])
    discovered = tasks._discover()
    assert discovered["toy"].package == "hf_encoders.tasks.toy"
    monkeypatch.setitem(tasks.TASKS, "toy", discovered["toy"])
    try:
        assert tasks.task_for_script("toy_script").name == "toy"
        assert "toy (toy-run): a toy task" in cli.build_parser().format_help()
        output = tmp_path / "argv.json"
        assert cli.main(["toy-run", "--output", str(output), "--x", "1"]) == 0
        assert json.loads(output.read_text()) == ["--output", str(output), "--x", "1"]
    finally:
        for name in [name for name in sys.modules if name.startswith("hf_encoders.tasks.toy")]:
            del sys.modules[name]
    importlib.invalidate_caches()
