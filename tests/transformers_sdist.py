"""transformers' own common model tests, from the sdist of the installed release.

transformers publishes `ModelTesterMixin` (tests/test_modeling_common.py) and `ConfigTester`
(tests/test_configuration_common.py) in its sdist on PyPI, but not three modules they import. Those get stand-ins:

- `tests/generation/test_utils.py` (`GenerationTesterMixin`): `generation_conformance.py` beside this file, our
  equivalents of its checks for encoder-decoder models;
- `tests/exporters/test_export.py` (`ExportTesterMixin`, `ModelTesterMixin`'s base): an empty mixin; its tests
  (torch.export, ONNX, ExecuTorch) are all `@slow` upstream and do not run without RUN_SLOW;
- `tests/utils/test_configuration_utils.py` (`config_common_kwargs`): the common `PreTrainedConfig` arguments, each at
  a value other than its default, which `ConfigTester.check_config_arguments_init` sets and reads back.

    python tests/transformers_sdist.py          # fetch the tests of the installed transformers (`make setup` does)

The tree lands in `.cache/transformers-tests/<version>/transformers_tests` (a package under another name than
`tests`, so that it cannot shadow ours); the tests import it with `import_common_tests()`.
"""

import importlib
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from types import ModuleType

import transformers

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache" / "transformers-tests"
PACKAGE = "transformers_tests"
NEEDED = ("test_modeling_common.py", "test_configuration_common.py")

STANDINS = {
    "generation/test_utils.py": (
        "# Stand-in written by hf_encoders' tests/transformers_sdist.py: the sdist does not ship this module.\n"
        "from generation_conformance import GenerationTesterMixin  # noqa: F401\n"
    ),
    "exporters/test_export.py": (
        "# Stand-in written by hf_encoders' tests/transformers_sdist.py: the sdist does not ship this module; its\n"
        "# export tests are all @slow upstream (they run with RUN_SLOW=1 only).\n"
        "class ExportTesterMixin:\n"
        "    pass\n"
    ),
    "utils/test_configuration_utils.py": (
        "# Stand-in written by hf_encoders' tests/transformers_sdist.py: the sdist does not ship this module.\n"
        "# Common PreTrainedConfig arguments, each at a value other than its default.\n"
        "config_common_kwargs = {\n"
        '    "return_dict": False,\n'
        '    "output_hidden_states": True,\n'
        '    "output_attentions": True,\n'
        '    "dtype": "float16",\n'
        '    "chunk_size_feed_forward": 5,\n'
        '    "architectures": ["BertModel"],\n'
        '    "id2label": {0: "label"},\n'
        '    "label2id": {"label": "0"},\n'
        '    "problem_type": "regression",\n'
        "}\n"
    ),
}


def tests_folder(version: str = transformers.__version__) -> Path:
    return CACHE / version


def fetch(version: str = transformers.__version__) -> Path:
    """Download the sdist of transformers `version` from the package index (pip), keep its tests/*.py as the package
    `transformers_tests` with the stand-ins, and return the folder that holds the package."""
    target = tests_folder(version)
    if (target / PACKAGE / NEEDED[0]).exists():
        return target
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as download:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                "--no-binary",
                ":all:",
                f"transformers=={version}",
                "--dest",
                download,
            ],
            check=True,
        )
        (sdist,) = Path(download).glob("transformers-*.tar.gz")
        package = Path(download) / PACKAGE
        package.mkdir()
        with tarfile.open(sdist) as archive:
            for member in archive.getmembers():
                parts = Path(member.name).parts
                if len(parts) == 3 and parts[1] == "tests" and parts[2].endswith(".py") and member.isfile():
                    (package / parts[2]).write_bytes(archive.extractfile(member).read())
        missing = [name for name in NEEDED if not (package / name).exists()]
        if missing:
            raise FileNotFoundError(f"The sdist of transformers {version} has no tests/{', tests/'.join(missing)}.")
        (package / "__init__.py").write_text("")
        for relative, text in STANDINS.items():
            path = package / relative
            path.parent.mkdir(exist_ok=True)
            (path.parent / "__init__.py").write_text("")
            if path.exists():
                raise FileExistsError(f"The sdist of transformers {version} ships {relative} now: use it instead.")
            path.write_text(text)
        target.mkdir(exist_ok=True)
        package.rename(target / PACKAGE)
    return target


def import_common_tests() -> tuple[ModuleType, ModuleType]:
    """(test_modeling_common, test_configuration_common) of the installed transformers, fetched by `make setup`."""
    folder = tests_folder()
    if not (folder / PACKAGE / NEEDED[0]).exists():
        raise FileNotFoundError(
            f"transformers {transformers.__version__}'s common tests are not in {folder}: run `make setup`, or "
            "`python tests/transformers_sdist.py`, which fetches them from the package index."
        )
    sys.path.insert(0, str(folder))
    sys.path.insert(0, str(Path(__file__).parent))  # the stand-ins import generation_conformance
    return (
        importlib.import_module(f"{PACKAGE}.test_modeling_common"),
        importlib.import_module(f"{PACKAGE}.test_configuration_common"),
    )


if __name__ == "__main__":
    print(fetch())
