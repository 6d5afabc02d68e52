"""The model card's section of an embedding run: retrieval scores on the test pairs (and the starting checkpoint's,
for comparison), sentence-transformers' tags and usage."""

from pathlib import Path

from ...cards import ENCODER_FAMILY, CardSection, ResultRow, RunRecord, describe_data

TEMPLATE = Path(__file__).with_name("card.md")


def card_section(run: RunRecord) -> CardSection:
    data, results = run.data, run.results
    dataset = describe_data(data["data"], run)
    task = dict(task_type="sentence-similarity", task_name="retrieval", dataset_type=dataset.dataset_type)
    task |= dict(dataset_name=dataset.title, dataset_config=None)
    tested = {key.partition("/")[2]: value for key, value in results.get("test", {}).items()}
    validation = {key.partition("/")[2]: v for key, v in run.chosen_metrics().items() if key.startswith("validation/")}
    rows = [
        ResultRow(**task, dataset_split=split, metric_type=key, metric_name=key, value=value, in_model_index=index)
        for split, metrics, index in (
            (results.get("test_split"), tested, True),
            (data["validation_split"], validation, not tested),
        )
        for key, value in metrics.items()
    ]
    base = run.settings["model"]["model"]
    local_base = Path(base).exists()
    start = {key.partition("/")[2]: value for key, value in results.get("start", {}).items()}
    return CardSection(
        results=rows,
        data=dataset,
        pipeline_tag="sentence-similarity",
        template=TEMPLATE,
        example="A dog runs through the park.",
        evaluation_note=(
            f"Retrieval among the {results.get('test_pairs', 'test')} pairs of the `{results.get('test_split')}` "
            f"split: each `{data['anchor']}` text retrieves its `{data['positive']}` pair by cosine similarity, and "
            "back (recall@1: found first; MRR@10: the mean of 1 / its rank, 0 beyond 10). The checkpoint was chosen "
            f"on the `{data['validation_split']}` split."
        ),
        fields=dict(
            family=ENCODER_FAMILY,
            base=("/".join(Path(base).parts[-2:]) if local_base else base),
            pooling=run.settings["model"]["pooling"],
            start=start,
            train_description=f"{results['train_pairs']:,} pairs of split `{data['train_split']}` "
            f"(`{data['anchor']}` and `{data['positive']}`)",
        ),
        base_model=None if local_base else base,
        batch_unit="pairs",
        library_name="sentence-transformers",
        tags=("sentence-transformers", "feature-extraction"),
    )
