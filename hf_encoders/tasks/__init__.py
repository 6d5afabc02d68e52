"""The training tasks: one folder each, registered by the `TASK` its `__init__.py` declares.

    masked_lm/        pretrain an encoder (hf-encoders pretrain)
    translation/      train and evaluate translation models (train-translation, evaluate-translation)
    classification/   fine-tune sequence and token classifiers (finetune)
    denoising/        denoising / variational autoencoders and anomaly scores (pretrain-denoising, evaluate-anomaly)

A task folder holds its entry points (each a module with `main(argv) -> dict`), its evaluation, and `card.py`, the
section of the model card its runs get. Adding a task is adding a folder here: the command line and the model cards
find it through `TASKS`.
"""

import importlib
import pkgutil
from dataclasses import dataclass, field
from types import ModuleType


@dataclass(frozen=True)
class Task:
    """A training task as the command line and the model cards see it.

    Args:
        name: the folder's name.
        commands: `hf-encoders` command -> the task's module (relative to the folder) whose `main(argv)` it runs.
        scripts: the names its runs record as `script` in config.json (`RunFolder.settings["script"]`).
        summary: one line for `hf-encoders --help`.
    """

    name: str
    commands: dict[str, str]
    scripts: tuple[str, ...]
    summary: str
    card: str = "card"  # the module (relative to the folder) whose `card_section(run)` renders the task's section
    package: str = field(default="", compare=False)

    def module_name(self, relative: str) -> str:
        return f"{self.package}.{relative}"

    def module(self, relative: str) -> ModuleType:
        return importlib.import_module(self.module_name(relative))

    def entry_point(self, command: str):
        """The `main(argv)` that `hf-encoders COMMAND` runs."""
        return self.module(self.commands[command]).main


def _discover() -> dict[str, Task]:
    tasks = {}
    for info in pkgutil.iter_modules(__path__):
        if info.ispkg:
            package = f"{__name__}.{info.name}"
            declared = importlib.import_module(package).TASK
            tasks[declared.name] = Task(**{**declared.__dict__, "package": package})
    return tasks


TASKS: dict[str, Task] = _discover()


def task_for_command(command: str) -> Task:
    for task in TASKS.values():
        if command in task.commands:
            return task
    raise KeyError(command)


def task_for_script(script: str) -> Task:
    """The task whose runs record `script` in their config.json."""
    for task in TASKS.values():
        if script in task.scripts:
            return task
    known = sorted(name for task in TASKS.values() for name in task.scripts)
    raise ValueError(f"No task records runs as script {script!r}; the tasks' scripts are {known}.")


__all__ = ["Task", "TASKS", "task_for_command", "task_for_script"]
