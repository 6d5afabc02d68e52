"""`hf-encoders export --format ctranslate2`: the converted model scores and translates exactly as ours does, int8
keeps its quality, what CTranslate2 cannot express is refused by name, and cards and pushes carry the export."""

import gzip
import json
import shutil

import ctranslate2
import pytest
import torch
from conftest import SHARED
from test_modeling_seq2seq import seq2seq_tokenizer
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

from hf_encoders import Seq2SeqConfig, Seq2SeqForConditionalGeneration, Seq2SeqVAEConfig
from hf_encoders.cards import build_model_card
from hf_encoders.cli import main as cli
from hf_encoders.export_ctranslate2 import (
    CTranslate2Model,
    check_convertible,
    convert_to_ctranslate2,
    translate_ctranslate2,
)
from hf_encoders.hub import upload_plan
from hf_encoders.translation import score_translations, target_language_start

ATOL = 1e-4  # log-probabilities, float32 in both: CTranslate2's kernels against PyTorch's
LAYOUTS = {
    "defaults (LayerNorm without bias, RoPE, GeGLU, tied)": {},
    "RMSNorm": {"norm_type": "rmsnorm"},
    "learned positions, GELU": {"position_embedding_type": "absolute", "hidden_activation": "gelu"},
    "SwiGLU, every bias": {"hidden_activation": "swiglu", "attention_bias": True, "mlp_bias": True, "norm_bias": True},
    "untied embeddings, 3 + 1 layers": {"tie_word_embeddings": False, "num_hidden_layers": 3, "num_decoder_layers": 1},
}


def random_model(**overrides) -> Seq2SeqForConditionalGeneration:
    """A random tiny model whose norms are not the identity, so that a misplaced norm shows."""
    torch.manual_seed(0)
    settings = dict(vocab_size=40, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48)
    model = Seq2SeqForConditionalGeneration(Seq2SeqConfig(**{**settings, **overrides})).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "norm" in name:
                parameter.add_(0.3 * torch.randn_like(parameter))
    return model


def source_tokens(tokenizer, sentences: list[str]) -> list[list[str]]:
    return [tokenizer.convert_ids_to_tokens(ids) for ids in tokenizer(sentences)["input_ids"]]


@pytest.mark.parametrize("overrides", LAYOUTS.values(), ids=LAYOUTS.keys())
def test_the_converted_model_scores_targets_as_ours_does(overrides, tmp_path):
    model, tokenizer = random_model(**overrides), seq2seq_tokenizer()
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    translator = ctranslate2.Translator(str(convert_to_ctranslate2(tmp_path / "model", tmp_path / "ct2")))
    sources = ["a dog runs the cat sits", "the cat", "hund"]
    targets = [["<2de>", "ein", "hund", "rennt"], ["<2de>", "die", "katze"], ["<2en>", "a", "dog", "runs", "a"]]
    scored = translator.score_batch(source_tokens(tokenizer, sources), targets)  # CTranslate2 appends </s>
    for source, target, result in zip(sources, targets, scored, strict=True):
        labels = torch.tensor([tokenizer.convert_tokens_to_ids([*target, "</s>"])])
        with torch.no_grad():
            logits = model(**tokenizer(source, return_tensors="pt"), labels=labels).logits
        ours = logits.log_softmax(-1)[0].gather(-1, labels[0, :, None])[:, 0]
        torch.testing.assert_close(torch.tensor(result.log_probs), ours, atol=ATOL, rtol=0)


def until_end(ids: list[int], eos_token_id: int) -> list[int]:
    """A generated row up to its first </s> (generate pads the rows that ended sooner)."""
    return ids[: ids.index(eos_token_id) + 1] if eos_token_id in ids else ids


def handful_and_unseen(handful, count: int = 24) -> tuple[list[str], list[str]]:
    """The handful's German sources (which the test model knows) and Multi30k validation sentences it never saw."""
    with gzip.open(SHARED / "multi30k" / "val.de.gz", "rt", encoding="utf-8") as handle:
        unseen = [next(handle).strip() for _ in range(count)]
    return (handful / "test.de").read_text().splitlines(), unseen


@pytest.mark.parametrize("num_beams", [1, 4])
def test_translations_are_token_for_token_ours(translation_run, handful, num_beams, tmp_path):
    model_dir = translation_run[0] / "best"
    export = convert_to_ctranslate2(model_dir, tmp_path / "ct2")
    model, tokenizer = (
        AutoModelForSeq2SeqLM.from_pretrained(model_dir).eval(),
        AutoTokenizer.from_pretrained(model_dir),
    )
    sentences = sum(handful_and_unseen(handful), [])
    inputs = tokenizer(sentences, return_tensors="pt", padding=True)
    with torch.no_grad():
        generated = model.generate(
            **inputs,
            num_beams=num_beams,
            early_stopping=True,  # CTranslate2 ends a beam search when num_beams hypotheses are finished
            max_new_tokens=40,
            **target_language_start(tokenizer, "en"),
        )
    ours = [until_end(row.tolist()[1:], tokenizer.eos_token_id) for row in generated]  # without the start token
    results = ctranslate2.Translator(str(export)).translate_batch(
        source_tokens(tokenizer, sentences),
        target_prefix=[["<2en>"]] * len(sentences),
        beam_size=num_beams,
        max_decoding_length=40,
    )
    theirs = [tokenizer.convert_tokens_to_ids(result.hypotheses[0]) + [tokenizer.eos_token_id] for result in results]
    theirs = [row[: len(mine)] for row, mine in zip(theirs, ours, strict=True)]  # (a row cut at 40 has no </s>)
    assert theirs == ours


def test_int8_keeps_the_test_models_bleu(translation_run, handful, tmp_path):
    model_dir = translation_run[0] / "best"
    sources = (handful / "test.de").read_text().splitlines()
    references = (handful / "test.en").read_text().splitlines()
    hypotheses, bleu = {}, {}
    for quantization in ("float32", "int8"):
        export = convert_to_ctranslate2(model_dir, tmp_path / quantization, quantization=quantization)
        assert json.loads((export / "export.json").read_text())["quantization"] == quantization
        hypotheses[quantization] = translate_ctranslate2(export, sources, "en", num_beams=4)
        bleu[quantization] = score_translations(hypotheses[quantization], references)["bleu"]["score"]
    assert bleu["float32"] > 90 and bleu["int8"] > 90  # the test model knows the handful by heart, quantized too
    # int8 rounds the weights (and ctranslate2's int8 kernels differ from one CPU to another): where the memorized
    # model's margin between two tokens is thin, one may flip, which costs a handful of eight sentences ~2 BLEU
    changed = [pair for pair in zip(hypotheses["float32"], hypotheses["int8"], strict=True) if pair[0] != pair[1]]
    assert len(changed) <= 1, changed


def test_a_loaded_export_serves_request_after_request(translation_run, handful, tmp_path):
    """`CTranslate2Model`: loaded once, as many translations at once as it is given threads (one thread each); one
    request per sentence translates as one call with every sentence does, and as `translate_ctranslate2` does."""
    export = convert_to_ctranslate2(translation_run[0] / "best", tmp_path / "ct2")
    served = CTranslate2Model(export, threads=2)
    assert served.translator.num_translators == 2 and served.translator.compute_type == "float32"
    assert CTranslate2Model(export, threads=2, intra_threads=2).translator.num_translators == 1
    assert [served.batch_size(count, 32) for count in (1, 5, 64, 100)] == [1, 3, 32, 32]  # 2 translators busy
    sources = [*handful_and_unseen(handful, count=4)[1], ""]
    together = served.translate(sources, "en", num_beams=4)
    assert together[-1] == "" and all(together[:-1])
    assert [served.translate([source], "en", num_beams=4)[0] for source in sources] == together
    assert translate_ctranslate2(export, sources, "en", num_beams=4, translator=served.translator) == together


@pytest.mark.parametrize(
    "config, named",
    [
        (Seq2SeqVAEConfig(hidden_size=32, num_attention_heads=2, num_hidden_layers=1), "latent_size"),
        (Seq2SeqConfig(local_attention=8, global_attn_every_n_layers=2), "local_attention"),
        (Seq2SeqConfig(first_layer_attention_norm=False), "first_layer_attention_norm"),
    ],
    ids=["sentence VAE", "local attention", "first layers without their norm"],
)
def test_what_ctranslate2_cannot_run_is_refused_by_name(config, named):
    with pytest.raises(ValueError, match=named):
        check_convertible(config)


def test_a_checkpoint_saved_before_the_first_layer_norm_is_refused(tmp_path):
    model = random_model(first_layer_attention_norm=False)
    model.save_pretrained(tmp_path)
    seq2seq_tokenizer().save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    del config["first_layer_attention_norm"]  # as config.json was written before the option existed
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="first_layer_attention_norm"):
        convert_to_ctranslate2(tmp_path, tmp_path / "ct2")
    assert not (tmp_path / "ct2").exists()


def test_export_translate_card_and_push_from_the_command_line(translation_run, handful, capsys, tmp_path):
    run = shutil.copytree(translation_run[0], tmp_path / "run")
    assert cli(["export", str(run / "best"), "--format", "ctranslate2", "--quantization", "int8"]) == 0
    assert "wrote the CTranslate2 model (int8)" in capsys.readouterr().out
    source, reference = (handful / "test.de").read_text().splitlines()[0], (handful / "test.en").read_text()
    assert cli(["translate", str(run / "best" / "ctranslate2"), source, "--tgt-lang", "en"]) == 0
    assert capsys.readouterr().out.strip() == reference.splitlines()[0]
    files = upload_plan(run, "me/tiny-de-en")
    assert {"ctranslate2/model.bin", "ctranslate2/tokenizer.json", "ctranslate2/export.json"} <= set(files)
    card = str(build_model_card(run, repo_id="me/tiny-de-en"))
    assert "## Serving" in card and "ctranslate2.Translator(folder" in card and "- ctranslate2" in card
    assert "target_prefix=[['<2en>']]" in card
    assert cli(["export", str(run / "best"), "--format", "ctranslate2", "--quantize"]) == 2


def test_the_serving_benchmark_times_an_engine_in_a_process_of_its_own(translation_run, handful, tmp_path):
    """benchmarks/bench_serving_cpu.py's child: one engine, pinned to the CPUs it is given, every setting timed once,
    translating as the library does in this process; and the speed-ups it reports, with their range over rounds."""
    from benchmarks.bench_serving_cpu import run_process, speedups

    export = convert_to_ctranslate2(translation_run[0] / "best", tmp_path / "ct2")
    sources = handful_and_unseen(handful, count=4)[1]
    (tmp_path / "sources.json").write_text(json.dumps(sources))
    spec = {"name": "ours CTranslate2 float32", "engine": "ctranslate2", "folder": str(export), "threads": 1}
    spec |= {"settings": [[2, 1, 4], [1, 4, 2]], "sources": str(tmp_path / "sources.json"), "tgt": "en"}
    result, report = run_process(spec | {"max_new_tokens": 40}, tmp_path)
    assert len(result["cpus"]) == 1 and result["load_s"] > 0
    served = CTranslate2Model(export)
    for timing, (batch_size, beams, count) in zip(result["timings"], spec["settings"], strict=True):
        assert (timing["batch_size"], timing["num_beams"]) == (batch_size, beams) and timing["seconds"] > 0
        assert timing["hypotheses"] == served.translate(sources[:count], "en", batch_size, beams, 40)
    assert "- Selected compute type: float32" in report
    figures = [
        {"row": "a", "batch_size": 32, "num_beams": 1, "sentences_per_s": {"median": 30, "min": 20, "max": 40}},
        {"row": "b", "batch_size": 32, "num_beams": 1, "sentences_per_s": {"median": 10, "min": 5, "max": 20}},
    ]
    assert speedups(figures, "a", "b") == [
        {"of": "a", "over": "b", "batch_size": 32, "num_beams": 1, "median": 3.0, "min": 1.0, "max": 8.0}
    ]
