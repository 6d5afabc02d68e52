"""The local Hub speaks enough of the Hub's API for huggingface_hub and transformers: create a repository, validate a
card, commit (atomically), open a pull request, list and download files, and `from_pretrained(repo_id)` with
`trust_remote_code=True` in a process where hf_encoders cannot be imported."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import REFUSE_HF_ENCODERS, tiny_config

from hf_encoders import EncoderForMaskedLM
from hf_encoders.hub import card_metadata_errors
from hf_encoders.testing.local_hub import LocalHub

CLIENT = textwrap.dedent(
    """
    import json, sys
    from huggingface_hub import HfApi, hf_hub_download

    folder, out = sys.argv[1], {}
    api = HfApi()
    api.create_repo("org/tiny", exist_ok=True)
    api.create_repo("org/tiny", exist_ok=True)  # a second time: exists, fine
    first = api.upload_folder(repo_id="org/tiny", folder_path=folder, commit_message="upload")
    out["files"] = sorted(api.list_repo_files("org/tiny"))
    out["sha"] = api.model_info("org/tiny").sha == first.oid
    out["config"] = json.load(open(hf_hub_download("org/tiny", "config.json")))["model_type"]
    pr = api.upload_file(path_or_fileobj=b"note", path_in_repo="NOTE.md", repo_id="org/tiny", create_pr=True)
    out["pr"] = pr.pr_url
    out["main_has_note"] = "NOTE.md" in api.list_repo_files("org/tiny")
    out["pr_has_note"] = "NOTE.md" in api.list_repo_files("org/tiny", revision="refs/pr/1")
    try:
        api.upload_file(path_or_fileobj=b"---\\nmodel-index: [{results: [{metrics: 3}]}]\\n---\\n",
                        path_in_repo="README.md", repo_id="org/tiny")
    except ValueError as error:
        out["bad_card"] = str(error)
    print(json.dumps(out))
    """
)

LOADER = REFUSE_HF_ENCODERS + textwrap.dedent(
    """
    import torch
    from transformers import AutoModelForMaskedLM
    model = AutoModelForMaskedLM.from_pretrained("org/tiny", trust_remote_code=True).eval()
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([[1, 7, 9, 12, 2]])).logits
    print(json.dumps({"class": type(model).__module__, "logits": logits.flatten().tolist()}))
    """
)


def test_huggingface_hub_and_transformers_work_against_the_local_hub(tmp_path):
    torch.manual_seed(0)
    model = EncoderForMaskedLM(tiny_config()).eval()
    model.save_pretrained(tmp_path / "model")
    with torch.no_grad():
        expected = model(input_ids=torch.tensor([[1, 7, 9, 12, 2]])).logits.flatten()
    with LocalHub() as hub:
        hub.fail("commit", status=503)
        env = {
            **os.environ,
            "HF_ENDPOINT": hub.endpoint,
            "HF_HUB_CACHE": str(tmp_path / "cache"),
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_TOKEN": "local",
        }
        env.pop("HF_HUB_OFFLINE", None)
        done = subprocess.run(
            [sys.executable, "-c", CLIENT, str(tmp_path / "model")],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr[-4000:]
        out = json.loads(done.stdout.strip().splitlines()[-1])
        # the first commit request failed without effect and huggingface_hub sent it again (then the pull request)
        assert hub.requests.count(("POST", "/api/models/org/tiny/commit/main")) == 3
        assert [commit.message for commit in hub.repositories["org/tiny"].history()] == ["upload"]
        assert {"config.json", "model.safetensors", "modeling_encoder.py"} <= set(out["files"])
        assert out["sha"] and out["config"] == "hf_encoder"
        assert out["pr"].endswith("/org/tiny/discussions/1") and out["pr_has_note"] and not out["main_has_note"]
        assert "Invalid metadata in README.md" in out["bad_card"]

        done = subprocess.run([sys.executable, "-c", LOADER], capture_output=True, text=True, env=env, timeout=300)
        assert done.returncode == 0, done.stderr[-4000:]
        loaded = json.loads(done.stdout.strip().splitlines()[-1])
        assert loaded["class"].startswith("transformers_modules")  # the repository's own code, not the package
        torch.testing.assert_close(torch.tensor(loaded["logits"]), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "content, error",
    [
        ("no metadata at all", None),
        ("---\nlicense: apache-2.0\n---\n", None),
        ("---\nlicense: [unclosed\n---\n", "not valid YAML"),
        ("---\n- a list\n---\n", "must be a YAML mapping"),
        (
            "---\nmodel-index:\n- name: m\n  results:\n  - task: {type: translation}\n"
            "    dataset: {type: multi30k, name: Multi30k}\n    metrics: [{type: bleu, value: 38.5}]\n---\n",
            None,
        ),
        (
            "---\nmodel-index:\n- name: m\n  results:\n  - task: {type: translation}\n"
            "    dataset: {type: multi30k, name: Multi30k}\n    metrics: [{type: bleu, value: high}]\n---\n",
            "non-numeric value 'high'",
        ),
        ("---\nmodel-index:\n- name: m\n  results:\n  - metrics: [{type: bleu, value: 1}]\n---\n", "malformed"),
    ],
)
def test_card_metadata_checks(content, error):
    errors = card_metadata_errors(content)
    assert (not errors) if error is None else any(error in message for message in errors), errors
