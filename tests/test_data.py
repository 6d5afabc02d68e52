"""Tokenizers, loading of the shared data sets, packing, collators and the bad-data cases."""

import gzip
import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import datasets.config
import pytest
import torch
from datasets import Dataset, DatasetInfo, SplitDict, SplitInfo
from datasets.arrow_writer import ArrowWriter
from huggingface_hub import constants
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from hf_encoders import Seq2SeqConfig, Seq2SeqForConditionalGeneration
from hf_encoders.data import (
    MLMCollator,
    Seq2SeqCollator,
    build_dataloader,
    load_monolingual_dataset,
    load_parallel_dataset,
    load_text_dataset,
    pack_for_mlm,
    prepare_denoising,
    prepare_translation,
)
from hf_encoders.tokenization import train_tokenizer

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
CORPUS = [
    "A dog runs through the park.",
    "Two young, White males are outside near many bushes.",
    "Several men in hard hats are operating a giant pulley system.",
    "A little girl climbing into a wooden playhouse.",
    "The cat sits on the mat, watching the birds outside.",
] * 40


@pytest.fixture(scope="module")
def multi30k():
    assert SHARED.is_dir(), f"the shared data sets are expected at {SHARED}"
    return load_parallel_dataset(SHARED / "multi30k", "en", "de")


@pytest.fixture(scope="module")
def encoder_tokenizer():
    return train_tokenizer(CORPUS, 120, show_progress=False)


@pytest.fixture(scope="module")
def joint_tokenizer(multi30k):
    texts = list(multi30k["train"]["en"][:3000]) + list(multi30k["train"]["de"][:3000])
    return train_tokenizer(texts, 2000, kind="seq2seq", languages=["en", "de"], show_progress=False)


# --------------------------------------------------------------------------------------------------------------------
# Tokenizers


@pytest.mark.parametrize("model", ["wordpiece", "bpe", "unigram"])
def test_encoder_tokenizer_round_trip_and_special_tokens(model, tmp_path):
    tokenizer = train_tokenizer(CORPUS, 150, model=model, lowercase=True, show_progress=False)
    assert [
        tokenizer.pad_token_id,
        tokenizer.cls_token_id,
        tokenizer.sep_token_id,
        tokenizer.mask_token_id,
        tokenizer.unk_token_id,
    ] == [0, 1, 2, 3, 4]  # EncoderConfig's defaults
    encoded = tokenizer("A dog runs.", "The cat sits.")
    assert encoded["input_ids"][0] == 1 and encoded["input_ids"][-1] == 2
    assert encoded["input_ids"].count(2) == 2
    assert set(encoded) == {"input_ids", "attention_mask"}
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    for text in ("A DOG runs through the park!", "Ünïcode ﬁne"):
        assert loaded(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert (
        loaded.decode(loaded("A DOG runs.")["input_ids"], skip_special_tokens=True).replace(" .", ".") == "a dog runs."
    )


def test_seq2seq_tokenizer_tags_eos_and_spacing(joint_tokenizer, tmp_path):
    tokenizer = joint_tokenizer
    specials = ["pad_token_id", "bos_token_id", "eos_token_id", "unk_token_id", "mask_token_id"]
    assert [getattr(tokenizer, name) for name in specials] == [0, 1, 2, 3, 4]
    assert tokenizer.convert_tokens_to_ids(["<2en>", "<2de>"]) == [5, 6]
    sentence = "Two young, White males are outside near many bushes."
    ids = tokenizer(sentence)["input_ids"]
    assert ids[-1] == tokenizer.eos_token_id and tokenizer.bos_token_id not in ids
    assert tokenizer.decode(ids, skip_special_tokens=True) == sentence  # the spacing comes back (BLEU needs it)
    assert tokenizer.decode([6, *ids], skip_special_tokens=True) == sentence  # tags are special
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded("Ein Hund rennt.")["input_ids"] == tokenizer("Ein Hund rennt.")["input_ids"]
    assert loaded.convert_tokens_to_ids("<2de>") == 6


def test_tokenizer_arguments_are_checked():
    with pytest.raises(ValueError, match="model='sentencepiece' is not supported"):
        train_tokenizer(CORPUS, 100, model="sentencepiece")
    with pytest.raises(ValueError, match="Language tags are for seq2seq"):
        train_tokenizer(CORPUS, 100, languages=["de"])
    with pytest.raises(ValueError, match="leaves no room"):
        train_tokenizer(CORPUS, 5)


def test_a_tokenizer_is_not_trained_on_texts_without_text():
    with pytest.raises(ValueError, match="No text to train a tokenizer on: all 3 texts given are empty or whitespace"):
        train_tokenizer(["", "  ", "\n"], 100, show_progress=False)
    batches = (batch for batch in [["", " "], ["\t"]])  # a generator of batches, as the command line feeds it
    with pytest.raises(ValueError, match="all 3 texts given are empty"):
        train_tokenizer(batches, 100, kind="seq2seq", languages=["en"], show_progress=False)
    with pytest.raises(ValueError, match="no texts were given"):
        train_tokenizer(iter([]), 100, show_progress=False)
    texts = (text for text in ["", *CORPUS])  # read once: what the check reads, the trainer reads too
    assert train_tokenizer(texts, 150, show_progress=False).tokenize("A dog") == ["A", "dog"]


# --------------------------------------------------------------------------------------------------------------------
# The shared data sets


def test_multi30k_en_de_loads_with_its_splits(multi30k):
    assert {name: len(split) for name, split in multi30k.items()} == {"train": 29000, "validation": 1014, "test": 1000}
    assert multi30k["train"].column_names == ["en", "de"]
    with gzip.open(SHARED / "multi30k" / "test_2016_flickr.de.gz", "rt") as handle:
        assert multi30k["test"][0]["de"] == handle.readline().rstrip("\n")


def test_sides_of_parallel_files_named_as_files_or_globs_are_text():
    """Multi30k's `train.de.gz` and `train.en.gz` named by a glob: one corpus of both languages' lines (the joint
    encoder's); the folder itself is parallel data, not text."""
    both = load_text_dataset(str(SHARED / "multi30k" / "train.[de][en].gz"))
    assert sum(len(split) for split in both.values()) == 58_000 and set(both) == {"train", "validation"}
    german = load_text_dataset(str(SHARED / "multi30k" / "val.de.gz"))
    assert sum(len(split) for split in german.values()) == 1014 and german["train"].column_names == ["text"]
    with pytest.raises(FileNotFoundError, match="holds no"):
        load_text_dataset(str(SHARED / "multi30k"))


def test_imdb_jsonl_loads_with_labels():
    imdb = load_text_dataset(SHARED / "imdb")
    assert len(imdb["test"]) == 25000 and len(imdb["train"]) + len(imdb["validation"]) == 25000
    assert len(imdb["unsup"]) == 50000 and imdb["unsup"].column_names == ["text"]
    assert sorted(imdb["test"].unique("label")) == [0, 1]
    assert sum(imdb["test"]["label"]) == 12500


def test_sst2_tsv_loads_with_labels():
    sst2 = load_text_dataset(SHARED / "sst2", text_column="sentence")
    assert len(sst2["train"]) == 67349 and len(sst2["validation"]) == 872 and len(sst2["test"]) == 1821
    assert sum(sst2["validation"]["label"]) == 444
    assert sst2["train"][0] == {"sentence": "hide new secretions from the parental units ", "label": 0}
    assert "label" not in sst2["test"].column_names


def test_wikitext_blank_lines_are_dropped_and_counted(caplog):
    with caplog.at_level(logging.WARNING, logger="hf_encoders.data"):
        wikitext = load_text_dataset(SHARED / "wikitext2")
    assert len(wikitext["validation"]) == 3760 - 1299
    assert "validation: dropped 1299 empty rows of 3760" in caplog.text


# --------------------------------------------------------------------------------------------------------------------
# Packing and masking


def test_packing_keeps_every_token_once_and_documents_apart(encoder_tokenizer):
    documents = [
        " ".join(CORPUS[i : i + n])
        for i, n in zip(range(0, 100, 7), [1, 3, 9, 2, 5, 1, 12, 4, 2, 1, 6, 3, 1, 2, 8], strict=False)
    ]
    packed = pack_for_mlm(Dataset.from_dict({"text": documents}), encoder_tokenizer, block_size=48)
    expected = [encoder_tokenizer(doc, add_special_tokens=False)["input_ids"] for doc in documents]
    pieces = []
    for block in packed:
        assert len(block["input_ids"]) <= 48 and sum(block["lengths"]) == len(block["input_ids"])
        start = 0
        for length in block["lengths"]:
            piece = block["input_ids"][start : start + length]
            assert piece[0] == encoder_tokenizer.cls_token_id and piece[-1] == encoder_tokenizer.sep_token_id
            assert (
                encoder_tokenizer.cls_token_id not in piece[1:-1] and encoder_tokenizer.sep_token_id not in piece[1:-1]
            )
            pieces.append(piece[1:-1])
            start += length
    # the pieces, in order, are the documents cut at 46 tokens: every token once, no two documents in one piece
    assert pieces == [ids[i : i + 46] for ids in expected for i in range(0, len(ids), 46)]


@pytest.mark.parametrize("padding_free", [True, False])
@pytest.mark.parametrize("whole_word_mask", [False, True])
def test_masking_rate_replacements_and_specials(encoder_tokenizer, padding_free, whole_word_mask):
    tokenizer = encoder_tokenizer
    examples = [{"input_ids": tokenizer(text)["input_ids"]} for text in CORPUS]
    collator = MLMCollator(
        tokenizer, mlm_probability=0.25, padding_free=padding_free, whole_word_mask=whole_word_mask, seed=0
    )
    original = collator.__class__(tokenizer, mlm_probability=0.25, padding_free=padding_free, seed=0)
    reference = original(examples)  # layout of the unmasked batch, to compare against
    batch = collator(examples)
    if padding_free:
        assert batch["input_ids"].shape[0] == 1 and (batch["position_ids"] == 0).sum() == len(examples)
        real = torch.ones_like(batch["input_ids"], dtype=torch.bool)
    else:
        assert batch["input_ids"].shape[0] == len(examples)
        real = batch["attention_mask"].bool()
    ids = torch.where(batch["labels"] != -100, batch["labels"], batch["input_ids"])  # the unmasked ids
    assert reference["input_ids"].shape == ids.shape
    special = torch.isin(ids, torch.tensor(tokenizer.all_special_ids)) | ~real
    chosen = batch["labels"] != -100
    assert not (chosen & special).any()  # special tokens and padding are never masked
    rate = chosen.sum() / (~special).sum()
    assert abs(rate - 0.25) < 0.05, rate
    as_mask = batch["input_ids"][chosen] == tokenizer.mask_token_id
    unchanged = batch["input_ids"][chosen] == batch["labels"][chosen]
    assert abs(as_mask.float().mean() - 0.8) < 0.07
    assert abs(unchanged.float().mean() - 0.1) < 0.06
    if whole_word_mask:  # a continuation piece is chosen exactly when the piece before it is
        tokens = tokenizer.convert_ids_to_tokens(ids.flatten())
        flat_chosen = chosen.flatten()
        continuation = torch.tensor([token.startswith("##") for token in tokens])
        assert continuation.any()
        assert torch.equal(flat_chosen[1:][continuation[1:]], flat_chosen[:-1][continuation[1:]])


def test_mlm_collator_splits_packed_blocks_into_documents(encoder_tokenizer):
    packed = pack_for_mlm(Dataset.from_dict({"text": CORPUS[:10]}), encoder_tokenizer, block_size=64)
    padded = MLMCollator(encoder_tokenizer, padding_free=False, seed=0)(list(packed))
    flat = MLMCollator(encoder_tokenizer, padding_free=True, seed=0)(list(packed))
    assert padded["input_ids"].shape[0] == 10 and (flat["position_ids"] == 0).sum() == 10
    assert padded["attention_mask"].sum() == flat["input_ids"].shape[1]


def test_mlm_collator_checks_its_settings(encoder_tokenizer):
    with pytest.raises(ValueError, match=r"mlm_probability must lie in \(0, 1\)"):
        MLMCollator(encoder_tokenizer, mlm_probability=1.5)
    with pytest.raises(ValueError, match="add up to at most 1"):
        MLMCollator(encoder_tokenizer, mask_replace_prob=0.9, random_replace_prob=0.2)
    words = Tokenizer(models.WordLevel({"<pad>": 0, "<unk>": 1, "dog": 2}, unk_token="<unk>"))
    without_mask = PreTrainedTokenizerFast(tokenizer_object=words, pad_token="<pad>", unk_token="<unk>")
    with pytest.raises(ValueError, match="needs a tokenizer with a mask token"):
        MLMCollator(without_mask)


# --------------------------------------------------------------------------------------------------------------------
# Translation data


def test_prepare_translation_tags_targets_and_reports_overlong(multi30k, joint_tokenizer, caplog):
    small = multi30k["validation"].select(range(200))
    with caplog.at_level(logging.WARNING, logger="hf_encoders.data"):
        truncated = prepare_translation(small, joint_tokenizer, "en", "de", max_source_length=12, max_target_length=12)
        dropped = prepare_translation(
            small, joint_tokenizer, "en", "de", max_source_length=12, max_target_length=12, overlong="drop"
        )
    full = prepare_translation(small, joint_tokenizer, "en", "de", max_source_length=256, max_target_length=256)
    too_long = sum(len(s) > 12 or len(t) > 12 for s, t in zip(full["input_ids"], full["labels"], strict=True))
    assert too_long > 0
    assert f"{too_long} of 200 pairs exceed 12 source / 12 target tokens and were truncated" in caplog.text
    assert f"{too_long} of 200 pairs exceed 12 source / 12 target tokens and were dropped" in caplog.text
    assert len(truncated) == 200 and len(dropped) == 200 - too_long
    assert all(len(ids) <= 12 and ids[-1] == 2 for ids in truncated["input_ids"])
    tag = joint_tokenizer.convert_tokens_to_ids("<2de>")
    assert all(labels[0] == tag and labels[-1] == 2 for labels in truncated["labels"])  # <2de> first, </s> last
    assert full[0]["labels"][1:] == joint_tokenizer(small[0]["de"])["input_ids"]
    assert full[0]["input_ids"] == joint_tokenizer(small[0]["en"])["input_ids"]
    assert truncated[0] == full[0] or len(full[0]["input_ids"]) > 12 or len(full[0]["labels"]) > 12


def test_seq2seq_collators_padded_and_padding_free_give_the_same_loss(multi30k, joint_tokenizer):
    pairs = prepare_translation(multi30k["validation"].select(range(6)), joint_tokenizer, "en", "de")
    examples = list(pairs)
    padded = Seq2SeqCollator(joint_tokenizer)(examples)
    flat = Seq2SeqCollator(joint_tokenizer, padding_free=True)(examples)
    assert (padded["labels"] == -100).any() and padded["attention_mask"].min() == 0
    assert (flat["decoder_position_ids"] == 0).sum() == 6 and (flat["position_ids"] == 0).sum() == 6
    torch.manual_seed(0)
    model = Seq2SeqForConditionalGeneration(
        Seq2SeqConfig(
            vocab_size=len(joint_tokenizer),
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=48,
            max_position_embeddings=128,
        )
    )
    with torch.no_grad():
        torch.testing.assert_close(model(**flat).loss, model(**padded).loss, atol=1e-5, rtol=1e-5)


def test_length_grouped_batches_hold_less_padding(multi30k, joint_tokenizer):
    pairs = prepare_translation(multi30k["validation"], joint_tokenizer, "en", "de")
    collator = Seq2SeqCollator(joint_tokenizer)

    def padding(loader):
        batches = list(loader)
        return sum((b["attention_mask"] == 0).sum().item() for b in batches) / sum(
            b["attention_mask"].numel() for b in batches
        )

    grouped = padding(build_dataloader(pairs, collator, 32, group_by_length=True))
    plain = padding(build_dataloader(pairs, collator, 32))
    assert grouped < plain / 2, (grouped, plain)  # mega-batches of 7 x 32 on 1,014 pairs: sorted, not perfect
    assert sum(len(b["input_ids"]) for b in build_dataloader(pairs, collator, 32, group_by_length=True)) == len(pairs)


# --------------------------------------------------------------------------------------------------------------------
# The datasets cache across runs

PREPARE = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from transformers import AutoTokenizer
    from hf_encoders.data import (load_parallel_dataset, load_text_dataset, pack_for_mlm, prepare_denoising,
                                  prepare_translation)

    data, cache, folders = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]

    def arrow_files():
        return {str(path): path.stat().st_mtime_ns for path in cache.rglob("*.arrow")}

    documents, pairs = load_text_dataset(data / "documents"), load_parallel_dataset(data / "pairs", "en", "de")
    runs = []
    for folder in folders:
        tokenizer = AutoTokenizer.from_pretrained(folder)
        tokenizer(["a dog"], truncation=True, max_length=2, padding="max_length")  # leaves settings in its backend
        before = arrow_files()
        prepared = {
            "mlm": pack_for_mlm(documents, tokenizer, 16)["train"],
            "denoising": prepare_denoising(documents, tokenizer, "en", 16)["train"],
            "translation": prepare_translation(pairs, tokenizer, "en", "de", 8, 8)["train"],
        }
        runs.append({
            "written": sorted(path for path, mtime in arrow_files().items() if before.get(path) != mtime),
            "fingerprints": {name: split._fingerprint for name, split in prepared.items()},
            "cache_files": {name: split.cache_files for name, split in prepared.items()},
            "first_ids": {name: split[0]["input_ids"] for name, split in prepared.items()},
        })
    print(json.dumps(runs))
    """
)
BOTH_WORDS = "the a dog cat sat on mat ran in park der die das hund katze sass auf matte lief im".split()


def save_tagged_tokenizer(folder: Path, words: list[str]) -> None:
    """A word-level tokenizer with what all three preparations need: [CLS]/[SEP], </s> and language tags."""
    specials = ["[PAD]", "[CLS]", "[SEP]", "[MASK]", "[UNK]", "</s>", "<2de>", "<2en>"]
    backend = Tokenizer(models.WordLevel({token: i for i, token in enumerate(specials + words)}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 5)])
    PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        unk_token="[UNK]",
        eos_token="</s>",
        additional_special_tokens=["<2de>", "<2en>"],
    ).save_pretrained(folder)


def prepare_in_a_new_process(data: Path, cache: Path, *tokenizers: Path) -> list[dict]:
    env = {**os.environ, "HF_DATASETS_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-c", PREPARE, str(data), str(cache), *map(str, tokenizers)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_second_run_reads_its_tokenization_from_the_cache_and_another_tokenizer_does_not(tmp_path):
    """What the README promises: a later run with the same data, tokenizer and settings tokenizes nothing again, even
    with its copy of the tokenizer loaded from elsewhere; and a tokenizer that differs in two ids never reads what
    another one wrote."""
    lines = ["the dog sat on the mat. a cat ran in the park.", "the cat sat. a dog ran on the mat in the park."] * 20
    (tmp_path / "documents").mkdir()
    (tmp_path / "documents" / "train.txt").write_text("".join(line + "\n" for line in lines))
    (tmp_path / "pairs").mkdir()
    (tmp_path / "pairs" / "train.en").write_text("the dog ran\na cat sat on the mat\n" * 20)
    (tmp_path / "pairs" / "train.de").write_text("der hund lief\ndie katze sass auf der matte\n" * 20)
    save_tagged_tokenizer(tmp_path / "tokenizer", BOTH_WORDS)
    shutil.copytree(tmp_path / "tokenizer", tmp_path / "copy_of_the_tokenizer")
    swapped = [{"dog": "cat", "cat": "dog"}.get(word, word) for word in BOTH_WORDS]  # "dog" and "cat" swap ids
    save_tagged_tokenizer(tmp_path / "other_tokenizer", swapped)
    cache = tmp_path / "cache"

    (first,) = prepare_in_a_new_process(tmp_path, cache, tmp_path / "tokenizer")
    same, other = prepare_in_a_new_process(
        tmp_path, cache, tmp_path / "copy_of_the_tokenizer", tmp_path / "other_tokenizer"
    )
    assert first["written"], "the first run wrote its tokenization to the cache"
    assert same["written"] == [], "the second run read the cache instead of tokenizing again"
    assert same["fingerprints"] == first["fingerprints"] and same["cache_files"] == first["cache_files"]
    assert other["written"], "another tokenizer tokenizes afresh"
    for name in ("mlm", "denoising", "translation"):
        assert other["fingerprints"][name] != first["fingerprints"][name], name
        assert other["cache_files"][name] != first["cache_files"][name], name
        assert other["first_ids"][name] != first["first_ids"][name], name  # its own ids, not the cached ones


# --------------------------------------------------------------------------------------------------------------------
# Bad data


def test_parallel_files_of_different_lengths_are_refused(tmp_path):
    (tmp_path / "train.en").write_text("a\nb\nc\n")
    (tmp_path / "train.de").write_text("x\ny\n")
    with pytest.raises(ValueError, match=r"train\.en has 3 lines, .*train\.de has 2"):
        load_parallel_dataset(tmp_path, "en", "de")


def test_unknown_language_or_missing_pair_is_refused(tmp_path, multi30k, joint_tokenizer):
    with pytest.raises(ValueError, match="has no 'xx' side: its files give languages cs, de, en, fr"):
        load_parallel_dataset(SHARED / "multi30k", "en", "xx")
    with pytest.raises(ValueError, match="Unknown target language 'fr'"):
        prepare_translation(multi30k["validation"].select(range(2)), joint_tokenizer, "de", "fr")
    with pytest.raises(ValueError, match="both 'en'"):
        load_parallel_dataset(SHARED / "multi30k", "en", "en")


def test_empty_lines_in_parallel_data_are_dropped_and_counted(tmp_path, caplog):
    (tmp_path / "train.en").write_text("a dog\n\nthe cat\nrun\n")
    (tmp_path / "train.de").write_text("ein hund\nleer\n\nlauf\n")
    with caplog.at_level(logging.WARNING, logger="hf_encoders.data"):
        pairs = load_parallel_dataset(tmp_path, "en", "de", validation_fraction=0.25)
    assert len(pairs["train"]) + len(pairs["validation"]) == 2
    assert "train: dropped 2 empty rows of 4" in caplog.text


def test_undecodable_bytes_name_the_file_and_line(tmp_path):
    path = tmp_path / "train.txt"
    path.write_bytes(b"first line\nsecond line\ncaf\xe9 au lait\n")
    with pytest.raises(ValueError, match=r"train\.txt: line 3 is not valid UTF-8"):
        load_text_dataset(path)


def _gzip_cut_in_half(path: Path, text: str) -> None:
    compressed = gzip.compress(text.encode())
    path.write_bytes(compressed[: len(compressed) // 2])


def test_truncated_or_corrupt_files_are_named(tmp_path):
    lines = "".join(f"line {i} of a long enough file\n" for i in range(5000))
    truncated = tmp_path / "text" / "train.txt.gz"
    truncated.parent.mkdir()
    _gzip_cut_in_half(truncated, lines)
    with pytest.raises(ValueError, match=rf"Cannot read {truncated}: it is a truncated or corrupt gzip file") as error:
        load_text_dataset(truncated.parent)
    assert isinstance(error.value.__cause__, EOFError)

    (tmp_path / "pairs").mkdir()
    (tmp_path / "pairs" / "train.en").write_text(lines)
    _gzip_cut_in_half(tmp_path / "pairs" / "train.de.gz", lines)
    with pytest.raises(ValueError, match=r"Cannot read \S*pairs/train\.de\.gz: it is a truncated or corrupt gzip"):
        load_parallel_dataset(tmp_path / "pairs", "en", "de")

    not_gzip = tmp_path / "train.jsonl.gz"
    not_gzip.write_text('{"text": "plain text under a .gz name"}\n')
    with pytest.raises(ValueError, match=rf"Cannot read {not_gzip}: it is a truncated or corrupt gzip") as error:
        load_text_dataset(not_gzip)
    assert isinstance(error.value.__cause__, OSError)

    parquet = tmp_path / "train.parquet"
    Dataset.from_dict({"text": ["a", "b"] * 100}).to_parquet(parquet)
    parquet.write_bytes(parquet.read_bytes()[:-40])
    with pytest.raises(ValueError, match=rf"Cannot read {parquet}: it is corrupt, or not what its name says"):
        load_text_dataset(parquet)


def test_data_without_text_is_refused_by_source_and_split(tmp_path):
    (tmp_path / "blank").mkdir()
    (tmp_path / "blank" / "train.txt").write_text("\n  \n\t\n")
    with pytest.raises(
        ValueError, match=r"blank: split 'train' holds no text \(all its 3 rows have an empty 'text'\)"
    ):
        load_text_dataset(tmp_path / "blank")
    (tmp_path / "blank_test").mkdir()  # one good split does not excuse an empty one
    (tmp_path / "blank_test" / "train.jsonl").write_text('{"text": "a review"}\n')
    (tmp_path / "blank_test" / "test.jsonl").write_text('{"text": ""}\n{"text": " "}\n')
    with pytest.raises(ValueError, match=r"blank_test: split 'test' holds no text"):
        load_text_dataset(tmp_path / "blank_test")

    (tmp_path / "pairs").mkdir()
    (tmp_path / "pairs" / "train.en").write_text("a dog\n\n")
    (tmp_path / "pairs" / "train.de").write_text("\nein hund\n")
    with pytest.raises(ValueError, match=r"pairs: split 'train' holds no text \(all its 2 rows have an empty 'en' or"):
        load_parallel_dataset(tmp_path / "pairs", "en", "de")
    (tmp_path / "pairs" / "train.en").write_text("\n\n")
    with pytest.raises(ValueError, match=r"pairs: split 'train' holds no text \(all its 2 rows have an empty 'text'"):
        load_monolingual_dataset(tmp_path / "pairs", "en")


def test_preparing_an_empty_split_is_refused(encoder_tokenizer, joint_tokenizer):
    empty = Dataset.from_dict({"text": []})
    with pytest.raises(ValueError, match=r"Nothing to tokenize: split 'data' has no documents \(0 rows\)"):
        pack_for_mlm(empty, encoder_tokenizer)
    with pytest.raises(ValueError, match=r"Nothing to tokenize: split 'data' has no documents"):
        prepare_denoising(empty, joint_tokenizer, "en")
    with pytest.raises(ValueError, match=r"Nothing to tokenize: split 'data' has no pairs"):
        prepare_translation(Dataset.from_dict({"en": [], "de": []}), joint_tokenizer, "en", "de")


def test_jsonl_parquet_and_globs(tmp_path):
    rows = [{"text": f"review number {i}", "label": i % 2} for i in range(40)]
    with gzip.open(tmp_path / "train.jsonl.gz", "wt") as handle:
        handle.writelines(json.dumps(row) + "\n" for row in rows)
    Dataset.from_list(rows[:10]).to_parquet(tmp_path / "test.parquet")
    loaded = load_text_dataset(tmp_path, validation_fraction=0.25, seed=1)
    assert len(loaded["train"]) == 30 and len(loaded["validation"]) == 10 and len(loaded["test"]) == 10
    again = load_text_dataset(tmp_path, validation_fraction=0.25, seed=1)
    assert again["validation"]["text"] == loaded["validation"]["text"]  # the carve is seeded
    by_glob = load_text_dataset(str(tmp_path / "*.jsonl.gz"), validation_fraction=0.25)
    assert len(by_glob["train"]) == 30
    only_test = load_text_dataset(tmp_path, split="test")
    assert list(only_test) == ["test"] and len(only_test["test"]) == 10
    with pytest.raises(ValueError, match=r"has no split 'dev'; its files give \['test', 'train'\]"):
        load_text_dataset(tmp_path, split="dev")


def test_missing_paths_and_unreachable_hub_say_so(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="nowhere/train.txt"):
        load_text_dataset(tmp_path / "nowhere" / "train.txt")
    with pytest.raises(FileNotFoundError, match=r"no-such-\*\.jsonl"):
        load_text_dataset(str(tmp_path / "no-such-*.jsonl"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    start = time.perf_counter()
    with pytest.raises(ConnectionError, match="'someone/no-such-dataset' offline.*not in the datasets cache"):
        load_parallel_dataset("someone/no-such-dataset", "en", "de")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    with pytest.raises(ConnectionError, match="Hub cannot be reached"):
        load_text_dataset("someone/no-such-dataset")
    assert time.perf_counter() - start < 10  # says so, instead of hanging


def _put_in_cache_as_if_downloaded(cache: Path, repo_id: str, texts: list[str]) -> None:
    """What `load_dataset(repo_id)` leaves in a datasets cache: {namespace}___{name}/{config}/{version}/{commit}/,
    holding {name}-{split}.arrow and dataset_info.json."""
    namespace, name = repo_id.split("/")
    folder = cache / f"{namespace}___{name}" / "default" / "0.0.0" / ("0" * 40)
    folder.mkdir(parents=True)
    data = Dataset.from_dict({"text": texts})
    with ArrowWriter(path=str(folder / f"{name}-train.arrow")) as writer:
        writer.write_table(data.data.table)
        writer.finalize()
    splits = SplitDict(dataset_name=name)
    splits.add(SplitInfo("train", num_examples=len(texts), dataset_name=name))
    info = DatasetInfo(
        features=data.features, builder_name="parquet", dataset_name=name, config_name="default", splits=splits
    )
    info.write_to_directory(str(folder))


def test_a_hub_data_set_in_the_datasets_cache_loads_offline(tmp_path, monkeypatch):
    """HF_HUB_OFFLINE=1 (which huggingface_hub and datasets read when imported) with a data set in the cache."""
    _put_in_cache_as_if_downloaded(tmp_path, "someone/reviews", ["a fine film", "", "a dull film"] * 10)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # were the Hub asked, it could not answer
    reviews = load_text_dataset("someone/reviews", validation_fraction=0.25)
    assert len(reviews["train"]) + len(reviews["validation"]) == 20  # the blank ones dropped, as for local files
    assert set(reviews["train"]["text"]) == {"a fine film", "a dull film"}
    with pytest.raises(ConnectionError, match=r"'someone/other' offline \(HF_HUB_OFFLINE is set\).*not in the data"):
        load_text_dataset("someone/other")


def test_parallel_data_from_a_translation_column_or_language_columns(tmp_path):
    rows = [{"translation": {"en": f"a dog {i}", "de": f"ein hund {i}", "fr": f"un chien {i}"}} for i in range(20)]
    (tmp_path / "nested").mkdir()
    with gzip.open(tmp_path / "nested" / "train.jsonl.gz", "wt") as handle:
        handle.writelines(json.dumps(row) + "\n" for row in rows)
    pairs = load_parallel_dataset(tmp_path / "nested", "de", "fr", validation_fraction=0.25)
    assert pairs["train"].column_names == ["de", "fr"] and len(pairs["train"]) + len(pairs["validation"]) == 20
    assert {(row["de"], row["fr"]) for row in pairs["validation"]} <= {
        (f"ein hund {i}", f"un chien {i}") for i in range(20)
    }
    with pytest.raises(ValueError, match="translates between de, en, fr; it has no en-cs pair"):
        load_parallel_dataset(tmp_path / "nested", "en", "cs")

    (tmp_path / "flat").mkdir()
    Dataset.from_list([{"en": f"a cat {i}", "de": f"eine katze {i}", "id": i} for i in range(8)]).to_parquet(
        tmp_path / "flat" / "test.parquet"
    )
    flat = load_parallel_dataset(tmp_path / "flat", "en", "de")
    assert flat["test"].column_names == ["en", "de"] and flat["test"][3] == {"en": "a cat 3", "de": "eine katze 3"}
    with pytest.raises(ValueError, match=r"has no en-fr pair: its columns are \['en', 'de', 'id'\]"):
        load_parallel_dataset(tmp_path / "flat", "en", "fr")


def test_named_sources_split_name_path_and_split():
    from hf_encoders.data import parse_named_source

    assert parse_named_source("imdb=../shared/data/imdb:validation") == ("imdb", "../shared/data/imdb", "validation")
    assert parse_named_source("en=bentrevett/multi30k", default_split="train") == (
        "en",
        "bentrevett/multi30k",
        "train",
    )
    assert parse_named_source("en=org/set:unsup", default_split="train") == ("en", "org/set", "unsup")
    with pytest.raises(ValueError, match=r"is not of the form name=path-or-hub-id:split"):
        parse_named_source("imdb=../shared/data/imdb")
    with pytest.raises(ValueError, match=r"language=path-or-hub-id\[:split\]"):
        parse_named_source("=data", default_split="train", what="language")
