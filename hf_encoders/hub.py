"""Model cards written from a run's outputs, and pushing a run to the Hugging Face Hub in one commit.

A *run* is the output folder of a training script (`training/pretrain_mlm.py`, `training/train_translation.py`):
`config.json` (its resolved settings, device and library versions), `results.json`, `metrics.jsonl`, `curves.png`,
and the exported models `best/` and `final/`. From these alone

    card = build_model_card("runs/de_en", repo_id="me/hf-seq2seq-multi30k-de-en")   # a huggingface_hub ModelCard
    push_to_hub("runs/de_en", "me/hf-seq2seq-multi30k-de-en", private=True)       # card, weights, code, results

write the card (from the Jinja templates in `model_cards/templates/`, which ship inside the package as
`hf_encoders/card_templates/`) and upload the pushed model's folder with it. `hf-encoders card` and
`hf-encoders push` are the same on the command line.
"""

import gzip
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
from huggingface_hub import CommitOperationAdd, EvalResult, HfApi, ModelCard, ModelCardData
from huggingface_hub.errors import HfHubHTTPError
from huggingface_hub.repocard_data import model_index_to_eval_results

from .data import _aligned_files, is_local, monolingual_source_name, parse_named_source
from .plots import plot_training_curves

# Network errors of the HTTP client huggingface_hub talks through: httpx2 from huggingface_hub 2 on, httpx before.
TransportError = importlib.import_module(
    "httpx2" if int(huggingface_hub.__version__.split(".")[0]) >= 2 else "httpx"
).TransportError

logger = logging.getLogger(__name__)

CARD_TEMPLATES = Path(__file__).resolve().parent / "card_templates"
# what goes up from the model folder: weights as safetensors only, config, tokenizer, generation config, the
# self-contained code named by `auto_map`, and the test hypotheses, scores and predictions written beside it
MODEL_FILES = ("config.json", "generation_config.json", "*.safetensors", "model.safetensors.index.json",
               "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "*.py",
               "hypotheses.*", "scores.*.json", "predictions.*.jsonl")  # fmt: skip
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
# what goes up from the run folder, under which name (config.json is the model's in a repository)
RUN_FILES = {"results.json": "eval_results.json", "config.json": "training_config.json",
             "metrics.jsonl": "training_metrics.jsonl"}  # fmt: skip
LANGUAGES = {"cs": "Czech", "de": "German", "en": "English", "fr": "French"}
RETRIED_STATUSES = (408, 429, 500, 502, 503, 504)


@dataclass
class Run:
    """A training run's outputs, read and checked."""

    directory: Path
    settings: dict  # config.json: what the script was run with
    results: dict  # results.json
    model_dir: Path  # the model that is pushed: the one the results are about
    model_config: dict

    @property
    def script(self) -> str:
        return self.settings.get("script", "")


def read_run(run_dir: "str | Path | Run") -> Run:
    """Read a run folder, refusing (with what is missing and why) one that cannot make a complete repository."""
    if isinstance(run_dir, Run):
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
    model_dir = next((path for path in candidates if (path / "config.json").is_file()), None)
    if model_dir is None:
        raise FileNotFoundError(f"{directory} holds no exported model ({' or '.join(map(str, candidates))}).")
    if not any(model_dir.glob("*.safetensors")):
        pickles = sorted(path.name for path in model_dir.iterdir() if path.suffix in PICKLE_SUFFIXES)
        raise FileNotFoundError(
            f"{model_dir} has no safetensors weights"
            + (f" (only {', '.join(pickles)}: pickle files are never uploaded; re-save with save_pretrained)."
               if pickles else ".")
        )  # fmt: skip
    if not (model_dir / "tokenizer.json").is_file() and not (model_dir / "tokenizer_config.json").is_file():
        raise FileNotFoundError(f"{model_dir} has no tokenizer (tokenizer.json / tokenizer_config.json).")
    return Run(directory, settings, results, model_dir, json.loads((model_dir / "config.json").read_text()))


def describe_data(spec: str) -> dict:
    """What a card says about a data set: its title, where it came from and its license, from the SOURCE.md of a
    local data folder, or a link for a Hub id."""
    path = Path(spec)
    if not is_local(spec):
        return {"title": spec, "name": spec, "location": f"Hub dataset `{spec}`", "url": f"https://huggingface.co/datasets/{spec}",
                "source": None, "license": None, "hub_id": spec}  # fmt: skip
    info = {"title": path.name, "name": path.name, "location": f"local folder `{path.name}`", "url": None,
            "source": None, "license": None, "hub_id": None}  # fmt: skip
    source_file = path / "SOURCE.md"
    if not path.exists():
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
    return info


ENCODER_FAMILY = "encoder (a BERT/ModernBERT-style transformer)"
SEQ2SEQ_FAMILY = "encoder-decoder (a BART-style transformer)"


def _language(code: str) -> str:
    return LANGUAGES.get(code, code)


def _architecture_rows(config: dict, parameters: int) -> list[tuple[str, str]]:
    rows = [("model type", f"`{config.get('model_type')}` (`{', '.join(config.get('architectures') or [])}`)"),
            ("parameters", f"{parameters:,}")]  # fmt: skip
    if "num_decoder_layers" in config:
        rows += [("encoder / decoder layers", f"{config['num_hidden_layers']} / {config['num_decoder_layers']}")]
    elif "num_hidden_layers" in config:
        rows += [("layers", str(config["num_hidden_layers"]))]
    names = {"hidden_size": "hidden size", "num_attention_heads": "attention heads",
             "intermediate_size": "MLP size", "hidden_activation": "MLP activation", "norm_type": "normalization",
             "position_embedding_type": "positions", "max_position_embeddings": "longest sequence",
             "local_attention": "local attention window", "global_attn_every_n_layers": "global attention every",
             "vocab_size": "vocabulary", "tie_word_embeddings": "tied embeddings",
             # MarianMTModel and BertForMaskedLM, trained by the same scripts
             "d_model": "hidden size", "encoder_layers": "encoder layers", "decoder_layers": "decoder layers",
             "encoder_attention_heads": "attention heads", "encoder_ffn_dim": "MLP size",
             "activation_function": "MLP activation", "hidden_act": "MLP activation"}  # fmt: skip
    return rows + [(name, f"{config[key]}") for key, name in names.items() if config.get(key) is not None]


def _training_rows(run: Run) -> list[tuple[str, str]]:
    training, train = run.settings.get("training", {}), run.results.get("train", run.results)
    processes = run.settings.get("num_processes", 1)
    batch = training["per_device_batch_size"] * training["gradient_accumulation_steps"] * processes
    unit = "pairs" if run.script == "train_translation" else "sequences"
    schedule = f"{training['lr_schedule']}, {training['warmup_steps']} warmup steps"
    rows = [("optimizer", f"AdamW (β {training['adam_beta1']}, {training['adam_beta2']}; ε {training['adam_epsilon']}), "
                          f"weight decay {training['weight_decay']}"),
            ("learning rate", f"{training['learning_rate']} ({schedule})"),
            ("batch", f"{batch} {unit} ({training['per_device_batch_size']} per device x "
                      f"{training['gradient_accumulation_steps']} accumulation x {processes} "
                      f"process{'es' if processes > 1 else ''})"),
            ("steps", f"{train['steps']:,} (stopped by {train.get('stopped_by', 'max_steps')})"),
            ("label smoothing", str(training.get("label_smoothing", 0.0))),
            ("gradient clipping", str(training["max_grad_norm"])),
            ("mixed precision", training["mixed_precision"]),
            ("seed", str(training["seed"]))]  # fmt: skip
    tokens = train.get("tokens_seen")
    rows.append(("tokens seen", f"{tokens:,}" if tokens else "not recorded by this run"))
    rows.append(("hardware", run.settings.get("device") or "not recorded by this run"))
    rows.append(("wall time", f"{train['seconds'] / 60:.1f} min of training"))
    versions = run.settings.get("versions")
    rows.append(("versions", ", ".join(f"{k} {v}" for k, v in versions.items()) if versions else "not recorded"))
    return rows


def chosen_metrics(run: Run) -> dict[str, float]:
    """The validation metrics of the model the card is about: those of the evaluation that made it `best/` (from the
    run's metrics.jsonl), else the final evaluation's."""
    training = run.settings.get("training", {})
    final = run.results.get("train", run.results).get("metrics", {})
    best_metric, log = training.get("best_metric"), run.directory / "metrics.jsonl"
    if run.model_dir.name != "best" or not best_metric or not log.is_file():
        return final
    evaluated = [
        row for line in log.read_text().splitlines() if line.strip() and best_metric in (row := json.loads(line))
    ]
    if not evaluated:
        return final
    return (max if training.get("greater_is_better") else min)(evaluated, key=lambda row: row[best_metric])


def _translation_results(run: Run) -> tuple[list[dict], dict]:
    data, test = run.settings["data"], run.results["test"]
    src, tgt = data["src"], data["tgt"]
    dataset = describe_data(data["data"])
    task = {"task_type": "translation", "task_name": f"Translation {_language(src)} to {_language(tgt)}",
            "dataset_type": dataset["hub_id"] or dataset["name"], "dataset_name": dataset["title"],
            "dataset_config": f"{src}-{tgt}"}  # fmt: skip
    names = {"bleu": ("bleu", "BLEU"), "bleu_lowercased": ("bleu", "BLEU (lowercased)"), "chrf": ("chrf", "chrF")}
    rows = [{**task, "dataset_split": test["split"], "metric_type": names[key][0], "metric_name": names[key][1],
             "value": test[key]["score"], "signature": test[key]["signature"],
             "metric_args": {"signature": test[key]["signature"], "num_beams": test["num_beams"]}}
            for key in names if key in test]  # fmt: skip
    validation = chosen_metrics(run)
    rows += [{**task, "dataset_split": "validation", "metric_type": names[key][0],
              "metric_name": f"{names[key][1]} (greedy)", "value": validation[f"validation/{key}"], "signature": None,
              "model_index": False}
             for key in names if f"validation/{key}" in validation]  # fmt: skip
    return rows, dataset


def _masked_lm_results(run: Run) -> tuple[list[dict], dict]:
    data, metrics = run.settings["data"], chosen_metrics(run)
    rows = []
    for entry in data.get("eval_data", []):
        name, spec, split = parse_named_source(entry)
        dataset = describe_data(spec)
        for key, metric_name in (("perplexity", "perplexity (masked tokens)"), ("accuracy", "masked-token accuracy")):
            if f"{name}/{key}" in metrics:
                rows.append({"task_type": "fill-mask", "task_name": "Masked language modelling",
                             "dataset_type": dataset["hub_id"] or dataset["name"], "dataset_name": dataset["title"],
                             "dataset_config": None, "dataset_split": split, "metric_type": key,
                             "metric_name": metric_name, "value": metrics[f"{name}/{key}"], "signature": None,
                             "metric_args": {"mlm_probability": data["mlm_probability"]}})  # fmt: skip
    return rows, describe_data(data["train_data"])


def _classification_results(run: Run) -> tuple[list[dict], dict]:
    data, results = run.settings["data"], run.results
    dataset = describe_data(data["data"])
    task = {"task_type": "token-classification" if results["task"] == "token" else "text-classification",
            "task_name": f"{results['task'].replace('_', '-')} classification" if results["task"] != "regression"
            else "regression", "dataset_type": dataset["hub_id"] or dataset["name"],
            "dataset_name": dataset["title"], "dataset_config": None}  # fmt: skip
    test = {key: value for key, value in results.get("test", {}).items() if key not in ("split", "examples")}
    validation = {key.partition("/")[2]: value for key, value in chosen_metrics(run).items()
                  if key.startswith("validation/")}  # fmt: skip
    rows = []
    for split, metrics, in_index in ((results.get("test", {}).get("split"), test, True),
                                     (data["validation_split"], validation, not test)):  # fmt: skip
        rows += [{**task, "dataset_split": split, "metric_type": key, "metric_name": key.replace("_", " "),
                  "value": value, "signature": None, "model_index": in_index}
                 for key, value in metrics.items() if isinstance(value, int | float)]  # fmt: skip
    return rows, dataset


LATENT_METRICS = {"kl_per_sentence": "KL per sentence (nats)", "active_units": "active latent units",
                  "reconstruction_bleu": "reconstruction BLEU (greedy, posterior mean)",
                  "reconstruction_chrf": "reconstruction chrF (greedy, posterior mean)"}  # fmt: skip


def _text_sources(run: Run) -> list[tuple[str, str, str]]:
    """(language, data spec, metrics name) of each `language=path-or-hub-id[:split]` source of a denoising run."""
    sources = []
    for entry in run.settings["data"]["texts"]:
        language, spec, _ = parse_named_source(entry, default_split="train", what="language")
        sources.append((language, spec, monolingual_source_name(language, spec)))
    return sources


def _denoising_results(run: Run) -> tuple[list[dict], dict]:
    metrics, sources = chosen_metrics(run), _text_sources(run)
    variational = bool(run.settings["model"].get("latent_size"))
    noise = {key: run.settings["noise"][key] for key in ("mask_ratio", "poisson_lambda", "permute_sentence_ratio")}
    task = {"task_type": "text2text-generation",
            "task_name": "Sentence autoencoding" if variational else "Denoising autoencoding"}  # fmt: skip
    rows = []
    for index, (language, spec, name) in enumerate(sources):
        dataset = describe_data(spec)
        where = {**task, "dataset_type": dataset["hub_id"] or dataset["name"],
                 "dataset_name": f"{dataset['title']} ({language})", "dataset_config": language,
                 "dataset_split": "validation", "signature": None}  # fmt: skip
        for key, metric_name in (("perplexity", "reconstruction perplexity"),
                                 ("accuracy", "reconstruction token accuracy")):  # fmt: skip
            if f"{name}/{key}" in metrics:
                rows.append({**where, "metric_type": key, "metric_name": metric_name, "value": metrics[f"{name}/{key}"],
                             "metric_args": noise})  # fmt: skip
        if index == 0:  # the latent figures are measured on the first source's clean validation sentences
            rows += [{**where, "metric_type": key, "metric_name": metric_name, "value": metrics[f"latent/{key}"]}
                     for key, metric_name in LATENT_METRICS.items() if f"latent/{key}" in metrics]  # fmt: skip
    return rows, describe_data(sources[0][1])


def evaluation_results(run: Run) -> tuple[list[dict], dict]:
    """The run's results as rows (task, dataset, split, metric, value, signature; `model_index: False` for those
    that stay out of the card's metadata) and its training data."""
    readers = {"train_translation": _translation_results, "pretrain_mlm": _masked_lm_results,
               "finetune_classification": _classification_results,
               "pretrain_denoising": _denoising_results}  # fmt: skip
    if run.script not in readers:
        raise ValueError(f"No model card for runs of {run.script!r}; cards exist for {sorted(readers)}.")
    rows, data = readers[run.script](run)
    if not rows:
        raise ValueError(f"{run.directory}/results.json holds no evaluation results to report.")
    return rows, data


def build_model_card(
    run_dir: "str | Path | Run",
    repo_id: str | None = None,
    license: str = "apache-2.0",
    language: list[str] | None = None,
) -> ModelCard:
    """The model card of a run, from its settings, results, logs and data's SOURCE.md. `repo_id` is where the model
    will live (the usage examples load it from there; without one they load the local model folder); `language`
    the languages of an encoder's text (a translation model's are its source and target)."""
    run = read_run(run_dir)
    rows, data = evaluation_results(run)
    model_id = repo_id or str(run.model_dir)
    model_name = (repo_id or run.directory.resolve().name).split("/")[-1]
    eval_results = [
        EvalResult(task_type=row["task_type"], task_name=row["task_name"], dataset_type=row["dataset_type"],
                   dataset_name=row["dataset_name"], dataset_config=row["dataset_config"],
                   dataset_split=row["dataset_split"], metric_type=row["metric_type"],
                   metric_name=row["metric_name"], metric_value=round(row["value"], 4),
                   metric_args=row.get("metric_args"))
        for row in rows if row.get("model_index", True)  # not the validation scores a checkpoint was chosen on
    ]  # fmt: skip
    parameters = run.results.get("parameters") or run.settings.get("parameters", 0)
    common = {"model_name": model_name, "model_id": model_id, "parameters": parameters, "data": data,
              "architecture": (run.model_config.get("architectures") or ["?"])[0],
              "architecture_rows": _architecture_rows(run.model_config, parameters),
              "training_rows": _training_rows(run), "results": [_table_row(row) for row in rows],
              "script": f"training/{run.script}.py", "curves": "curves.png"}  # fmt: skip
    custom_code = "auto_map" in run.model_config  # ours; a BERT or Marian run of the same scripts is transformers'
    common["custom_code"] = custom_code
    tags = ["hf_encoders"] + (["custom_code"] if custom_code else []) + [run.model_config.get("model_type", "")]
    if run.script == "train_translation":
        src, tgt = run.settings["data"]["src"], run.settings["data"]["tgt"]
        test = run.results["test"]
        card_data = ModelCardData(
            model_name=model_name, language=[src, tgt], license=license, library_name="transformers",
            pipeline_tag="translation", tags=tags + ["translation"], eval_results=eval_results,
            datasets=[data["hub_id"]] if data["hub_id"] else None,
        )  # fmt: skip
        return ModelCard.from_template(
            card_data, template_path=str(CARD_TEMPLATES / "translation.md"), **common,
            source_language=src, target_language=tgt, source_language_name=_language(src),
            target_language_name=_language(tgt), test_split=test["split"], test_num_beams=test["num_beams"],
            headline={key: test[key]["score"] for key in ("bleu", "chrf")}, train_examples=run.results["train_pairs"],
            tokenizer=run.settings["data"].get("tokenizer_model", ""), vocab_size=run.model_config["vocab_size"],
            example=_first_test_source(run),
            evaluation_note=(f"sacreBLEU on the detokenized `{test['split']}` references ({test['examples']:,} "
                             f"sentences), beam search {test['num_beams']}, with the signatures that make the numbers "
                             "comparable; the validation rows are the greedy scores the checkpoint was chosen on"
                             + (f" (the first {examples:,} validation sentences)." if (examples := run.settings.get(
                                 "evaluation", {}).get("eval_max_examples")) else ".")),
        )  # fmt: skip
    if run.script == "finetune_classification":
        data_settings, labels = run.settings["data"], run.results["labels"]
        token = run.results["task"] == "token"
        pipeline_tag = "token-classification" if token else "text-classification"
        base = run.settings["model"]["model"]
        card_data = ModelCardData(
            model_name=model_name, language=language, license=license, library_name="transformers",
            pipeline_tag=pipeline_tag, tags=tags + [pipeline_tag], eval_results=eval_results,
            datasets=[data["hub_id"]] if data["hub_id"] else None,
            base_model=base if not Path(base).exists() else None,
        )  # fmt: skip
        return ModelCard.from_template(
            card_data, template_path=str(CARD_TEMPLATES / "encoder.md"), **common, family=ENCODER_FAMILY,
            objective=f"fine-tuned from `{base if not Path(base).exists() else '/'.join(Path(base).parts[-2:])}` for {run.results['task'].replace('_', '-')} "
                      f"{'regression' if run.results['task'] == 'regression' else 'classification'} "
                      f"(labels: {', '.join(labels)})",
            intended_use=f"Labelling {'words' if token else 'texts'} like those of {data['title']} with "
                         f"{', '.join(labels)}.",
            auto_class="AutoModelForTokenClassification" if token else "AutoModelForSequenceClassification",
            pipeline_tag=pipeline_tag, example="A sentence to label.",
            train_description=f"{run.results['train_examples']:,} examples of split `{data_settings['train_split']}`",
            eval_data=[], best_metric=run.settings["training"].get("best_metric") or "final step",
            evaluation_note=(f"Scores of the `{data_settings['validation_split']}` split (the checkpoint was chosen "
                             "on it)" + (f" and of the `{run.results['test']['split']}` split" if
                                        any(row["dataset_split"] != data_settings["validation_split"] for row in rows)
                                        else "") + "."),
        )  # fmt: skip
    if run.script == "pretrain_denoising":
        return _denoising_card(run, common, tags, eval_results, data, license, language)
    mlm = run.settings["data"]
    card_data = ModelCardData(
        model_name=model_name, language=language, license=license, library_name="transformers",
        pipeline_tag="fill-mask", tags=tags + ["fill-mask"], eval_results=eval_results,
        datasets=[data["hub_id"]] if data["hub_id"] else None,
    )  # fmt: skip
    others = [describe_data(parse_named_source(entry)[1]) for entry in mlm.get("eval_data", [])]
    return ModelCard.from_template(
        card_data, template_path=str(CARD_TEMPLATES / "encoder.md"), **common, family=ENCODER_FAMILY,
        objective=f"pretrained with masked-language modelling ({mlm['mlm_probability']:.0%} of tokens masked)",
        intended_use="Fine-tuning for text classification, token classification or embeddings in its domain, and "
                     "filling in masked words.",
        auto_class="AutoModelForMaskedLM", pipeline_tag="fill-mask", example=f"This movie was {_mask_token(run)}.",
        train_description=(f"split `{mlm['train_split']}`, packed into blocks of {mlm['block_size']} tokens "
                           f"({run.results.get('train_tokens_per_epoch', 0):,} tokens per epoch)"),
        eval_data=[other for other in others if other["title"] != data["title"]],
        best_metric=run.settings["training"].get("best_metric") or "final step",
        evaluation_note=(f"Masked-token perplexity and accuracy with {mlm['mlm_probability']:.0%} of the tokens "
                         "masked, on held-out documents packed as in training."),
    )  # fmt: skip


def _denoising_card(
    run: Run,
    common: dict,
    tags: list[str],
    eval_results: list[EvalResult],
    data: dict,
    license: str,
    language: list[str] | None,
) -> ModelCard:
    """The card of a denoising autoencoder or, with a latent bottleneck, a sentence VAE (training/pretrain_denoising.py)."""
    model, noise, settings = run.settings["model"], run.settings["noise"], run.settings["data"]
    sources = _text_sources(run)
    languages = sorted({source_language for source_language, _, _ in sources})
    corruption = [part for part, on in (("sentence permutation", noise["permute_sentence_ratio"] > 0),
                                        (f"text infilling ({noise['mask_ratio']:.0%} of the words hidden in spans of "
                                         f"Poisson({noise['poisson_lambda']:g}) lengths)", noise["mask_ratio"] > 0))
                  if on]  # fmt: skip
    noised = f" from a copy corrupted by {' and '.join(corruption)}" if corruption else ""
    if model.get("latent_size"):
        objective = (f"trained as a sentence variational autoencoder: a {model['latent_size']}-dimensional Gaussian "
                     f"latent, read by the decoder through {model['latent_memory_tokens']} memory vectors, "
                     f"rebuilds the text{noised} (KL free bits {model['kl_free_bits']:g}, "
                     + (f"KL weight annealed from 0 to 1 over {noise['kl_annealing_steps']:,} steps)"
                        if noise["kl_annealing_steps"] else "full KL weight from the start)"))  # fmt: skip
        intended_use = ("Sentence embeddings (the posterior mean, `model.encode_latent(...)`), sampling sentences "
                        "from the prior and interpolating between sentences (`model.generate(latent=...)`).")  # fmt: skip
        example = "A man rides a horse on the beach."
    else:
        objective = f"pretrained as a denoising autoencoder: it rebuilds text{noised}"
        intended_use = ("Initialising translation and other text-to-text models (`training/train_translation.py "
                        "--init_from`), and filling in masked spans of text.")  # fmt: skip
        example = f"A man {_mask_token(run)} on the beach."
    card_data = ModelCardData(
        model_name=common["model_name"], language=language or languages, license=license,
        library_name="transformers", pipeline_tag="text2text-generation", tags=tags + ["text2text-generation"],
        eval_results=eval_results, datasets=[data["hub_id"]] if data["hub_id"] else None,
    )  # fmt: skip
    others = {
        other["title"]: other for _, spec, _ in sources[1:] if (other := describe_data(spec))["title"] != data["title"]
    }
    latent_note = (
        f" The latent figures come from the first {run.settings['evaluation']['reconstruction_examples']:,} clean "
        f"validation sentences of {sources[0][2]}: the KL of the posterior from the prior per sentence, the latent "
        "dimensions whose posterior mean varies across sentences (variance above 0.01), and BLEU/chrF of greedy "
        "reconstructions from the posterior mean." if model.get("latent_size") else ""
    )  # fmt: skip
    return ModelCard.from_template(
        card_data, template_path=str(CARD_TEMPLATES / "encoder.md"), **common, family=SEQ2SEQ_FAMILY,
        objective=objective, intended_use=intended_use, auto_class="AutoModelForSeq2SeqLM",
        pipeline_tag="text2text-generation", example=example,
        train_description=(f"{', '.join(name for _, _, name in sources)}: {run.results['train_segments']:,} segments "
                           f"of whole sentences, at most {settings['max_length']} tokens each "
                           f"({run.results['train_tokens_per_epoch']:,} target tokens per epoch)"),
        eval_data=list(others.values()), best_metric=run.settings["training"].get("best_metric") or "final step",
        evaluation_note=("Teacher-forced reconstruction perplexity and token accuracy on each source's validation "
                         "split, corrupted by the training noise (the same draw at every evaluation)."
                         + latent_note),
    )  # fmt: skip


def _table_row(row: dict) -> dict:
    signature = f"`{row['signature']}`".replace("|", "\\|") if row["signature"] else ""  # | would end the cell
    return {"dataset": row["dataset_name"], "split": row["dataset_split"], "name": row["metric_name"],
            "value": row["value"], "signature": signature}  # fmt: skip


def _mask_token(run: Run) -> str:
    tokenizer_config = run.model_dir / "tokenizer_config.json"
    mask = json.loads(tokenizer_config.read_text()).get("mask_token") if tokenizer_config.is_file() else None
    return (mask.get("content") if isinstance(mask, dict) else mask) or "[MASK]"


def _first_test_source(run: Run) -> str:
    """A real source sentence for the usage examples: the first test sentence, when the data is a local folder."""
    data = run.settings["data"]
    if not Path(data["data"]).is_dir():
        return "..."
    path = _aligned_files(data["data"]).get(run.results["test"]["split"], {}).get(data["src"])
    if path is None:
        return "..."
    with gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else path.open(encoding="utf-8") as handle:
        return handle.readline().strip().replace('"', "'")


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
    run_dir: str | Path, repo_id: str | None = None, license: str = "apache-2.0", language: list[str] | None = None
) -> dict[str, bytes]:
    """Every file of the repository-to-be, path in the repository -> content. The card is the run's README.md when
    there is one (written by `hf-encoders card`, perhaps edited), else it is built; either way it must pass the
    metadata checks the Hub applies."""
    run = read_run(run_dir)
    files: dict[str, bytes] = {}
    for pattern in MODEL_FILES:
        for path in sorted(run.model_dir.glob(pattern)):
            files[path.name] = path.read_bytes()
    if "auto_map" not in run.model_config and run.model_config.get("model_type", "").startswith("hf_"):
        raise ValueError(f"{run.model_dir}/config.json has no auto_map: save it with hf_encoders imported.")
    for name, path_in_repo in RUN_FILES.items():
        if (run.directory / name).is_file():
            files[path_in_repo] = (run.directory / name).read_bytes()
    if (run.directory / "curves.png").is_file():
        files["curves.png"] = (run.directory / "curves.png").read_bytes()
    elif (run.directory / "metrics.jsonl").is_file():  # a run from before curves were drawn: draw them now
        with tempfile.TemporaryDirectory() as scratch:
            curves = plot_training_curves(run.directory / "metrics.jsonl", Path(scratch) / "curves.png",
                                          title=run.directory.resolve().name)  # fmt: skip
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
    retries: int = 3,
    retry_wait: float = 2.0,
) -> PushResult:
    """Upload a run's model, card and results to `repo_id` as one commit (created with the repository if needed).

    The commit is atomic: it lands whole or not at all. A transient failure (network error, 429 or 5xx answer) is
    retried up to `retries` times, waiting `retry_wait` seconds and twice as long each time; each attempt names the
    commit it builds on, so a retry can never land a second copy on top of one that did land. `endpoint` is the Hub
    to talk to (default: `HF_ENDPOINT`, else https://huggingface.co).
    """
    files = upload_plan(run_dir, repo_id, license, language)
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
            info = api.create_commit(repo_id, operations, commit_message=message, revision=branch,
                                     create_pr=create_pr, parent_commit=parent)  # fmt: skip
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
    return result


__all__ = [
    "build_model_card",
    "card_metadata_errors",
    "checked_card",
    "push_to_hub",
    "read_run",
    "upload_plan",
    "PushResult",
]
