"""What the serving exports have in common: where they go and which weights they were made from.

`hf-encoders export MODEL --format ctranslate2|onnx` writes into the model folder's `ctranslate2/` or `onnx/` (unless
`--output` says otherwise), and `hf-encoders push` uploads those folders beside the weights. Each export's
`export.json` records the SHA-256 of the weights it was made from (`weights_sha256`), so that an export whose model
folder got new weights since (a resumed run exports `best/` again) is known for what it is: stale. The run folder
removes the stale exports of a folder it writes new weights into, and `push` refuses a stale export by name.
"""

import hashlib
import json
import logging
import shutil
from pathlib import Path

logger = logging.getLogger(__name__)

EXPORT_FORMATS = ("ctranslate2", "onnx")  # the subfolders `hf-encoders export` writes beside the weights
EXPORT_INFO = "export.json"  # what an export is, how it was checked and which weights it came from
WEIGHTS = "*.safetensors"


def what_serves(config) -> str:
    """What a model of this family is and what serves it, for the exports' refusals."""
    name = (config.architectures or [type(config).__name__])[0]
    if config.model_type == "hf_seq2seq_vae":
        return (
            f"{name} is a sentence VAE (model_type 'hf_seq2seq_vae'): neither export computes its variational "
            'bottleneck (`latent_size`). Serve it with PyTorch: `pipeline("text2text-generation", model=FOLDER, '
            "trust_remote_code=True)` or `model.generate`."
        )
    if getattr(config, "is_encoder_decoder", False):
        return (
            f"{name} is an encoder-decoder (model_type {config.model_type!r}): export it with `hf-encoders export "
            'MODEL --format ctranslate2`, or serve it with `hf-encoders translate` or `pipeline("translation")`.'
        )
    return (
        f"{name} is an encoder (model_type {config.model_type!r}): export it with `hf-encoders export MODEL --format "
        "onnx`, or serve it with transformers' pipelines (fill-mask, text-classification, feature-extraction) or "
        "sentence-transformers."
    )


def weights_sha256(model_name_or_path: str | Path) -> str:
    """The SHA-256 of a model's weights: its safetensors files (names and contents, in name order), in a local
    folder or, for a Hub id, in the cached snapshot `from_pretrained` downloaded."""
    folder = Path(model_name_or_path)
    if not folder.is_dir():
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(str(model_name_or_path), allow_patterns=[WEIGHTS]))
    files = sorted(folder.glob(WEIGHTS))
    if not files:
        raise FileNotFoundError(f"{model_name_or_path} holds no safetensors weights to export.")
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.name.encode() + b"\0")
        with file.open("rb") as handle:
            digest.update(hashlib.file_digest(handle, "sha256").digest())
    return digest.hexdigest()


def stale_exports(model_dir: str | Path) -> dict[Path, str]:
    """The exports beside the weights of `model_dir` (`ctranslate2/`, `onnx/`) that were not made from those
    weights, each with the reason."""
    model_dir, stale = Path(model_dir), {}
    exports = [model_dir / name for name in EXPORT_FORMATS if (model_dir / name).is_dir()]
    current = weights_sha256(model_dir) if exports and any(model_dir.glob(WEIGHTS)) else None
    for folder in exports:
        info_file = folder / EXPORT_INFO
        recorded = json.loads(info_file.read_text()).get("weights_sha256") if info_file.is_file() else None
        if not info_file.is_file():
            stale[folder] = f"it has no {EXPORT_INFO} (an export that did not finish)"
        elif recorded is None:
            stale[folder] = f"its {EXPORT_INFO} records no weights_sha256 (an export of hf_encoders before 0.5)"
        elif recorded != current:
            stale[folder] = f"it was made from other weights than {model_dir.name}/ holds now"
    return stale


def remove_stale_exports(model_dir: str | Path) -> None:
    """Delete the exports of `model_dir` that its weights have outgrown (`stale_exports`), naming each."""
    for folder, reason in stale_exports(model_dir).items():
        shutil.rmtree(folder)
        logger.warning("removed %s: %s; export it again with `hf-encoders export %s`", folder, reason, model_dir)


def check_fresh(model_dir: str | Path) -> None:
    """A ValueError naming every stale export beside the weights of `model_dir` (what `push` would upload)."""
    if stale := stale_exports(model_dir):
        named = "; ".join(f"{folder}: {reason}" for folder, reason in stale.items())
        raise ValueError(
            f"Stale exports: {named}. Export again (`hf-encoders export {model_dir} --format FORMAT --force`) or "
            "delete them; nothing was uploaded."
        )


__all__ = ["EXPORT_FORMATS", "EXPORT_INFO", "weights_sha256", "stale_exports", "remove_stale_exports", "check_fresh"]
