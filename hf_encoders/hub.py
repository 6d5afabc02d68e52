"""Pushing a run to the Hugging Face Hub in one commit, with the card the Hub's checks accept.

A *run* is the output folder of a training task (see `hf_encoders.cards`, which writes its model card). From it

    push_to_hub("runs/de_en", "me/hf-seq2seq-multi30k-de-en", private=True)       # card, weights, code, results

uploads the pushed model's folder (with its `ctranslate2/` and `onnx/` exports, if any), its card (the run's README.md
when there is one, else one built) and the run's results, settings and training curves. `hf-encoders push` is the same on the command line.
"""

import importlib
import json
import logging
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import huggingface_hub
import yaml
from huggingface_hub import CommitOperationAdd, HfApi
from huggingface_hub.errors import HfHubHTTPError
from huggingface_hub.repocard_data import model_index_to_eval_results

from .cards import ADAPTER_CONFIG, build_model_card, read_run, with_base_model
from .data import is_local
from .exports import EXPORT_FORMATS, check_fresh
from .plots import plot_training_curves

# Network errors of the HTTP client huggingface_hub talks through: httpx2 from huggingface_hub 2 on, httpx before.
TransportError = importlib.import_module(
    "httpx2" if int(huggingface_hub.__version__.split(".")[0]) >= 2 else "httpx"
).TransportError

logger = logging.getLogger(__name__)

# what goes up from the model folder: weights as safetensors only, config, tokenizer, generation config, the
# self-contained code named by `auto_map`, the files that make an encoder a sentence-transformers model, and the test
# hypotheses, scores and predictions written beside it
MODEL_FILES = (
    "config.json",
    "adapter_config.json",
    "generation_config.json",
    "*.safetensors",
    "model.safetensors.index.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "*.py",
    "modules.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
    "1_Pooling/config.json",
    "hypotheses.*",
    "scores.*.json",
    "predictions.*.jsonl",
)
# what goes up from the run folder, under which name (config.json is the model's in a repository)
RUN_FILES = {
    "results.json": "eval_results.json",
    "config.json": "training_config.json",
    "metrics.jsonl": "training_metrics.jsonl",
}
RETRIED_STATUSES = (408, 429, 500, 502, 503, 504)


def card_metadata_errors(content: str) -> list[str]:
    """What the Hub's card validation would object to in a README's YAML metadata: YAML that does not parse or is
    not a mapping, and a `model-index` that does not describe results (task, dataset, metrics with values)."""
    match = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", content, flags=re.DOTALL)
    if not match:
        return []  # no metadata: allowed (the Hub warns)
    try:
        metadata = yaml.safe_load(match.group(1))
    except yaml.YAMLError as error:
        return [f"The metadata is not valid YAML: {error}"]
    if metadata is None:
        return []
    if not isinstance(metadata, dict):
        return ["The metadata must be a YAML mapping"]
    if "model-index" not in metadata:
        return []
    try:
        name, results = model_index_to_eval_results(metadata["model-index"])
    except (KeyError, TypeError, AttributeError, IndexError) as error:
        return [f"model-index is malformed: missing or wrong entry {error}"]
    errors = [] if name else ["model-index needs a model name"]
    for result in results:
        if not isinstance(result.metric_value, int | float) or isinstance(result.metric_value, bool):
            errors.append(f"model-index: {result.metric_type} has a non-numeric value {result.metric_value!r}")
    return errors


def checked_card(content: str, source: str = "The model card") -> str:
    """`content`, when it passes the Hub's metadata checks; else a ValueError naming `source` and what is wrong."""
    if errors := card_metadata_errors(content):
        raise ValueError(f"{source} fails the Hub's checks: {'; '.join(errors)}.")
    return content


def upload_plan(
    run_dir: str | Path,
    repo_id: str | None = None,
    license: str = "apache-2.0",
    language: list[str] | None = None,
    base_model: str | None = None,
) -> dict[str, bytes]:
    """Every file of the repository-to-be, path in the repository -> content. The card is the run's README.md when
    there is one (written by `hf-encoders card`, perhaps edited), else it is built; either way it must pass the
    metadata checks the Hub applies. A LoRA adapter goes up with its base model's Hub id (`base_model`, when it was
    trained on a local copy)."""
    run = with_base_model(read_run(run_dir), base_model)
    files: dict[str, bytes] = {}
    for pattern in MODEL_FILES:
        for path in sorted(run.model_dir.glob(pattern)):
            files[path.relative_to(run.model_dir).as_posix()] = path.read_bytes()
    if run.adapter:  # nobody can load an adapter whose base is a folder on the machine it was trained on
        if is_local(base := run.adapter["base_model_name_or_path"]):
            raise ValueError(
                f"The adapter in {run.model_dir} adapts the local model {base}, which nobody can load from the Hub: "
                "push that model first and give its Hub id as base_model (hf-encoders push ... --base-model ORG/NAME)."
            )
        files[ADAPTER_CONFIG] = (json.dumps(run.adapter, indent=2, sort_keys=True) + "\n").encode()
    check_fresh(run.model_dir)  # an export made from other weights than these is refused by name
    for export in EXPORT_FORMATS:  # `hf-encoders export` folders beside the weights go up whole, as subfolders
        for path in sorted((run.model_dir / export).rglob("*")):
            if path.is_file():
                files[path.relative_to(run.model_dir).as_posix()] = path.read_bytes()
    if "auto_map" not in run.model_config and run.model_config.get("model_type", "").startswith("hf_"):
        raise ValueError(f"{run.model_dir}/config.json has no auto_map: save it with hf_encoders imported.")
    for name, path_in_repo in RUN_FILES.items():
        if (run.directory / name).is_file():
            files[path_in_repo] = (run.directory / name).read_bytes()
    if (run.directory / "curves.png").is_file():
        files["curves.png"] = (run.directory / "curves.png").read_bytes()
    elif (run.directory / "metrics.jsonl").is_file():  # a run from before curves were drawn: draw them now
        with tempfile.TemporaryDirectory() as scratch:
            curves = plot_training_curves(
                run.directory / "metrics.jsonl", Path(scratch) / "curves.png", title=run.directory.resolve().name
            )
            files["curves.png"] = curves.read_bytes()
    readme = run.directory / "README.md"
    card = (
        readme.read_text(encoding="utf-8")
        if readme.is_file()
        else str(build_model_card(run, repo_id, license, language))
    )
    source = f"The model card ({readme})" if readme.is_file() else "The model card"
    files["README.md"] = checked_card(card, source).encode()
    return files


@dataclass
class PushResult:
    repo_id: str
    files: dict[str, int]  # path in the repository -> size in bytes
    commit_url: str | None = None  # None for a dry run
    pull_request_url: str | None = None
    committed: bool = False  # False for a dry run, and where the repository held every file as it is already


def push_to_hub(
    run_dir: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    token: str | None = None,
    revision: str | None = None,
    create_pr: bool = False,
    commit_message: str | None = None,
    license: str = "apache-2.0",
    language: list[str] | None = None,
    endpoint: str | None = None,
    dry_run: bool = False,
    base_model: str | None = None,
    retries: int = 3,
    retry_wait: float = 2.0,
) -> PushResult:
    """Upload a run's model, card and results to `repo_id` as one commit (created with the repository if needed).

    The commit is atomic: it lands whole or not at all. A transient failure (network error, 429 or 5xx answer) is
    retried up to `retries` times, waiting `retry_wait` seconds and twice as long each time; each attempt names the
    commit it builds on, so a retry can never land a second copy on top of one that did land. A push of what the
    repository holds already makes no commit (`PushResult.committed` is False). `endpoint` is the Hub
    to talk to (default: `HF_ENDPOINT`, else https://huggingface.co). `base_model`: the Hub id of an adapter's base
    model, when it was trained on a local copy.
    """
    files = upload_plan(run_dir, repo_id, license, language, base_model)
    result = PushResult(repo_id, {path: len(content) for path, content in sorted(files.items())})
    if dry_run:
        return result
    api = HfApi(endpoint=endpoint, token=token)
    branch = revision or "main"
    api.create_repo(repo_id, private=private, exist_ok=True)
    if revision and revision != "main":
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    parent = api.repo_info(repo_id, revision=branch).sha
    message = commit_message or f"Upload {Path(run_dir).resolve().name} with hf_encoders"
    for attempt in range(retries + 1):
        operations = [CommitOperationAdd(path, content) for path, content in files.items()]
        try:
            info = api.create_commit(
                repo_id, operations, commit_message=message, revision=branch, create_pr=create_pr, parent_commit=parent
            )
            break
        except (HfHubHTTPError, TransportError) as error:
            status = getattr(getattr(error, "response", None), "status_code", None)
            if status == 412 and attempt:
                raise RuntimeError(
                    f"{repo_id}@{branch} moved while pushing (an earlier attempt may have landed): look at the "
                    "repository before pushing again."
                ) from error
            transient = status is None or status in RETRIED_STATUSES
            if not transient or attempt == retries:
                raise RuntimeError(f"Pushing to {repo_id} failed; nothing was committed: {error}") from error
            logger.warning("push to %s failed (%s); retrying in %.0f s", repo_id, error, retry_wait * 2**attempt)
            time.sleep(retry_wait * 2**attempt)
    result.commit_url, result.pull_request_url = info.commit_url, info.pr_url
    result.committed = info.oid != parent  # the client skips a commit that would change nothing, and says so
    return result


__all__ = ["card_metadata_errors", "checked_card", "push_to_hub", "upload_plan", "PushResult"]
