"""training/train_translation.py end to end: a tiny model learns a handful of Multi30k pairs by heart, MarianMTModel
trains through the same script, and bad input is refused with a clear message."""

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, MarianMTModel

from hf_encoders import Seq2SeqForConditionalGeneration, translate

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
SCRIPT = ROOT / "training" / "train_translation.py"
TINY = ["--config", str(ROOT / "training" / "configs" / "translation_tiny.yaml")]

sys.path.insert(0, str(ROOT / "training"))
import train_translation  # noqa: E402


def multi30k_lines(language: str, count: int) -> list[str]:
    with gzip.open(SHARED / "multi30k" / f"train.{language}.gz", "rt", encoding="utf-8") as handle:
        return [next(handle).strip() for _ in range(count)]


@pytest.fixture(scope="module")
def handful(tmp_path_factory) -> Path:
    """Eight short Multi30k pairs as the train, val and test split alike."""
    folder = tmp_path_factory.mktemp("handful")
    german, english = multi30k_lines("de", 40), multi30k_lines("en", 40)
    shortest = sorted(range(40), key=lambda i: len(german[i]) + len(english[i]))[:8]
    for split in ("train", "val", "test"):
        for language, lines in (("de", german), ("en", english)):
            (folder / f"{split}.{language}").write_text("".join(lines[i] + "\n" for i in shortest))
    return folder


def run(*flags: str) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, str(SCRIPT), *TINY, *flags], capture_output=True, text=True, timeout=600,
                          cwd=ROOT)  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    return done


def test_a_tiny_model_learns_a_handful_of_pairs_until_greedy_reproduces_them(handful, tmp_path):
    output = tmp_path / "run"
    done = run("--data", str(handful), "--output_dir", str(output), "--vocab_size", "120", "--max_steps", "150",
               "--num_epochs", "0", "--per_device_batch_size", "8", "--eval_every", "50", "--warmup_steps", "10",
               "--learning_rate", "3e-3")  # fmt: skip
    references = (handful / "test.en").read_text().splitlines()

    results = json.loads((output / "results.json").read_text())
    assert results["train"]["steps"] == 150 and results["train_pairs"] == 8
    assert results["test"]["bleu"]["score"] == pytest.approx(100.0)  # beam search on test, from the best model
    assert results["test"]["bleu"]["signature"].startswith("nrefs:1|case:mixed")
    assert (output / "best" / "hypotheses.test.de-en.en").read_text().splitlines() == references
    assert json.loads((output / "best" / "scores.test.de-en.json").read_text())["num_beams"] == 2
    rows = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    validation = [row["validation/bleu"] for row in rows if "validation/bleu" in row]
    assert len(validation) == 3 and max(validation) == pytest.approx(100.0)  # greedy BLEU at steps 50, 100, 150
    assert {"validation/loss", "validation/chrf", "validation/bleu_lowercased"} <= set(rows[-1])
    assert "test bleu " in done.stdout

    model = AutoModelForSeq2SeqLM.from_pretrained(output / "best")
    tokenizer = AutoTokenizer.from_pretrained(output / "best")
    assert isinstance(model, Seq2SeqForConditionalGeneration)
    sources = (handful / "test.de").read_text().splitlines()
    assert translate(model, tokenizer, sources, "en", num_beams=1, show_progress=False) == references


def test_marian_trains_through_the_same_script(handful, tmp_path):
    output = tmp_path / "marian"
    run("--data", str(handful), "--output_dir", str(output), "--vocab_size", "120", "--architecture", "marian",
        "--max_steps", "4", "--num_epochs", "0", "--eval_every", "2", "--max_new_tokens", "8")  # fmt: skip
    results = json.loads((output / "results.json").read_text())
    assert results["architecture"] == "marian" and results["train"]["steps"] == 4
    model = AutoModelForSeq2SeqLM.from_pretrained(output / "best")
    assert isinstance(model, MarianMTModel) and model.config.d_model == 64 and model.config.encoder_layers == 2
    assert (
        model.generation_config.decoder_start_token_id == AutoTokenizer.from_pretrained(output / "best").bos_token_id
    )
    assert len((output / "best" / "hypotheses.test.de-en.en").read_text().splitlines()) == 8


def write_pairs(folder: Path, files: dict[str, list[str]]) -> Path:
    folder.mkdir()
    for name, lines in files.items():
        (folder / name).write_text("".join(line + "\n" for line in lines))
    return folder


@pytest.mark.parametrize(
    "flags, files, message",
    [
        (["--src", "xx"], None, "has no 'xx' side: its files give languages cs, de, en, fr"),
        (["--src", "de", "--tgt", "en"], {"train.de": ["ein Hund"] * 3, "train.en": ["a dog"] * 2},
         "Parallel files differ in length"),
        (["--src", "de", "--tgt", "en"], {"train.de": ["ein Hund"] * 30, "train.en": ["a dog"] * 30},
         "has no 'test' split of de-en pairs"),
        (["--src", "de", "--tgt", "en"], {"train.de": ["ein Hund"] * 30, "train.fr": ["un chien"] * 30},
         "has no 'en' side: its files give languages de, fr"),
        (["--architecture", "t5"], None, "architecture='t5': choose one of hf_seq2seq, marian"),
    ],
)  # fmt: skip
def test_bad_input_is_refused_with_a_clear_message(flags, files, message, tmp_path):
    data = write_pairs(tmp_path / "data", files) if files else SHARED / "multi30k"
    with pytest.raises(ValueError) as error:
        train_translation.main([*TINY, "--data", str(data), "--output_dir", str(tmp_path / "run"), *flags])
    assert message in str(error.value)
