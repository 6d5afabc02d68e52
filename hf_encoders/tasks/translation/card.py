"""The model card's section of a translation run: sacreBLEU and chrF of the test split with their signatures (and
the greedy validation scores the checkpoint was chosen on), a translation example from the test data."""

import gzip
from pathlib import Path

from ...cards import CardSection, ResultRow, RunRecord, describe_data
from ...data import aligned_files

TEMPLATE = Path(__file__).resolve().with_name("card.md")
LANGUAGES = {"cs": "Czech", "de": "German", "en": "English", "fr": "French"}
SCORES = {"bleu": ("bleu", "BLEU"), "bleu_lowercased": ("bleu", "BLEU (lowercased)"), "chrf": ("chrf", "chrF")}


def language_name(code: str) -> str:
    return LANGUAGES.get(code, code)


def first_test_source(run: RunRecord) -> str:
    """A real source sentence for the usage examples: the first test sentence, when the data is a local folder."""
    data = run.data
    folder = Path(run.data_source(data["data"]).get("path", data["data"]))  # where the run read it, when recorded
    if not folder.is_dir():
        return "..."
    path = aligned_files(folder).get(run.results["test"]["split"], {}).get(data["src"])
    if path is None:
        return "..."
    with gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else path.open(encoding="utf-8") as handle:
        return handle.readline().strip().replace('"', "'")


def card_section(run: RunRecord) -> CardSection:
    data, test = run.data, run.results["test"]
    decoding = {"num_beams": test["num_beams"], "length_penalty": test.get("length_penalty", 1.0)}
    tuned = len(test.get("decoding_on_validation") or []) > 1
    src, tgt = data["src"], data["tgt"]
    dataset = describe_data(data["data"], run)
    task = dict(
        task_type="translation",
        task_name=f"Translation {language_name(src)} to {language_name(tgt)}",
        dataset_type=dataset.dataset_type,
        dataset_name=dataset.title,
        dataset_config=f"{src}-{tgt}",
    )
    rows = [
        ResultRow(
            **task,
            dataset_split=test["split"],
            metric_type=metric_type,
            metric_name=metric_name,
            value=test[key]["score"],
            signature=test[key]["signature"],
            metric_args={"signature": test[key]["signature"], **decoding},
        )
        for key, (metric_type, metric_name) in SCORES.items()
        if key in test
    ]
    validation = run.chosen_metrics()
    rows += [
        ResultRow(
            **task,
            dataset_split="validation",
            metric_type=metric_type,
            metric_name=f"{metric_name} (greedy)",
            value=validation[f"validation/{key}"],
            in_model_index=False,
        )
        for key, (metric_type, metric_name) in SCORES.items()
        if f"validation/{key}" in validation
    ]
    examples = run.settings.get("evaluation", {}).get("eval_max_examples")
    return CardSection(
        results=rows,
        data=dataset,
        pipeline_tag="translation",
        template=TEMPLATE,
        example=first_test_source(run),
        evaluation_note=(
            f"sacreBLEU on the detokenized `{test['split']}` references ({test['examples']:,} sentences), beam search "
            f"{test['num_beams']}, length penalty {decoding['length_penalty']}"
            + (f" (chosen among {len(test['decoding_on_validation'])} on validation BLEU)" if tuned else "")
            + ", with the signatures that make the numbers comparable; the validation rows are the greedy scores the "
            "model was chosen on" + (f" (the first {examples:,} validation sentences)." if examples else ".")
        ),
        fields=dict(
            source_language=src,
            target_language=tgt,
            source_language_name=language_name(src),
            target_language_name=language_name(tgt),
            test_split=test["split"],
            test_num_beams=test["num_beams"],
            test_length_penalty=decoding["length_penalty"],
            headline={key: test[key]["score"] for key in ("bleu", "chrf")},
            train_examples=run.results["train_pairs"],
            tokenizer=data.get("tokenizer_model", ""),
            vocab_size=run.model_config["vocab_size"],
        ),
        languages=[src, tgt],
        languages_fixed=True,
        batch_unit="pairs",
    )
