"""Tokenizer training: one corpus gives one tokenizer, in every process (issue 39: two runs with one seed differed from
step 10 because each trained its own vocabulary)."""

import json
import os
import subprocess
import sys

import pytest
from conftest import SHARED

from hf_encoders.tokenization import ENCODER_SPECIAL_TOKENS, train_tokenizer

# Trains every kind of tokenizer that `train_tokenizer` offers on real text, and writes each one's `tokenizer.json`
# text to the file named by argv[1]. Before the fix this corpus showed the differences: 120 of the 2,000 WordPiece ids
# (WikiText-2 valid) and 844 of the 1,000 Unigram entries (6,000 Multi30k lines) differed between the two processes.
TRAIN_EVERY_KIND = """
import gzip, json, sys
from pathlib import Path
from hf_encoders.tokenization import train_tokenizer

data = Path(sys.argv[2])
wiki = (data / "wikitext2" / "valid.txt").read_text(encoding="utf-8").splitlines()
pairs = []
for language in ("de", "en"):
    with gzip.open(data / "multi30k" / f"train.{language}.gz", "rt", encoding="utf-8") as handle:
        pairs += handle.read().splitlines()[:3000]
trained = {
    "encoder-wordpiece": train_tokenizer(iter(wiki), 2000, show_progress=False),
    "encoder-bpe": train_tokenizer(iter(wiki), 2000, model="bpe", show_progress=False),
    "seq2seq-unigram": train_tokenizer(
        iter(pairs), 1000, kind="seq2seq", languages=["de", "en"], show_progress=False
    ),
    "seq2seq-bpe": train_tokenizer(
        iter(pairs), 1000, kind="seq2seq", model="bpe", languages=["de", "en"], show_progress=False
    ),
}
Path(sys.argv[1]).write_text(json.dumps({name: t.backend_tokenizer.to_str() for name, t in trained.items()}))
"""


def start_training(output, **environment) -> subprocess.Popen:
    command = [sys.executable, "-c", TRAIN_EVERY_KIND, str(output), str(SHARED)]
    return subprocess.Popen(command, env={**os.environ, **environment})


def differing_entries(first: str, second: str) -> int:
    first, second = json.loads(first)["model"]["vocab"], json.loads(second)["model"]["vocab"]
    if isinstance(first, dict):  # WordPiece and BPE: token -> id
        return sum(second.get(token) != i for token, i in first.items()) + len(set(second) - set(first))
    return sum(a != b for a, b in zip(first, second, strict=False)) + abs(len(first) - len(second))  # Unigram


def test_every_kind_of_tokenizer_trains_to_the_same_json_in_two_processes(tmp_path):
    # Two processes at once, which differ in all that may leak in: hash seeds (Python's, and those of the `tokenizers`
    # hash maps, random in each process anyway) and the number of threads the trainers count and sum with.
    processes = [
        start_training(tmp_path / "first.json", PYTHONHASHSEED="1"),
        start_training(tmp_path / "second.json", PYTHONHASHSEED="2", RAYON_NUM_THREADS="1"),
    ]
    assert [process.wait(timeout=300) for process in processes] == [0, 0]
    first, second = (json.loads((tmp_path / f"{name}.json").read_text()) for name in ("first", "second"))
    assert set(first) == set(second) == {"encoder-wordpiece", "encoder-bpe", "seq2seq-unigram", "seq2seq-bpe"}
    differences = {name: differing_entries(first[name], second[name]) for name in first if first[name] != second[name]}
    assert differences == {}, f"vocabulary entries that differ between the two processes: {differences}"


CORPUS = [
    "The unbelievably quick foxes jumped over the lazy dogs.",
    "Unbelievable: quickness, jumping and laziness.",
    "Dogs and foxes are jumping quickly.",
] * 20


def test_wordpiece_keeps_only_its_own_special_tokens():
    """The `##c` tokens that training puts first (to be the same in every process) stay ordinary tokens: they do not
    split text like special tokens, and decoding without special tokens keeps them."""
    tokenizer = train_tokenizer(CORPUS, 80, show_progress=False)
    assert sorted(tokenizer.all_special_tokens) == sorted(ENCODER_SPECIAL_TOKENS.values())
    assert [tokenizer.convert_ids_to_tokens(i) for i in range(5)] == list(ENCODER_SPECIAL_TOKENS.values())
    pieces = tokenizer.tokenize("unbelievably ##s")
    assert any(piece.startswith("##") for piece in pieces) and "##s" not in pieces  # "##s": "#", "#", "s"
    text = "unbelievably quick foxes"
    assert tokenizer.decode(tokenizer(text)["input_ids"], skip_special_tokens=True) == text


@pytest.mark.parametrize("model", ["wordpiece", "unigram"])
def test_training_twice_in_one_process_gives_one_tokenizer(model):
    kind = "encoder" if model == "wordpiece" else "seq2seq"
    first, second = (train_tokenizer(CORPUS, 60, kind=kind, model=model, show_progress=False) for _ in range(2))
    assert first.backend_tokenizer.to_str() == second.backend_tokenizer.to_str()
