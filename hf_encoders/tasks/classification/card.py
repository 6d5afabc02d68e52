"""The model card's section of a fine-tuning run: the test scores (the validation scores the checkpoint was chosen
on stay out of the model-index when there are test scores), the labels, a classification example."""

import json
from pathlib import Path

from ...cards import ENCODER_FAMILY, ENCODER_TEMPLATE, CardSection, ResultRow, RunRecord, describe_data


def card_section(run: RunRecord) -> CardSection:
    data, results, labels = run.data, run.results, run.results["labels"]
    chosen_on = results.get("validation_split", data["validation_split"])  # or examples held out of train
    kind, token = results["task"], results["task"] == "token"
    dataset = describe_data(data["data"], run)
    task = dict(
        task_type="token-classification" if token else "text-classification",
        task_name=f"{kind.replace('_', '-')} classification" if kind != "regression" else "regression",
        dataset_type=dataset.dataset_type,
        dataset_name=dataset.title,
        dataset_config=None,
    )
    test = {key: value for key, value in results.get("test", {}).items() if key not in ("split", "examples")}
    validation = {
        key.partition("/")[2]: value for key, value in run.chosen_metrics().items() if key.startswith("validation/")
    }
    rows = [
        ResultRow(
            **task,
            dataset_split=split,
            metric_type=key,
            metric_name=key.replace("_", " "),
            value=value,
            in_model_index=in_index,
        )
        for split, metrics, in_index in (
            (results.get("test", {}).get("split"), test, True),
            (chosen_on, validation, not test),
        )
        for key, value in metrics.items()
        if isinstance(value, int | float)
    ]
    base = run.settings["model"]["model"]
    local_base = Path(base).exists()
    if "base_pretraining_tokens" in results:  # counted when the fine-tuning ran
        tokens = results["base_pretraining_tokens"]
    else:
        tokens = count_of_older_run(Path(base), run)
    pretrained = f" (pretrained on {tokens:,} tokens)" if tokens else ""
    pipeline_tag = "token-classification" if token else "text-classification"
    tested = any(row.dataset_split != chosen_on for row in rows)
    return CardSection(
        results=rows,
        data=dataset,
        pipeline_tag=pipeline_tag,
        template=ENCODER_TEMPLATE,
        example="A sentence to label.",
        evaluation_note=(
            f"Scores of the `{chosen_on}` split (the checkpoint was chosen on it)"
            + (f" and of the `{results['test']['split']}` split" if tested else "")
            + "."
        ),
        fields=dict(
            family=ENCODER_FAMILY,
            objective=(
                f"fine-tuned from `{'/'.join(Path(base).parts[-2:]) if local_base else base}`{pretrained} for "
                f"{kind.replace('_', '-')} {'regression' if kind == 'regression' else 'classification'} "
                f"(labels: {', '.join(labels)})"
            ),
            intended_use=f"Labelling {'words' if token else 'texts'} like those of {dataset.title} with "
            f"{', '.join(labels)}.",
            auto_class="AutoModelForTokenClassification" if token else "AutoModelForSequenceClassification",
            train_description=f"{results['train_examples']:,} examples of split `{data['train_split']}`",
            eval_data=[],
        ),
        base_model=None if local_base else base,
    )


def count_of_older_run(base: Path, run: RunRecord) -> int | None:
    """The base's tokens for a run of hf_encoders < 0.4.2, which did not record them: read from the base run, unless
    that run has changed since the fine-tuning ended (resumed in place, its count would describe a later model)."""
    base_results = base.parent / "results.json"
    if base_results.is_file() and base_results.stat().st_mtime > (run.directory / "results.json").stat().st_mtime:
        return None
    return pretraining_tokens(base)


def pretraining_tokens(base: Path) -> int | None:
    """The tokens a local base model was pretrained on, when it is the export (`RUN/best`, `RUN/final`) of a
    pretraining run of this package, whose results.json counts them."""
    settings, results = base.parent / "config.json", base.parent / "results.json"
    if not (base.is_dir() and settings.is_file() and results.is_file()):  # a Hub id is no folder here
        return None
    if not str(json.loads(settings.read_text()).get("script", "")).startswith("pretrain"):
        return None
    return json.loads(results.read_text()).get("tokens_seen")
