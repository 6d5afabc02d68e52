"""The model card's section of a masked-LM pretraining run: masked-token perplexity and accuracy on each held-out set,
a fill-mask example."""

from ...cards import ENCODER_FAMILY, ENCODER_TEMPLATE, CardSection, ResultRow, RunRecord, describe_data
from ...data import parse_named_source

METRICS = {"perplexity": "perplexity (masked tokens)", "accuracy": "masked-token accuracy"}


def card_section(run: RunRecord) -> CardSection:
    data, metrics = run.data, run.chosen_metrics()
    trained_on = describe_data(data["train_data"], run)
    rows, held_out = [], []
    for entry in data.get("eval_data", []):
        name, spec, split = parse_named_source(entry)
        dataset = describe_data(spec, run)
        held_out.append(dataset)
        rows += [
            ResultRow(
                task_type="fill-mask",
                task_name="Masked language modelling",
                dataset_type=dataset.dataset_type,
                dataset_name=dataset.title,
                dataset_config=None,
                dataset_split=split,
                metric_type=key,
                metric_name=metric_name,
                value=metrics[f"{name}/{key}"],
                metric_args={"mlm_probability": data["mlm_probability"]},
            )
            for key, metric_name in METRICS.items()
            if f"{name}/{key}" in metrics
        ]
    masked = f"{data['mlm_probability']:.0%}"
    return CardSection(
        results=rows,
        data=trained_on,
        pipeline_tag="fill-mask",
        template=ENCODER_TEMPLATE,
        example=f"This movie was {run.mask_token}.",
        evaluation_note=(
            f"Masked-token perplexity and accuracy with {masked} of the tokens masked, on held-out documents packed "
            "as in training."
        ),
        fields=dict(
            family=ENCODER_FAMILY,
            objective=f"pretrained with masked-language modelling ({masked} of tokens masked)",
            intended_use=(
                "Fine-tuning for text classification, token classification or embeddings in its domain, and filling "
                "in masked words."
            ),
            auto_class="AutoModelForMaskedLM",
            train_description=(
                f"split `{data['train_split']}`, packed into blocks of {data['block_size']} tokens "
                + (
                    f"on the fly from the streamed text ({run.train_results['tokens_seen']:,} tokens seen)"
                    if data.get("streaming")
                    else f"({run.results.get('train_tokens_per_epoch', 0):,} tokens per epoch)"
                )
            ),
            eval_data=[other for other in held_out if other.title != trained_on.title],
        ),
    )
