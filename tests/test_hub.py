"""Model cards written from a run's outputs, and runs pushed to the local Hub: what lands there loads without
hf_encoders and gives the same logits, the card's model-index carries the metrics, incomplete runs and bad cards
are refused, and a push that a server error interrupts is retried to one clean commit."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile

import pytest
import torch
from conftest import REFUSE_HF_ENCODERS, ROOT, ScriptRun, run_main
from huggingface_hub import ModelCard, constants
from transformers import AutoModelForMaskedLM, AutoModelForSeq2SeqLM

import hf_encoders.cli
from hf_encoders.cards import build_model_card
from hf_encoders.hub import push_to_hub
from hf_encoders.testing.local_hub import LocalHub

ENCODER_IDS = [[1, 7, 9, 12, 2]]
DECODER_IDS = [[1, 5, 6]]

LOADER = REFUSE_HF_ENCODERS + textwrap.dedent(
    f"""
    import torch
    from huggingface_hub import ModelCard
    from transformers import AutoModelForMaskedLM, AutoModelForSeq2SeqLM

    out = {{}}
    encoder = AutoModelForMaskedLM.from_pretrained("org/encoder", trust_remote_code=True).eval()
    translator = AutoModelForSeq2SeqLM.from_pretrained("org/translator", trust_remote_code=True).eval()
    with torch.no_grad():
        out["encoder"] = encoder(input_ids=torch.tensor({ENCODER_IDS})).logits.flatten().tolist()
        out["translator"] = translator(input_ids=torch.tensor({ENCODER_IDS}),
                                       decoder_input_ids=torch.tensor({DECODER_IDS})).logits.flatten().tolist()
    out["modules"] = [type(encoder).__module__, type(translator).__module__]
    for repo in ("org/encoder", "org/translator"):
        card = ModelCard.load(repo)
        out[repo] = {{result.metric_name: [result.metric_value, result.metric_args, result.dataset_split]
                      for result in card.data.eval_results}}
    print(json.dumps(out))
    """
)


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """The local Hub, for huggingface_hub in this process (HF_ENDPOINT is read at import) and in child processes."""
    with LocalHub() as server:
        monkeypatch.setattr(constants, "ENDPOINT", server.endpoint)
        monkeypatch.setenv("HF_TOKEN", "local")
        server.env = {
            **os.environ,
            "HF_ENDPOINT": server.endpoint,
            "HF_HUB_CACHE": str(tmp_path / "cache"),
            "HF_TOKEN": "local",
            "HF_HUB_DISABLE_TELEMETRY": "1",
        }
        server.env.pop("HF_HUB_OFFLINE", None)
        yield server


def cli(*args: str) -> ScriptRun:
    """`hf-encoders ARGS`; its exit status is `result`."""
    return run_main(hf_encoders.cli.main, *args)


def test_the_translation_card_is_written_from_the_run(translation_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(translation_run[0], run)
    done = cli("card", str(run), "--repo-id", "org/translator")
    assert done.result == 0, done.stderr
    card = ModelCard.load(run / "README.md")
    results = json.loads((run / "results.json").read_text())
    metrics = {result.metric_name: result for result in card.data.eval_results}
    assert set(metrics) == {"BLEU", "BLEU (lowercased)", "chrF"}  # the test split; validation is in the table only
    bleu = metrics["BLEU"]
    assert bleu.metric_value == pytest.approx(results["test"]["bleu"]["score"], abs=1e-4)
    assert bleu.metric_args["signature"] == results["test"]["bleu"]["signature"]
    assert (bleu.task_type, bleu.dataset_split, bleu.dataset_config) == ("translation", "test", "de-en")
    assert card.data.language == ["de", "en"] and card.data.pipeline_tag == "translation"
    text = card.text
    settings = json.loads((run / "config.json").read_text())
    phrases = [
        "**Handful** (local folder",
        "License and terms: as Multi30k's.",
        "the first Multi30k training pairs.",
        "| hidden size | 64 |",
        settings["device"],
        "| steps | 150 (stopped by max_steps) |",
        "![Training loss",
        'from_pretrained("org/translator")',
        'tgt_lang="en"',
        "nrefs:1\\|case:mixed",
    ]
    for phrase in phrases:
        assert phrase in text, phrase
    assert "Picked by length" not in text  # the source is its first sentence


def test_the_encoder_card_reports_perplexity_and_accuracy(mlm_run):
    card = build_model_card(mlm_run, language=["en"])
    rows = [json.loads(line) for line in (mlm_run / "metrics.jsonl").read_text().splitlines()]
    metrics = min((row for row in rows if "corpus/loss" in row), key=lambda row: row["corpus/loss"])  # best/'s
    values = {result.metric_type: result.metric_value for result in card.data.eval_results}
    assert values == pytest.approx(
        {"perplexity": metrics["corpus/perplexity"], "accuracy": metrics["corpus/accuracy"]}, abs=1e-4
    )
    assert {result.task_type for result in card.data.eval_results} == {"fill-mask"}
    assert card.data.pipeline_tag == "fill-mask" and "AutoModelForMaskedLM.from_pretrained" in card.text
    assert card.data.language == ["en"] and card.data.license == "apache-2.0"
    assert f'from_pretrained("{mlm_run / "best"}")' in card.text  # no repository given: the local model
    assert "custom_code" in card.data.tags and "trust_remote_code=True" in card.text


def test_pushed_runs_load_without_the_package_and_give_the_same_logits(mlm_run, translation_run, hub):
    done = cli("push", str(mlm_run), "org/encoder")
    assert done.result == 0, done.stderr
    assert "committed 16 files" in done.stdout
    again = cli("push", str(mlm_run), "org/encoder")  # the same files: the Hub client skips the empty commit
    assert again.result == 0 and "nothing committed: org/encoder@main already holds these 16 files" in again.stdout
    assert "committed 16" not in again.stdout and len(hub.repositories["org/encoder"].history()) == 1
    encoder = set(hub.repositories["org/encoder"].resolve("main").files)
    assert {
        "modules.json",
        "1_Pooling/config.json",
        "sentence_bert_config.json",
        "conversion_modernbert.py",
    } <= encoder
    pushed = push_to_hub(translation_run[0], "org/translator", token="local", private=True)
    assert pushed.commit_url and pushed.pull_request_url is None

    translator = hub.repositories["org/translator"]
    assert translator.private and len(translator.history()) == 1
    files = translator.resolve("main").files
    assert (
        set(files)
        == set(pushed.files)
        == {
            "README.md",
            "config.json",
            "generation_config.json",
            "model.safetensors",
            "tokenizer.json",
            "tokenizer_config.json",
            "configuration_hf_encoders.py",
            "conversion_modernbert.py",
            "modeling_encoder.py",
            "modeling_seq2seq.py",
            "pipeline_seq2seq.py",
            "eval_results.json",
            "training_config.json",
            "training_metrics.jsonl",
            "curves.png",
            "hypotheses.test.de-en.en",
            "scores.test.de-en.json",
        }
    )
    assert "auto_map" in json.loads(files["config.json"]) and files["curves.png"].startswith(b"\x89PNG")
    assert not any(
        path.endswith((".bin", ".pt", ".pkl")) for path in hub.repositories["org/encoder"].history()[0].files
    )

    done = subprocess.run([sys.executable, "-c", LOADER], capture_output=True, text=True, env=hub.env, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert all(module.startswith("transformers_modules") for module in loaded["modules"])  # the repositories' code
    with torch.no_grad():
        encoder = AutoModelForMaskedLM.from_pretrained(mlm_run / "best").eval()
        translator = AutoModelForSeq2SeqLM.from_pretrained(translation_run[0] / "best").eval()
        expected_encoder = encoder(input_ids=torch.tensor(ENCODER_IDS)).logits.flatten()
        expected_translator = translator(
            input_ids=torch.tensor(ENCODER_IDS), decoder_input_ids=torch.tensor(DECODER_IDS)
        ).logits.flatten()
    torch.testing.assert_close(torch.tensor(loaded["encoder"]), expected_encoder, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.tensor(loaded["translator"]), expected_translator, atol=1e-5, rtol=1e-5)

    results = json.loads((translation_run[0] / "results.json").read_text())["test"]
    bleu, args, split = loaded["org/translator"]["BLEU"]
    assert bleu == pytest.approx(results["bleu"]["score"], abs=1e-4) and split == "test"
    assert args == {"signature": results["bleu"]["signature"], "num_beams": 2, "length_penalty": 1.0}
    assert set(loaded["org/encoder"]) == {"perplexity (masked tokens)", "masked-token accuracy"}


def break_run(run, how: str) -> None:
    model = run / "best"
    if how == "no results":
        (run / "results.json").unlink()
    elif how == "pickle weights":
        (model / "model.safetensors").rename(model / "pytorch_model.bin")
    elif how == "no tokenizer":
        (model / "tokenizer.json").unlink()
        (model / "tokenizer_config.json").unlink()
    elif how == "bad card":
        (run / "README.md").write_text(
            "---\nmodel-index:\n- name: m\n  results:\n  - task: {type: fill-mask}\n"
            "    dataset: {type: c, name: c}\n    metrics: [{type: accuracy, value: good}]\n"
            "---\n# m\n"
        )


@pytest.mark.parametrize(
    "how, message",
    [
        ("no results", "has no eval results (results.json)"),
        ("pickle weights", "has no safetensors weights (only pytorch_model.bin: pickle files are never uploaded"),
        ("no tokenizer", "has no tokenizer"),
        ("bad card", "fails the Hub's checks: model-index: accuracy has a non-numeric value 'good'"),
    ],
)
def test_incomplete_runs_and_bad_cards_are_refused_before_anything_is_sent(mlm_run, hub, tmp_path, how, message):
    run = tmp_path / "run"
    shutil.copytree(mlm_run, run)
    break_run(run, how)
    with pytest.raises((FileNotFoundError, ValueError)) as error:
        push_to_hub(run, "org/broken", token="local")
    assert message in str(error.value)
    if how == "no results":  # the command says the same in one line
        done = cli("push", str(run), "org/broken")
        assert done.result == 1 and len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert done.stderr.startswith("hf-encoders push: error:") and message in done.stderr
    assert hub.requests == [] and "org/broken" not in hub.repositories


def test_a_dry_run_lists_the_files_and_sends_nothing(mlm_run, hub):
    done = cli("push", str(mlm_run), "org/encoder", "--dry-run")
    assert done.result == 0, done.stderr
    assert "model.safetensors" in done.stdout and "README.md" in done.stdout and "nothing was uploaded" in done.stdout
    assert hub.requests == []


def test_an_interrupted_push_leaves_no_commit_and_is_retried_to_a_clean_result(mlm_run, hub):
    hub.fail("commit", times=2, status=500)  # the push and its one retry both fail
    with pytest.raises(RuntimeError, match="nothing was committed"):
        push_to_hub(mlm_run, "org/encoder", token="local", retries=1, retry_wait=0)
    assert hub.repositories["org/encoder"].history() == []

    hub.fail("commit", times=1, status=503)  # the next push meets one more failure, and retries past it
    pushed = push_to_hub(mlm_run, "org/encoder", token="local", retry_wait=0)
    history = hub.repositories["org/encoder"].history()
    assert len(history) == 1 and history[0].oid in pushed.commit_url
    assert set(history[0].files) == set(pushed.files)
    assert history[0].files["model.safetensors"] == (mlm_run / "best" / "model.safetensors").read_bytes()

    proposal = push_to_hub(mlm_run, "org/encoder", token="local", create_pr=True, license="mit")  # a new card
    assert proposal.pull_request_url.endswith("/org/encoder/discussions/1")
    assert len(hub.repositories["org/encoder"].history()) == 1  # main is untouched by the pull request
    branch = push_to_hub(mlm_run, "org/encoder", token="local", revision="v1")
    assert hub.repositories["org/encoder"].resolve("v1").oid in branch.commit_url


def test_the_wheel_carries_every_file_of_the_package(tmp_path):
    """Installed from a wheel, the package still writes cards, finds its configs and runs its tasks: every file of
    the source package (modules, configs, card templates, metric scripts) is in the wheel."""
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), ROOT],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (wheel,) = tmp_path.glob("hf_encoders-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    package = ROOT / "hf_encoders"
    sources = {
        path.relative_to(ROOT).as_posix()
        for path in package.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
    }
    assert {"hf_encoders/tasks/translation/card.md", "hf_encoders/configs/translation_demo.yaml"} <= sources
    assert sources <= names, sorted(sources - names)
    assert (
        "hf-encoders = hf_encoders.cli:main"
        in zipfile.ZipFile(wheel).read(next(name for name in names if name.endswith("entry_points.txt"))).decode()
    )
