"""Print pip constraints that pin every dependency in pyproject.toml (and its extras but `dev`) at its declared floor (`name>=X` -> `name==X`),
for the floor environment of the version matrix (.ci/matrix). torch's line too (`torch==2.13`): .ci/matrix installs
it first, from it (here the CPU wheel in /opt/wheels, which pip prefers to PyPI's CUDA build of the same release)."""

import re
import tomllib
from pathlib import Path

project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
extras = [
    requirement for name, group in project["optional-dependencies"].items() if name != "dev" for requirement in group
]
for requirement in project["dependencies"] + extras:
    match = re.fullmatch(r"([A-Za-z0-9_.-]+)>=([^,;]+)(,<[^,;]+)?", requirement)
    if match is None:
        raise SystemExit(f"pyproject.toml: {requirement!r} declares no floor (`name>=version`) to test.")
    print(f"{match.group(1)}=={match.group(2)}")
