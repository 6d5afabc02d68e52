"""LoRA adapters (PEFT) on the encoder family: what to adapt, training only the adapter and the task's head, loading,
merging.

    model = AutoModelForSequenceClassification.from_pretrained("runs/mlm_small/best", num_labels=2)
    model = with_lora(model, LoraArguments(lora_r=8), "sequence-classification")   # a peft.PeftModel
    ...train...
    model.save_pretrained("adapter")          # adapter_config.json + adapter_model.safetensors (adapter and head)
    adapted = load_adapted("adapter")         # AutoPeftModelForSequenceClassification, the base from the adapter
    merge_lora("adapter", "merged")           # a plain checkpoint, checked to give the adapted model's outputs

`hf-encoders finetune --lora_r 8` (and `train-translation --init_from ... --lora_r 8`) do the first three;
`hf-encoders merge-lora ADAPTER OUTPUT` the last.

The modules LoRA can adapt (`LoraConfig(target_modules=...)` and `--lora_target` name them; a name matches a module
whose dotted name is it or ends with "." + it, as PEFT matches):

    qkv_proj    self-attention's fused query/key/value projection (encoder and decoder layers)
    q_proj      cross-attention's query projection (decoder layers)
    kv_proj     cross-attention's fused key/value projection (decoder layers)
    o_proj      every attention's output projection
    up_proj     the MLP's input projection (with the gate, fused, for GeGLU/SwiGLU)
    down_proj   the MLP's output projection

By default all of those the model has. A classification model's head (the prediction head `head` and `classifier`)
is new for the task, so it trains whole and is saved with the adapter (`modules_to_save`); the translation head is
tied to the embeddings and stays frozen.
"""

import importlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import torch
from transformers import AutoTokenizer, PreTrainedModel

if TYPE_CHECKING:
    from peft import PeftModel

logger = logging.getLogger(__name__)

PROJECTIONS = ("qkv_proj", "q_proj", "kv_proj", "o_proj", "up_proj", "down_proj")
ADAPTER_CONFIG = "adapter_config.json"


@dataclass(frozen=True)
class AdapterTask:
    task_type: str  # PEFT's TaskType
    auto_class: str  # the AutoPeftModelFor... class that loads it
    trains_head: bool  # whether the model's head (its modules outside the base model) trains whole


TASKS = {
    "sequence-classification": AdapterTask("SEQ_CLS", "AutoPeftModelForSequenceClassification", True),
    "token-classification": AdapterTask("TOKEN_CLS", "AutoPeftModelForTokenClassification", True),
    "translation": AdapterTask("SEQ_2_SEQ_LM", "AutoPeftModelForSeq2SeqLM", False),
    "feature-extraction": AdapterTask("FEATURE_EXTRACTION", "AutoPeftModelForFeatureExtraction", False),
}


def peft() -> ModuleType:
    """The `peft` package (an extra: `pip install 'hf-encoders[peft]'`)."""
    try:
        return importlib.import_module("peft")
    except ImportError as error:
        raise ImportError("LoRA adapters need PEFT: pip install 'hf-encoders[peft]' (or peft).") from error


@dataclass
class LoraArguments:
    lora_r: int = field(default=0, metadata={"help": "LoRA rank; 0: no adapter, every weight trains."})
    lora_alpha: float = field(default=16.0, metadata={"help": "LoRA's scale: the update is multiplied by alpha / r."})
    lora_dropout: float = 0.0
    lora_target: list[str] | None = field(
        default=None,
        metadata={
            "help": f"Modules to adapt (default: every attention and MLP projection, {', '.join(PROJECTIONS)})."
        },
    )

    def __post_init__(self):
        if self.lora_r < 0:
            raise ValueError(f"lora_r={self.lora_r}: give a positive rank, or 0 for full fine-tuning.")


def matches(name: str, target: str) -> bool:
    """Whether the module `name` is the one `target` names, as PEFT's `target_modules` list entries match."""
    return name == target or name.endswith(f".{target}")


def head_modules(model: PreTrainedModel) -> list[str]:
    """The model's modules with weights outside its base model (`head`, `classifier`, ...): the task's head."""
    base = model.base_model_prefix
    return [name for name, child in model.named_children() if name != base and any(True for _ in child.parameters())]


def lora_targets(model: PreTrainedModel, requested: list[str] | None, skip: list[str]) -> list[str]:
    """The modules to adapt: `requested`, each checked to name a linear layer of `model` outside the `skip`ped
    heads, else every projection of PROJECTIONS the model has."""
    linear = [
        name
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and not any(name == s or name.startswith(f"{s}.") for s in skip)
    ]
    if not requested:
        return [target for target in PROJECTIONS if any(matches(name, target) for name in linear)]
    for target in requested:
        if not any(matches(name, target) for name in linear):
            adaptable = sorted({name.split(".")[-1] for name in linear})
            raise ValueError(
                f"LoRA target {target!r} matches no linear layer of {type(model).__name__}; its layers are named "
                f"{', '.join(adaptable)} (a target matches a module's name or its last dotted parts)."
            )
    return list(requested)


def with_lora(model: PreTrainedModel, args: LoraArguments, task: str) -> "PeftModel":
    """`model` with LoRA adapters on `args.lora_target`: only the adapters (and a classification model's head)
    train."""
    if task not in TASKS:
        raise ValueError(f"LoRA task {task!r}: choose one of {', '.join(TASKS)}.")
    heads = head_modules(model) if TASKS[task].trains_head else []
    config = peft().LoraConfig(
        task_type=TASKS[task].task_type,
        r=args.lora_r,
        lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout,
        target_modules=lora_targets(model, args.lora_target, heads),
        modules_to_save=heads or None,
    )
    if Path(model.name_or_path).is_dir():  # the adapter's config names its base: the folder wherever it is run from
        model.name_or_path = str(Path(model.name_or_path).resolve())
    adapted = peft().get_peft_model(model, config)
    trainable, total = adapted.get_nb_trainable_parameters()
    logger.info(
        "LoRA r=%d alpha=%g on %s%s: %s of %s parameters train (%.2f%%)",
        args.lora_r,
        args.lora_alpha,
        ", ".join(sorted(config.target_modules)),
        f" (trained whole: {', '.join(heads)})" if heads else "",
        f"{trainable:,}",
        f"{total:,}",
        100 * trainable / total,
    )
    return adapted


def is_adapter(folder: str | Path) -> bool:
    """Whether the local `folder` holds a PEFT adapter (not a whole model)."""
    return (Path(folder) / ADAPTER_CONFIG).is_file()


def adapter_task(adapter: str | Path) -> str:
    """The task an adapter was trained for, from the task type its config records."""
    return task_of(peft().PeftConfig.from_pretrained(str(adapter)).task_type, str(adapter))


def task_of(task_type: str, adapter: str) -> str:
    """Our name of PEFT's task type `task_type` (of the adapter `adapter`)."""
    for name, task in TASKS.items():
        if task.task_type == task_type:
            return name
    raise ValueError(f"{adapter}: the adapter's task type {task_type!r} is none of {', '.join(TASKS)}.")


def saved_num_labels(adapter: str | Path) -> int | None:
    """The number of classes of the classifier saved with a classification adapter (None without one)."""
    weights = peft().utils.load_peft_weights(str(adapter), device="cpu")
    shapes = [tensor.shape[0] for key, tensor in weights.items() if key.endswith("classifier.weight")]
    return shapes[0] if shapes else None


def load_adapted(adapter: str | Path, **kwargs) -> "PeftModel":
    """The adapted model: the base named in the adapter's config (a folder or Hub id; `kwargs` go to its
    `from_pretrained`, e.g. `trust_remote_code=True`, `id2label=...`) with the adapter loaded, through PEFT's
    `AutoPeftModelFor...` of the adapter's task. A classification base gets as many classes as the saved classifier
    has, unless `num_labels` or `id2label` says."""
    task = adapter_task(adapter)
    if TASKS[task].trains_head and "num_labels" not in kwargs and "id2label" not in kwargs:
        if (num_labels := saved_num_labels(adapter)) is not None:
            kwargs["num_labels"] = num_labels
    return getattr(peft(), TASKS[task].auto_class).from_pretrained(str(adapter), **kwargs)


def probe_inputs(model: PreTrainedModel) -> dict[str, torch.Tensor]:
    """A small padded batch of token ids (and a decoder's, for an encoder-decoder) to compare two models on."""
    generator = torch.Generator().manual_seed(0)
    config = model.config
    ids = torch.randint(0, config.vocab_size, (2, 12), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0
    inputs = {"input_ids": ids, "attention_mask": mask}
    if config.is_encoder_decoder:
        inputs["decoder_input_ids"] = torch.randint(0, config.vocab_size, (2, 6), generator=generator)
    return {name: tensor.to(model.device) for name, tensor in inputs.items()}


def main_output(model: torch.nn.Module, inputs: dict) -> torch.Tensor:
    output = model(**inputs)
    return output.logits if "logits" in output else output.last_hidden_state


@torch.no_grad()
def merge_lora(adapter: str | Path, output_dir: str | Path, **kwargs) -> PreTrainedModel:
    """The adapted model with the adapter merged into its weights (`merge_and_unload`), saved to `output_dir` with
    the adapter's tokenizer: a plain checkpoint of the base model's class. Raises unless it gives the adapted
    model's outputs. `kwargs` go to the base model's `from_pretrained` (see `load_adapted`)."""
    adapted = load_adapted(adapter, **kwargs).eval()
    inputs = probe_inputs(adapted)
    expected = main_output(adapted, inputs)
    merged = adapted.merge_and_unload()
    difference = (main_output(merged, inputs) - expected).abs().max().item()
    tolerance = 1e-4 * (1 + expected.abs().max().item())
    if not difference <= tolerance:
        raise RuntimeError(
            f"The merged model differs from the adapted one by {difference:.3g} (tolerance {tolerance:.3g}): "
            f"this peft release merges {adapter} otherwise than it applies it."
        )
    merged.save_pretrained(output_dir)
    if Path(adapter).exists() and not (Path(adapter) / "tokenizer_config.json").is_file():
        logger.warning(
            "%s has no tokenizer, so %s has none: save the base model's tokenizer beside it", adapter, output_dir
        )
    else:
        AutoTokenizer.from_pretrained(str(adapter)).save_pretrained(output_dir)
    logger.info("merged %s into %s (outputs equal within %.1e)", adapter, output_dir, difference)
    return merged


__all__ = [
    "LoraArguments",
    "PROJECTIONS",
    "TASKS",
    "is_adapter",
    "load_adapted",
    "merge_lora",
    "with_lora",
]
