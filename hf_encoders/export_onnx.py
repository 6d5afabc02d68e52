"""Serving an encoder with ONNX Runtime: `export_onnx` writes an `EncoderModel` (feature extraction),
`EncoderForSequenceClassification`, `EncoderForTokenClassification` or `EncoderForMaskedLM` (fill-mask) checkpoint
as ONNX (`hf-encoders export MODEL --format onnx [--quantize]`).

The model is captured by `torch.export` (`torch.onnx.export(..., dynamo=True)`) with sdpa attention, dynamic batch
and sequence axes, int64 inputs `input_ids` and `attention_mask`, and named outputs (`last_hidden_state` and
`pooler_output`, or `logits`). The folder holds `model.onnx` (float32), with `quantize=True` also
`model_quantized.onnx` (int8 weights, `onnxruntime.quantization.quantize_dynamic`; the names transformers.js and
optimum use), the tokenizer, `config.json` and `export.json`, which says what the files are and how close ONNX Runtime
came to PyTorch. The export is verified before `export.json` is written: a folder without `export.json` is not an
export. Serving needs only `onnxruntime`, `tokenizers` and `numpy`, no torch:

    import json
    from pathlib import Path

    import numpy as np
    import onnxruntime
    from tokenizers import Tokenizer

    folder = Path("model/onnx")
    info = json.loads((folder / "export.json").read_text())
    tokenizer = Tokenizer.from_file(str(folder / info["tokenizer"]["file"]))
    tokenizer.enable_padding(
        pad_id=info["tokenizer"]["pad_token_id"],
        pad_token=info["tokenizer"]["pad_token"],
        direction=info["tokenizer"]["padding_side"],
    )
    tokenizer.enable_truncation(info["tokenizer"]["max_length"])
    session = onnxruntime.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    encodings = tokenizer.encode_batch(["A dog runs in the park.", "Hello!"])
    inputs = {
        "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
        "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
    }
    outputs = dict(zip(info["outputs"], session.run(list(info["outputs"]), inputs)))
    print({name: value.shape for name, value in outputs.items()})
"""

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import torch
import transformers
from onnxruntime.quantization import QuantType, quantize_dynamic
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.configuration_utils import PreTrainedConfig

from .exports import EXPORT_INFO, weights_sha256, what_serves

MODEL_FILE = "model.onnx"
QUANTIZED_FILE = "model_quantized.onnx"
INPUTS = ("input_ids", "attention_mask")
ATTENTION = "sdpa"  # torch.export captures it as is (eager attention exports too)
EXTERNAL_DATA_BYTES = 2**31 - 2**26  # protobuf's 2 GiB limit, less headroom: larger weights go to external data
# Texts the export is checked on: padded batches of different sizes and lengths (the second is not the export example)
EXAMPLE_TEXTS = ["A dog runs in the park.", "Hello!"]
VERIFY_BATCHES = [
    ["The cat sat on the mat.", "Hi.", "A small red dog ran with a big blue cat in the park and sat on a mat."],
    ["Yes", "A blue mat.", "The dog and the cat.", "Red", "In the park, a small dog ran and ran and ran on and on."],
    ["One text alone, without any padding."],
]


@dataclass(frozen=True)
class Head:
    """What an architecture exports as: its pipeline task, Auto class and (name, axes) of its outputs."""

    task: str
    auto_class: type
    outputs: dict[str, list[str]]


HEADS = {
    "EncoderModel": Head(
        "feature-extraction",
        AutoModel,
        {"last_hidden_state": ["batch", "sequence", "hidden"], "pooler_output": ["batch", "hidden"]},
    ),
    "EncoderForSequenceClassification": Head(
        "text-classification", AutoModelForSequenceClassification, {"logits": ["batch", "num_labels"]}
    ),
    "EncoderForTokenClassification": Head(
        "token-classification", AutoModelForTokenClassification, {"logits": ["batch", "sequence", "num_labels"]}
    ),
    "EncoderForMaskedLM": Head("fill-mask", AutoModelForMaskedLM, {"logits": ["batch", "sequence", "vocab"]}),
}


def check_exportable(config: PreTrainedConfig) -> Head:
    """The `Head` of `config.architectures[0]`; a ValueError naming any other architecture."""
    architecture = (config.architectures or [None])[0]
    if getattr(config, "is_encoder_decoder", False) or "Seq2Seq" in str(architecture):
        raise ValueError(f"`--format onnx` exports encoders only. {what_serves(config)}")
    return head_of(architecture)


def head_of(architecture: str | None) -> Head:
    if architecture not in HEADS:
        raise ValueError(
            f"Architecture {architecture!r} cannot be exported to ONNX: `config.architectures[0]` must be one of "
            f"{', '.join(HEADS)}."
        )
    return HEADS[architecture]


class OnnxOutputs(nn.Module):
    """The model as `torch.export` wants it: two tensor inputs in, a tuple of the named outputs out. No labels are
    passed, so a masked-LM head with `sparse_prediction` returns its full `logits` (batch, sequence, vocab)."""

    def __init__(self, model: PreTrainedModel, outputs: list[str]):
        super().__init__()
        self.model, self.outputs = model, list(outputs)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        result = self.model(input_ids=input_ids, attention_mask=attention_mask, return_dict=True)
        return tuple(result[name] for name in self.outputs)


def write_onnx(model: nn.Module, path: Path, example: dict[str, torch.Tensor], outputs: list[str], opset: int | None):
    """Export `model` (an `OnnxOutputs`) to the single file `path`, batch and sequence axes dynamic."""
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    with warnings.catch_warnings():  # both inputs share the axes, and torch says it names them only once
        warnings.filterwarnings("ignore", message=".*shares the same shape constraints", category=UserWarning)
        program = torch.onnx.export(
            model.eval(),
            tuple(example[name] for name in INPUTS),
            dynamo=True,
            input_names=list(INPUTS),
            output_names=outputs,
            opset_version=opset,
            dynamic_shapes={name: {0: batch, 1: sequence} for name in INPUTS},
            verbose=False,
        )
    size = sum(parameter.numel() * parameter.element_size() for parameter in model.parameters())
    program.save(str(path), external_data=size > EXTERNAL_DATA_BYTES)


def session(path: Path, threads: int = 0) -> onnxruntime.InferenceSession:
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_both(model: OnnxOutputs, onnx_session: onnxruntime.InferenceSession, batch: dict[str, torch.Tensor]):
    """(PyTorch, ONNX Runtime) outputs of one batch, as numpy arrays by name."""
    with torch.no_grad():
        reference = model(*(batch[name] for name in INPUTS))
    feeds = {name: batch[name].numpy().astype(np.int64) for name in INPUTS}
    exported = onnx_session.run(model.outputs, feeds)
    by_name = dict(zip(model.outputs, [t.numpy() for t in reference], strict=True))
    return by_name, dict(zip(model.outputs, exported, strict=True))


def compare(model: OnnxOutputs, onnx_session, batches: list[dict[str, torch.Tensor]]) -> dict:
    """Largest absolute difference of each output over `batches`, per-token outputs on real tokens only (what
    padding positions hold is not defined: their attention rows may be fully masked, where PyTorch's sdpa kernel
    and the eager math already disagree); with the share of equal argmax predictions for `logits`."""
    diffs, agree, total = dict.fromkeys(model.outputs, 0.0), 0, 0
    for batch in batches:
        reference, exported = run_both(model, onnx_session, batch)
        real = batch["attention_mask"].numpy().astype(bool)
        for name in model.outputs:
            want, got = reference[name], exported[name]
            if want.ndim == 3:  # (batch, sequence, ...): real tokens only
                want, got = want[real], got[real]
            diffs[name] = max(diffs[name], float(np.abs(want - got).max()))
            if name == "logits":
                agree += int((want.argmax(-1) == got.argmax(-1)).sum())
                total += want.argmax(-1).size
    report = {"max_abs_diff": diffs, "batches": [list(batch["input_ids"].shape) for batch in batches]}
    if total:
        report["argmax_agreement"] = agree / total
    return report


def verify(model: OnnxOutputs, path: Path, batches: list[dict[str, torch.Tensor]], atol: float) -> dict:
    """`compare` the float32 export with PyTorch; a RuntimeError naming the output that differs by more than
    `atol`."""
    report = {"atol": atol, **compare(model, session(path), batches)}
    for name, diff in report["max_abs_diff"].items():
        if not diff <= atol:
            raise RuntimeError(
                f"The ONNX export in {path.parent} does not match PyTorch: `{name}` differs by {diff:.3g} (atol "
                f"{atol:g}, batches {report['batches']}). No {EXPORT_INFO} was written; the folder is not an export."
            )
    return report


def quantize_int8(path: Path) -> Path:
    """`model_quantized.onnx` beside `path`: weights int8 (QInt8), activations quantized on the fly."""
    target = path.with_name(QUANTIZED_FILE)
    large = path.stat().st_size > EXTERNAL_DATA_BYTES or path.with_suffix(".onnx.data").exists()
    quantize_dynamic(path, target, weight_type=QuantType.QInt8, use_external_data_format=large)
    return target


def clear_previous_export(output_dir: Path) -> None:
    """Remove what an earlier export left in `output_dir` (its export.json first), so that a failed export does not
    sit beside an old export.json that vouches for it."""
    for file in [output_dir / EXPORT_INFO, *output_dir.glob("model*.onnx*")]:
        file.unlink(missing_ok=True)


def export_encoder(
    model: PreTrainedModel,
    output_dir: str | Path,
    example: dict[str, torch.Tensor],
    batches: list[dict[str, torch.Tensor]],
    *,
    quantize: bool = False,
    opset: int | None = None,
    atol: float = 1e-4,
) -> dict:
    """Export an encoder instance (one of `HEADS`) to `output_dir/model.onnx`, traced on `example`, verified on
    `batches` (which should differ from `example` in batch size and length); with `quantize`, also the int8
    `model_quantized.onnx`, compared but not held to `atol`. Returns the model part of `export.json`."""
    head = head_of(type(model).__name__)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    clear_previous_export(output_dir)
    wrapped = OnnxOutputs(model.eval(), list(head.outputs)).eval()
    path = output_dir / MODEL_FILE
    write_onnx(wrapped, path, example, wrapped.outputs, opset)
    verification = {"float32": verify(wrapped, path, batches, atol)}
    if quantize:
        verification["int8"] = compare(wrapped, session(quantize_int8(path)), batches)
    return {
        "format": "onnx",
        "task": head.task,
        "architecture": type(model).__name__,
        "attention": model.config._attn_implementation,
        "inputs": {name: {"dtype": "int64", "axes": ["batch", "sequence"]} for name in INPUTS},
        "outputs": {name: {"dtype": "float32", "axes": axes} for name, axes in head.outputs.items()},
        "opset": next(
            entry.version for entry in onnx.load(path, load_external_data=False).opset_import if not entry.domain
        ),
        "files": sorted(file.name for file in output_dir.glob("model*.onnx*")),  # with external data, if any
        "verification": verification,
    }


def tokenize(tokenizer: PreTrainedTokenizerBase, texts: list[str], max_length: int) -> dict[str, torch.Tensor]:
    encoded = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    return {name: encoded[name].to(torch.int64) for name in INPUTS}


def tokenizer_info(tokenizer: PreTrainedTokenizerBase, max_length: int) -> dict:
    """How to tokenize for the export with `tokenizers` alone (tokenizer.json does not keep the padding)."""
    return {
        "file": "tokenizer.json",
        "pad_token": tokenizer.pad_token,
        "pad_token_id": tokenizer.pad_token_id,
        "padding_side": tokenizer.padding_side,
        "max_length": max_length,
    }


def export_onnx(
    model_name_or_path: str | Path,
    output_dir: str | Path,
    *,
    quantize: bool = False,
    opset: int | None = None,
    atol: float = 1e-4,
    trust_remote_code: bool = False,
) -> dict:
    """Export an encoder checkpoint (a folder or a Hub id) to ONNX in `output_dir`: `model.onnx` (float32), with
    `quantize` also `model_quantized.onnx` (int8 weights), the tokenizer, `config.json` and `export.json`, which is
    returned. The float32 model is run with ONNX Runtime on padded batches of other sizes and lengths than the export
    example and must match PyTorch within `atol` on every output (per-token outputs on real tokens only); otherwise
    a RuntimeError, and no `export.json`. Seq2seq and unknown architectures get a ValueError naming them."""
    config = AutoConfig.from_pretrained(model_name_or_path, trust_remote_code=trust_remote_code)
    head = check_exportable(config)
    model = head.auto_class.from_pretrained(
        model_name_or_path, trust_remote_code=trust_remote_code, dtype=torch.float32, attn_implementation=ATTENTION
    )
    tokenizer = AutoTokenizer.from_pretrained(model_name_or_path, trust_remote_code=trust_remote_code)
    max_length = min(config.max_position_embeddings, tokenizer.model_max_length)
    batches = [tokenize(tokenizer, texts, max_length) for texts in VERIFY_BATCHES]
    info = export_encoder(
        model,
        output_dir,
        tokenize(tokenizer, EXAMPLE_TEXTS, max_length),
        batches,
        quantize=quantize,
        opset=opset,
        atol=atol,
    )
    output_dir = Path(output_dir)
    saved = tokenizer.save_pretrained(output_dir)
    model.config.save_pretrained(output_dir)
    info.update(
        source=str(model_name_or_path),
        weights_sha256=weights_sha256(model_name_or_path),
        pooling=config.classifier_pooling if head.task in ("feature-extraction", "text-classification") else None,
        tokenizer=tokenizer_info(tokenizer, max_length),
        versions={package.__name__: package.__version__ for package in (torch, transformers, onnx, onnxruntime)},
    )
    if head.task in ("text-classification", "token-classification"):
        info["id2label"] = {str(i): label for i, label in model.config.id2label.items()}
    info["files"] += sorted({Path(file).name for file in saved} | {"config.json", EXPORT_INFO})
    (output_dir / EXPORT_INFO).write_text(json.dumps(info, indent=2) + "\n")
    return info


def is_onnx_export(folder: str | Path) -> bool:
    return (Path(folder) / MODEL_FILE).is_file() and (Path(folder) / EXPORT_INFO).is_file()


__all__ = ["export_onnx", "export_encoder", "check_exportable", "is_onnx_export"]
