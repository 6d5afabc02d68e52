import contextlib
import gzip
import importlib
import io
import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import pytest
import torch
from accelerate.state import AcceleratorState, GradientState
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import PreTrainedTokenizerFast

import hf_encoders  # noqa: F401  (registers the Auto classes)
from hf_encoders import EncoderConfig
from hf_encoders.tasks.harness import CONFIGS  # the packaged training configs

torch.set_num_threads(2)

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
# training/<script>.py -> the task module whose main it runs
SCRIPT_MODULES = {
    "pretrain_mlm": "hf_encoders.tasks.masked_lm.train",
    "train_translation": "hf_encoders.tasks.translation.train",
    "evaluate_translation": "hf_encoders.tasks.translation.evaluate",
    "finetune_classification": "hf_encoders.tasks.classification.finetune",
    "pretrain_denoising": "hf_encoders.tasks.denoising.pretrain",
    "evaluate_anomaly": "hf_encoders.tasks.denoising.anomaly",
    "train_embeddings": "hf_encoders.tasks.embeddings.train",
}

WORDS = "the a cat dog sat on mat ran in park big small red blue and with".split()
SPECIALS = ["[PAD]", "[CLS]", "[SEP]", "[MASK]", "[UNK]"]


# Put first in a script run with `python -c`: it makes `hf_encoders` unimportable (the source tree is on sys.path),
# so that whatever such a script loads must come from a saved folder's own code (trust_remote_code).
REFUSE_HF_ENCODERS = """
import importlib.abc, json, sys

class RefuseHfEncoders(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "hf_encoders":
            raise ModuleNotFoundError(f"No module named {name!r} (refused by the test)")

sys.meta_path.insert(0, RefuseHfEncoders())
"""


def run_without_the_package(script: str, *args, modules: Path, python: str = sys.executable) -> dict:
    """Run `script` (which begins with REFUSE_HF_ENCODERS) as `python -c script ARGS`, offline, with its remote code
    kept in the folder `modules`; return the JSON object that its last line prints."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(modules)}
    done = subprocess.run(
        [python, "-c", script, *map(str, args)], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, f"{python}:\n{done.stderr[-3000:]}"
    return json.loads(done.stdout.strip().splitlines()[-1])


class HostSyncs(TorchDispatchMode):
    """Counts, while it is entered, what would make the host wait for a GPU: reading tensor values on the host
    (`.item()`, `bool()`, `int()`, `.tolist()`) and ops whose output's size depends on the values (`nonzero`,
    boolean indexing, `masked_select`, ...). On a CPU nothing waits; the count is what a GPU would pay. `ops` lists
    them in order."""

    VALUE_DEPENDENT = {
        torch.ops.aten._local_scalar_dense.default,
        torch.ops.aten.nonzero.default,
        torch.ops.aten.masked_select.default,
        torch.ops.aten.equal.default,
        torch.ops.aten.repeat_interleave.Tensor,
        torch.ops.aten._unique2.default,
        torch.ops.aten.unique_consecutive.default,
    }

    def __init__(self):
        super().__init__()
        self.ops: list[str] = []

        def counted_tolist(tensor: torch.Tensor):  # `.tolist()` reads the values without an aten op on a CPU
            self.ops.append("Tensor.tolist")
            return torch._C.TensorBase.tolist(tensor)

        self._tolist = mock.patch.object(torch.Tensor, "tolist", counted_tolist)

    def __enter__(self):
        self._tolist.start()
        return super().__enter__()

    def __exit__(self, *exc):
        self._tolist.stop()
        return super().__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        boolean_index = func is torch.ops.aten.index.Tensor and any(
            index is not None and index.dtype == torch.bool for index in args[1]
        )
        if func in self.VALUE_DEPENDENT or boolean_index:
            self.ops.append(str(func))
        return func(*args, **(kwargs or {}))

    @property
    def count(self) -> int:
        return len(self.ops)


@contextlib.contextmanager
def token_rows(module: torch.nn.Module):
    """The shapes (without the hidden size) of what `module` is given while the block runs: (1, real tokens) where
    the model unpadded the batch, (batch, sequence) where it did not."""
    shapes = []
    handle = module.register_forward_hook(lambda _, args, output: shapes.append(tuple(args[0].shape[:-1])))
    try:
        yield shapes
    finally:
        handle.remove()


def tiny_config(**overrides) -> EncoderConfig:
    values = dict(
        vocab_size=99,
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=48,
        max_position_embeddings=64,
        local_attention=4,
        global_attn_every_n_layers=2,
    )
    values.update(overrides)
    return EncoderConfig(**values)


def random_batch(config: EncoderConfig, lengths=(10, 7, 3), seed: int = 0):
    """Right-padded ids and mask for sequences of the given lengths (no special ids among the tokens)."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, config.vocab_size, (len(lengths), max(lengths)), generator=generator)
    mask = torch.zeros_like(ids)
    for row, length in enumerate(lengths):
        mask[row, :length] = 1
    return ids.masked_fill(mask == 0, config.pad_token_id), mask


def pack(ids: torch.Tensor, mask: torch.Tensor):
    """The padding-free form of a padded batch: one row of tokens and restarting position ids."""
    lengths = mask.sum(1).tolist()
    flat = torch.cat([row[:n] for row, n in zip(ids, lengths, strict=True)])[None]
    positions = torch.cat([torch.arange(n) for n in lengths])[None]
    return flat, positions, lengths


def unpad(padded: torch.Tensor, lengths) -> torch.Tensor:
    return torch.cat([row[:n] for row, n in zip(padded, lengths, strict=True)])[None]


def pytest_collection_modifyitems(config, items):
    """The CTranslate2 tests run last. CTranslate2 serving with one thread per translation (`CTranslate2Model`'s
    default) leaves the process in a state where torch's compiled CPU flex-attention kernel, run later in the same
    process, aborts it (torch 2.13, ctranslate2 4.8.5; every other compiled kernel runs, and with two threads per
    translation the kernel runs too): the flex-attention tests of test_modeling_*.py must not come after them. The
    README says to serve CTranslate2 in a process of its own."""
    items.sort(key=lambda item: item.path.name == "test_export_ctranslate2.py")


@pytest.fixture
def tokenizer() -> PreTrainedTokenizerFast:
    return wordpiece_tokenizer()


def wordpiece_tokenizer() -> PreTrainedTokenizerFast:
    """A small WordPiece tokenizer whose ids match `tiny_config`'s special tokens ([PAD]=0 ... [UNK]=4)."""
    vocab = {token: i for i, token in enumerate(SPECIALS + WORDS)}
    backend = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 1), ("[SEP]", 2)]
    )
    backend.decoder = decoders.WordPiece()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        unk_token="[UNK]",
        model_input_names=["input_ids", "attention_mask"],
    )


@dataclass
class ScriptRun:
    result: object  # what `main` returned
    stdout: str
    stderr: str


def run_main(main: Callable[[list[str]], object], *flags: str) -> ScriptRun:
    """Run a command's `main(FLAGS)` from the repository root in this process, as its command line would run in a
    fresh one (which spends about 6 s here importing torch and transformers). The accelerate state is cleared before
    and after, so that each run sets up its Accelerator (precision, processes) afresh."""
    stdout, stderr = io.StringIO(), io.StringIO()
    program = Path(sys.modules[main.__module__].__file__).relative_to(ROOT)  # what the run records as its command
    AcceleratorState._reset_state(reset_partial_state=True)
    try:
        with contextlib.chdir(ROOT), contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            with mock.patch.object(sys, "argv", [str(program), *flags]):
                result = main(list(flags))
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
    return ScriptRun(result, stdout.getvalue(), stderr.getvalue())


def run_script(script: str, *flags: str) -> ScriptRun:
    """`python training/<script> FLAGS`, in this process: the main of the task module the script runs."""
    return run_main(importlib.import_module(SCRIPT_MODULES[Path(script).stem]).main, *flags)


@pytest.fixture(scope="session")
def handful(tmp_path_factory) -> Path:
    """Eight short Multi30k pairs as the train, val and test split alike, with a SOURCE.md like the shared data's."""
    folder = tmp_path_factory.mktemp("handful")
    lines = {}
    for language in ("de", "en"):
        with gzip.open(SHARED / "multi30k" / f"train.{language}.gz", "rt", encoding="utf-8") as handle:
            lines[language] = [next(handle).strip() for _ in range(40)]
    shortest = sorted(range(40), key=lambda i: len(lines["de"][i]) + len(lines["en"][i]))[:8]
    for split in ("train", "val", "test"):
        for language in ("de", "en"):
            (folder / f"{split}.{language}").write_text("".join(lines[language][i] + "\n" for i in shortest))
    (folder / "SOURCE.md").write_text(
        "# Handful (eight Multi30k pairs) — for tests\n\n**Source:** the first Multi30k training pairs. Picked "
        "by length.\n\n**License / terms:** as Multi30k's.\n"
    )
    return folder


@pytest.fixture(scope="session")
def translation_run(handful, tmp_path_factory) -> tuple[Path, ScriptRun]:
    """A tiny model trained by training/train_translation.py until it knows the handful by heart."""
    output = tmp_path_factory.mktemp("translation") / "run"
    done = run_script(
        "train_translation.py",
        "--config",
        str(CONFIGS / "translation_tiny.yaml"),
        "--data",
        str(handful),
        "--output_dir",
        str(output),
        "--vocab_size",
        "120",
        "--max_steps",
        "150",
        "--num_epochs",
        "0",
        "--per_device_batch_size",
        "8",
        "--eval_every",
        "50",
        "--warmup_steps",
        "10",
        "--learning_rate",
        "5e-3",  # every seed tried (12) reaches BLEU 100 by step 100
    )
    return output, done


@pytest.fixture(scope="session")
def mlm_corpus(tmp_path_factory) -> Path:
    corpus = tmp_path_factory.mktemp("corpus")
    sentences = [
        "the film was a great joy to watch",
        "a dull and tedious movie",
        "the actors were wonderful",
        "i would not watch this again",
        "a story about a dog and his boy",
        "the ending made me cry",
    ]
    (corpus / "train.txt").write_text(
        "".join(f"{sentences[i % 6]} . {sentences[(i * 5) % 6]} .\n" for i in range(400))
    )
    return corpus


@pytest.fixture(scope="session")
def mlm_run(mlm_corpus, tmp_path_factory) -> Path:
    """A tiny encoder pretrained by training/pretrain_mlm.py for 12 steps on `mlm_corpus`."""
    output = tmp_path_factory.mktemp("mlm") / "run"
    run_script(
        "pretrain_mlm.py",
        "--config",
        str(CONFIGS / "mlm_tiny.yaml"),
        "--train_data",
        str(mlm_corpus),
        "--train_split",
        "train",
        "--eval_data",
        f"corpus={mlm_corpus}:validation",
        "--output_dir",
        str(output),
        "--vocab_size",
        "200",
        "--block_size",
        "64",
        "--max_steps",
        "12",
        "--eval_every",
        "6",
        "--save_every",
        "6",
        "--num_proc",
        "1",
        "--best_metric",
        "corpus/loss",
    )
    return output
