"""Model cards written from a run's outputs alone.

A *run* is the output folder of a training task (`hf_encoders/tasks/*`): `config.json` (its resolved settings,
device and library versions), `results.json`, `metrics.jsonl`, `curves.png`, and the exported models `best/` and
`final/`. From these

    card = build_model_card("runs/de_en", repo_id="me/hf-seq2seq-multi30k-de-en")   # a huggingface_hub ModelCard

writes the card: the sections every card has (architecture, training procedure, training data from the data's
SOURCE.md) are built here; the rest comes from the run's task, whose `card.py` gives a `CardSection` (its results,
usage example and text, and the Jinja template it is written with, which lies beside it). `hf-encoders card` is the
same on the command line; `hf_encoders.hub` pushes a run with its card.
"""

import dataclasses
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import jinja2
from huggingface_hub import EvalResult, ModelCard, ModelCardData, hf_hub_download
from safetensors import safe_open

from .data import is_local
from .exports import EXPORT_FORMATS, EXPORT_INFO, stale_exports
from .tasks import task_for_script

logger = logging.getLogger(__name__)

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
ENCODER_TEMPLATE = Path(__file__).resolve().parent / "tasks" / "encoder_card.md"  # the encoder tasks share it
SERVING_TEMPLATE = ENCODER_TEMPLATE.with_name("serving_card.md")  # the exports' part of every card
ADAPTER_TEMPLATE = ENCODER_TEMPLATE.with_name("adapter_card.md")  # "How to use" of a LoRA adapter's card
ADAPTER_CONFIG = "adapter_config.json"  # what PEFT saves beside an adapter's weights
ENCODER_FAMILY = "encoder (a BERT/ModernBERT-style transformer)"
SEQ2SEQ_FAMILY = "encoder-decoder (a BART-style transformer)"


@dataclass(frozen=True)
class RunRecord:
    """A training run's outputs, read and checked (by `read_run`)."""

    directory: Path
    settings: dict  # config.json: what the task was run with
    results: dict  # results.json
    model_dir: Path  # the model that is pushed: the one the results are about
    model_config: dict  # its config.json (an adapter's: its base model's)
    adapter: dict | None = None  # a LoRA adapter's adapter_config.json (None: a whole model)

    @property
    def script(self) -> str:
        """The training script the run records (`pretrain_mlm`, `train_translation`, ...): it names its task."""
        return self.settings.get("script", "")

    @property
    def data(self) -> dict:
        """The data settings the run was trained with."""
        return self.settings["data"]

    def data_source(self, spec: str) -> dict:
        """What the run recorded of its local data `spec` when it started: its absolute `path`, its files and the
        copy of its SOURCE.md (`source_file`, in the run folder); empty for a Hub id or a run of an older version."""
        return self.settings.get("data_sources", {}).get(spec, {})

    @property
    def training(self) -> dict:
        """The settings of the training loop (optimizer, schedule, batch, best metric, ...)."""
        return self.settings.get("training", {})

    @property
    def train_results(self) -> dict:
        """What the training loop reported: steps, seconds, tokens seen, final metrics."""
        return self.results.get("train", self.results)

    @property
    def parameters(self) -> int:
        return self.results.get("parameters") or self.settings.get("parameters", 0)

    @property
    def best_metric(self) -> str:
        """The metric the kept checkpoint was chosen on, or "final step"."""
        return self.training.get("best_metric") or "final step"

    @property
    def custom_code(self) -> bool:
        """Whether the model is hf_encoders' own (its code named by `auto_map`), not a transformers model."""
        return "auto_map" in self.model_config

    @property
    def architecture(self) -> str:
        return (self.model_config.get("architectures") or ["?"])[0]

    @property
    def mask_token(self) -> str:
        """The tokenizer's mask token, for fill-in examples."""
        tokenizer_config = self.model_dir / "tokenizer_config.json"
        mask = json.loads(tokenizer_config.read_text()).get("mask_token") if tokenizer_config.is_file() else None
        return (mask.get("content") if isinstance(mask, dict) else mask) or "[MASK]"

    def chosen_evaluation(self) -> tuple[str, dict[str, float]]:
        """Which model the card is about and its validation metrics: the evaluation that made it `best/` (from the
        run's metrics.jsonl; a checkpoint's, `step N`, or an average's, `averaged_N`), else the final one."""
        final = ("final", self.train_results.get("metrics", {}))
        best_metric, log = self.training.get("best_metric"), self.directory / "metrics.jsonl"
        if self.model_dir.name != "best" or not best_metric or not log.is_file():
            return final
        evaluated = []  # (model, metrics): a checkpoint's rows are unprefixed, an average's are `averaged_N/...`
        for row in map(json.loads, filter(str.strip, log.read_text().splitlines())):
            labels = {key.removesuffix(best_metric).rstrip("/") for key in row if key.endswith(best_metric)}
            for label in labels:
                prefix = f"{label}/" if label else ""
                metrics = {k.removeprefix(prefix): v for k, v in row.items() if k.startswith(prefix) and k != "step"}
                evaluated.append((label or f"step {row['step']}", metrics))
        if not evaluated:
            return final
        choose = max if self.training.get("greater_is_better") else min
        return choose(evaluated, key=lambda model: model[1][best_metric])

    def chosen_metrics(self) -> dict[str, float]:
        """The validation metrics of the model the card is about (`chosen_evaluation`)."""
        return self.chosen_evaluation()[1]


def read_run(run_dir: "str | Path | RunRecord") -> RunRecord:
    """Read a run folder, refusing (with what is missing and why) one that cannot make a complete repository."""
    if isinstance(run_dir, RunRecord):
        return run_dir
    directory = Path(run_dir)
    if not directory.is_dir():
        raise FileNotFoundError(f"No run folder {str(directory)!r}.")
    results_file = directory / "results.json"
    if not results_file.is_file():
        raise FileNotFoundError(
            f"{directory} has no eval results (results.json): give the output_dir of a training run, which holds "
            "results.json, config.json and the exported best/ or final/ model."
        )
    results = json.loads(results_file.read_text())
    settings_file = directory / "config.json"
    settings = json.loads(settings_file.read_text()) if settings_file.is_file() else {}
    if "script" not in settings:
        raise ValueError(f"{settings_file} is not a run's resolved settings (it names no training script).")
    named = directory / Path(results["model"]).name if "model" in results else None
    candidates = [named] if named else [directory / "best", directory / "final"]
    exported = ("config.json", ADAPTER_CONFIG)
    model_dir = next((path for path in candidates if any((path / name).is_file() for name in exported)), None)
    if model_dir is None:
        raise FileNotFoundError(f"{directory} holds no exported model ({' or '.join(map(str, candidates))}).")
    if not any(model_dir.glob("*.safetensors")):
        pickles = sorted(path.name for path in model_dir.iterdir() if path.suffix in PICKLE_SUFFIXES)
        only = f" (only {', '.join(pickles)}: pickle files are never uploaded; re-save with save_pretrained)."
        raise FileNotFoundError(f"{model_dir} has no safetensors weights" + (only if pickles else "."))
    if not (model_dir / "tokenizer.json").is_file() and not (model_dir / "tokenizer_config.json").is_file():
        raise FileNotFoundError(f"{model_dir} has no tokenizer (tokenizer.json / tokenizer_config.json).")
    if (model_dir / ADAPTER_CONFIG).is_file():
        adapter = json.loads((model_dir / ADAPTER_CONFIG).read_text())
        return RunRecord(directory, settings, results, model_dir, base_model_config(adapter), adapter)
    return RunRecord(directory, settings, results, model_dir, json.loads((model_dir / "config.json").read_text()))


def with_base_model(run: RunRecord, base_model: str | None) -> RunRecord:
    """An adapter's run with `base_model` (the Hub id of the model it adapted a local copy of) as its base."""
    if base_model is None:
        return run
    if not run.adapter:
        raise ValueError(f"base_model={base_model!r} is for LoRA adapters; {run.model_dir} holds a whole model.")
    return dataclasses.replace(run, adapter={**run.adapter, "base_model_name_or_path": base_model})


def base_model_config(adapter: dict) -> dict:
    """The config.json of an adapter's base model (a local folder, else downloaded from the Hub)."""
    base = adapter.get("base_model_name_or_path")
    if not base:
        raise ValueError("The adapter's config names no base model (base_model_name_or_path).")
    local = Path(base) / "config.json"
    if is_local(base):
        if not local.is_file():
            raise FileNotFoundError(f"The adapter's base model {base} has no config.json here.")
        return json.loads(local.read_text())
    return json.loads(Path(hf_hub_download(base, "config.json", revision=adapter.get("revision"))).read_text())


@dataclass(frozen=True)
class DataSource:
    """What a card says about a data set (see `describe_data`)."""

    title: str
    name: str
    location: str  # "Hub dataset `x`" or "local folder `x`"
    url: str | None = None
    source: str | None = None  # where it came from: the first sentence of SOURCE.md's **Source:**
    license: str | None = None  # SOURCE.md's **License...:** paragraph
    hub_id: str | None = None

    @property
    def dataset_type(self) -> str:
        """The data set as the model-index names it: its Hub id, else its folder's name."""
        return self.hub_id or self.name


def describe_data(spec: str, run: RunRecord | None = None) -> DataSource:
    """What a card says about a data set: its title, where it came from and its license, from the SOURCE.md of a
    local data folder, or a link for a Hub id. For a run's data (`run`), from the copy of SOURCE.md the run took when
    it started and the absolute path it recorded, so that the card is the same from any folder."""
    recorded = run.data_source(spec) if run is not None else {}
    if not recorded and not is_local(spec):
        return DataSource(
            spec, spec, f"Hub dataset `{spec}`", url=f"https://huggingface.co/datasets/{spec}", hub_id=spec
        )
    path = Path(recorded.get("path", spec))
    source_file = run.directory / recorded["source_file"] if "source_file" in recorded else path / "SOURCE.md"
    info = {"title": path.name, "source": None, "license": None}
    if not path.exists() and not source_file.is_file():
        logger.warning(
            "the data folder %s is not here (relative to %s): the card cannot describe it", spec, Path.cwd()
        )
    if source_file.is_file():
        text = source_file.read_text(encoding="utf-8")
        if heading := re.search(r"^# (.+)$", text, flags=re.MULTILINE):
            info["title"] = re.split(r" \(| — ", heading.group(1))[0].strip()  # "Multi30k (WMT16–18 ...) — raw"
        for paragraph in re.split(r"\n\s*\n", text):
            flat = " ".join(paragraph.split())
            if label := re.match(r"\*\*(Source|License[^*]*):\*\*\s*", flat):
                text = flat[label.end() :]
                if label.group(1) == "Source":  # where it came from: the first sentence
                    text = re.split(r"(?<=\.)\s", text, maxsplit=1)[0]
                info["source" if label.group(1) == "Source" else "license"] = text
    return DataSource(name=path.name, location=f"local folder `{path.name}`", **info)


@dataclass(frozen=True)
class ResultRow:
    """One result of a run: in the card's results table and, unless `in_model_index` is False (the validation
    scores a checkpoint was chosen on, beside test scores), in its model-index metadata."""

    task_type: str
    task_name: str
    dataset_type: str
    dataset_name: str
    dataset_config: str | None
    dataset_split: str
    metric_type: str
    metric_name: str
    value: float
    signature: str | None = None  # a sacreBLEU signature, shown in the table
    metric_args: dict | None = None
    in_model_index: bool = True

    def eval_result(self) -> EvalResult:
        return EvalResult(
            task_type=self.task_type,
            task_name=self.task_name,
            dataset_type=self.dataset_type,
            dataset_name=self.dataset_name,
            dataset_config=self.dataset_config,
            dataset_split=self.dataset_split,
            metric_type=self.metric_type,
            metric_name=self.metric_name,
            metric_value=round(self.value, 4),
            metric_args=self.metric_args,
        )

    def table_row(self) -> dict:
        signature = f"`{self.signature}`".replace("|", "\\|") if self.signature else ""  # | would end the cell
        return {
            "dataset": self.dataset_name,
            "split": self.dataset_split,
            "name": self.metric_name,
            "value": self.value,
            "signature": signature,
        }


@dataclass
class CardSection:
    """A task's part of its runs' cards: what `card_section(run: RunRecord) -> CardSection` in the task's `card.py`
    gives. The card's common parts (architecture, training procedure, data provenance, model-index) come from
    `build_model_card`; `template` is written with both (the common fields and `fields`).

    Args:
        results: the run's results, for the table and the model-index (at least one).
        data: the training data.
        pipeline_tag: the card's pipeline tag (also one of its tags), the usage example's pipeline.
        template: the Jinja template of the card (beside the task's card.py, or `ENCODER_TEMPLATE`).
        example: the input of the usage example.
        evaluation_note: what the results measure, above their table.
        fields: the template's other fields, e.g. the encoder template's `family`, `objective`, `intended_use`,
            `auto_class`, `train_description`, `eval_data`.
        languages: the languages of the run's text when the task knows them; `language` given to
            `build_model_card` overrides them unless `languages_fixed` (a translation model's source and target).
        base_model: the Hub model the run started from, when it did.
        batch_unit: what a batch holds, for the training table ("sequences", "pairs").
        library_name: the library the card's metadata names (sentence-transformers for embedding models).
        tags: tags of the task's own, beside the common ones and the pipeline tag.
    """

    results: list[ResultRow]
    data: DataSource
    pipeline_tag: str
    template: Path
    example: str
    evaluation_note: str
    fields: dict = field(default_factory=dict)
    languages: list[str] | None = None
    languages_fixed: bool = False
    base_model: str | None = None
    batch_unit: str = "sequences"
    library_name: str = "transformers"
    tags: tuple[str, ...] = ()


def architecture_rows(config: dict, parameters: int) -> list[tuple[str, str]]:
    """The card's architecture table, from the model's config.json."""
    rows = [
        ("model type", f"`{config.get('model_type')}` (`{', '.join(config.get('architectures') or [])}`)"),
        ("parameters", f"{parameters:,}"),
    ]
    if "num_decoder_layers" in config:
        rows += [("encoder / decoder layers", f"{config['num_hidden_layers']} / {config['num_decoder_layers']}")]
    elif "num_hidden_layers" in config:
        rows += [("layers", str(config["num_hidden_layers"]))]
    names = {
        "hidden_size": "hidden size",
        "num_attention_heads": "attention heads",
        "intermediate_size": "MLP size",
        "hidden_activation": "MLP activation",
        "norm_type": "normalization",
        "position_embedding_type": "positions",
        "max_position_embeddings": "longest sequence",
        "local_attention": "local attention window",
        "global_attn_every_n_layers": "global attention every",
        "vocab_size": "vocabulary",
        "tie_word_embeddings": "tied embeddings",
        # MarianMTModel and BertForMaskedLM, trained by the same scripts (ModernBertForMaskedLM has our names)
        "d_model": "hidden size",
        "encoder_layers": "encoder layers",
        "decoder_layers": "decoder layers",
        "encoder_attention_heads": "attention heads",
        "encoder_ffn_dim": "MLP size",
        "activation_function": "MLP activation",
        "hidden_act": "MLP activation",
    }
    shown = {key: config[key] for key in names if config.get(key) is not None}
    if config.get("model_type") == "modernbert":  # trained by the same scripts, for comparison
        shown["hidden_activation"] = f"{shown['hidden_activation']} (gated: ModernBERT's MLP is a GLU)"
        if "sliding_attention" not in config.get("layer_types", []):  # (it keeps a window when no layer uses it)
            shown.pop("local_attention", None)
    return rows + [(names[key], f"{value}") for key, value in shown.items()]


def hardware(settings: dict) -> str:
    """What a run trained on: its device, or its segments' in order where a resumed run changed device."""
    devices = [device for device in settings.get("devices") or [settings.get("device")] if device]
    return ", then ".join(dict.fromkeys(devices)) or "not recorded by this run"


def training_rows(run: RunRecord, unit: str = "sequences") -> list[tuple[str, str]]:
    """The card's training-procedure table: optimizer, schedule, batch (of `unit`), steps, hardware, versions."""
    training, train = run.training, run.train_results
    processes = run.settings.get("num_processes", 1)
    batch = training["per_device_batch_size"] * training["gradient_accumulation_steps"] * processes
    schedule = f"{training['lr_schedule']}, {training['warmup_steps']} warmup steps"
    rows = [
        (
            "optimizer",
            f"AdamW (β {training['adam_beta1']}, {training['adam_beta2']}; ε {training['adam_epsilon']}), "
            f"weight decay {training['weight_decay']}",
        ),
        ("learning rate", f"{training['learning_rate']} ({schedule})"),
        (
            "batch",
            f"{batch} {unit} ({training['per_device_batch_size']} per device x "
            f"{training['gradient_accumulation_steps']} accumulation x {processes} "
            f"process{'es' if processes > 1 else ''})",
        ),
        ("steps", f"{train['steps']:,} (stopped by {train.get('stopped_by', 'max_steps')})"),
        ("label smoothing", str(training.get("label_smoothing", 0.0))),
        ("gradient clipping", str(training["max_grad_norm"])),
        ("mixed precision", training["mixed_precision"]),
        ("seed", str(training["seed"])),
    ]
    if training.get("average_last"):
        chosen = run.chosen_evaluation()[0]
        n = chosen.removeprefix("averaged_")
        weights = f"the average of the {n} last checkpoints' weights" if n.isdigit() else f"the checkpoint of {chosen}"
        rows.append(("chosen on validation", f"{weights} (averages of the last {training['average_last']} tried)"))
    tokens = train.get("tokens_seen")
    rows.append(("tokens seen", f"{tokens:,}" if tokens else "not recorded by this run"))
    rows.append(("hardware", hardware(run.settings)))
    rows.append(("wall time", f"{train['seconds'] / 60:.1f} min of training"))
    versions = run.settings.get("versions")
    rows.append(("versions", ", ".join(f"{k} {v}" for k, v in versions.items()) if versions else "not recorded"))
    return rows


def model_exports(model_dir: Path) -> list[dict]:
    """The serving exports beside a model (`ctranslate2/`, `onnx/`): their export.json, with the format's name. A
    stale export (made from other weights, see `hf_encoders.exports`) is left out, and named."""
    found, stale = [], stale_exports(model_dir)
    for folder, reason in stale.items():
        logger.warning("the card leaves out %s: %s", folder, reason)
    for name in EXPORT_FORMATS:
        info_file = model_dir / name / EXPORT_INFO
        if info_file.is_file() and info_file.parent not in stale:
            found.append({**json.loads(info_file.read_text()), "format": name})
    return found


def serving_section(exports: list[dict], model_id: str, hub: bool, example: str, target_language: str | None) -> str:
    """The card's Serving section: each export and how to run it (nothing without exports)."""
    if not exports:
        return ""
    for export in exports:
        if export["format"] == "ctranslate2":
            export["prefix"] = export["target_prefix"].get(target_language)  # None: a tokenizer without tags
        else:
            checked = export["verification"]["float32"]
            export["checked"] = ", ".join(
                f"{name} within {diff:.1e}" for name, diff in checked["max_abs_diff"].items()
            )
    template = jinja2.Template(SERVING_TEMPLATE.read_text(encoding="utf-8"))
    return template.render(exports=exports, model_id=model_id, hub=hub, example=example).strip() + "\n\n"


def adapter_base(run: RunRecord) -> str | None:
    """The Hub id of an adapter's base model (None for a local folder)."""
    base = run.adapter["base_model_name_or_path"]
    return None if is_local(base) else base


def saved_modules(run: RunRecord) -> list[str]:
    """The modules an adapter saves whole (`modules_to_save` that the model has: PEFT adds names of other models')."""
    with safe_open(run.model_dir / "adapter_model.safetensors", "pt") as weights:
        keys = list(weights.keys())
    names = dict.fromkeys(run.adapter.get("modules_to_save") or [])
    return [name for name in names if any(f".{name}." in key for key in keys)]


def adapter_section(run: RunRecord, model_id: str) -> str:
    """The "How to use" of an adapter's card: what it adapts and trains, loading it with PEFT, merging it."""
    from .adapters import TASKS, task_of

    task = task_of(run.adapter.get("task_type"), str(run.model_dir))  # from its config: no PEFT needed to card it
    labels = run.results.get("labels") if TASKS[task].trains_head else None
    template = jinja2.Template(ADAPTER_TEMPLATE.read_text(encoding="utf-8"))
    return (
        template.render(
            adapter=run.adapter,
            targets=", ".join(f"`{name}`" for name in sorted(run.adapter["target_modules"])),
            heads=", ".join(f"`{name}`" for name in saved_modules(run)),
            trainable=run.results.get("trainable_parameters", 0),
            parameters=run.parameters,
            base=run.adapter["base_model_name_or_path"],
            custom_code=run.custom_code,
            peft_class=TASKS[task].auto_class,
            model_id=model_id,
            load_arguments=f", id2label={dict(enumerate(labels))}" if labels else "",
        ).strip()
        + "\n\n"
    )


def card_section(run: RunRecord) -> CardSection:
    """The task's part of the run's card (from the `card.py` of the task that records runs as `run.script`)."""
    task = task_for_script(run.script)
    section = task.module(task.card).card_section(run)
    if not section.results:
        raise ValueError(f"{run.directory}/results.json holds no evaluation results to report.")
    return section


def build_model_card(
    run_dir: "str | Path | RunRecord",
    repo_id: str | None = None,
    license: str = "apache-2.0",
    language: list[str] | None = None,
    base_model: str | None = None,
) -> ModelCard:
    """The model card of a run, from its settings, results, logs and data's SOURCE.md. `repo_id` is where the model
    will live (the usage examples load it from there; without one they load the local model folder); `language`
    the languages of an encoder's text (a translation model's are its source and target); `base_model` the Hub id
    of a LoRA adapter's base model, when it adapted a local copy."""
    run = with_base_model(read_run(run_dir), base_model)
    section = card_section(run)
    model_name = (repo_id or run.directory.resolve().name).split("/")[-1]
    exports = model_exports(run.model_dir)
    tags = ["hf_encoders", *(["custom_code"] if run.custom_code else []), run.model_config.get("model_type", "")]
    tags += [export["format"] for export in exports] + (["peft", "lora"] if run.adapter else [])
    card_data = ModelCardData(
        model_name=model_name,
        language=section.languages if section.languages_fixed else language or section.languages,
        license=license,
        library_name="peft" if run.adapter else section.library_name,
        pipeline_tag=section.pipeline_tag,
        tags=[*tags, *section.tags, section.pipeline_tag],
        eval_results=[row.eval_result() for row in section.results if row.in_model_index],
        datasets=[section.data.hub_id] if section.data.hub_id else None,
        base_model=adapter_base(run) if run.adapter else section.base_model,
    )
    common = dict(
        model_name=model_name,
        model_id=repo_id or str(run.model_dir),
        parameters=run.parameters,
        data=section.data,
        architecture=run.architecture,
        architecture_rows=architecture_rows(run.model_config, run.parameters),
        training_rows=training_rows(run, section.batch_unit),
        results=[row.table_row() for row in section.results],
        script=f"training/{run.script}.py",
        curves="curves.png",
        custom_code=run.custom_code,
        adapter_usage=adapter_section(run, repo_id or str(run.model_dir)) if run.adapter else "",
        pipeline_tag=section.pipeline_tag,
        example=section.example,
        evaluation_note=section.evaluation_note,
        best_metric=run.best_metric,
        serving=serving_section(
            exports,
            repo_id or str(run.model_dir),
            repo_id is not None,
            section.example,
            section.fields.get("target_language"),
        ),
    )
    return ModelCard.from_template(card_data, template_path=str(section.template), **common, **section.fields)


__all__ = [
    "CardSection",
    "DataSource",
    "ResultRow",
    "RunRecord",
    "architecture_rows",
    "build_model_card",
    "describe_data",
    "read_run",
    "training_rows",
]
