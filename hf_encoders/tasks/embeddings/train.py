"""Train an embedding model from an encoder checkpoint on text pairs, contrastively, on the shared training loop.

    hf-encoders train-embeddings --config embeddings_multi30k --model runs/mlm_multi30k/best
    accelerate launch training/train_embeddings.py --config embeddings_multi30k --model ...

Pairs come through `datasets`: aligned files such as Multi30k's (`--anchor en --positive de`: English captions and
their German translations), or a Hub id / local files with a column per side (`--anchor anchor --positive positive`).
The loss is in-batch negatives (`InBatchNegatives`: sentence-transformers' MultipleNegativesRankingLoss, both
directions): each anchor against every positive of the batch. Every `eval_every` steps, retrieval on the validation
pairs (each anchor retrieves its positive among all of the split's, and back): recall@1 and MRR@10; the best model
by `best_metric` is exported to `best/`, which `SentenceTransformer(folder)` loads as it is. The chosen model is then
scored on the test pairs through sentence-transformers, beside the starting checkpoint's scores.
"""

import json
import logging
from dataclasses import asdict, dataclass, field
from typing import ClassVar

import torch
from accelerate import PartialState
from transformers import AutoModel, AutoTokenizer

from ... import load_parallel_dataset
from ...data import PairCollator
from ...run_folder import start_run
from ...training import TrainingConfig, train
from ..harness import chosen_model, first_n, parameter_count, parse_arguments, write_results
from .contrastive import InBatchNegatives
from .evaluate import both_ways, retrieval

logger = logging.getLogger("train_embeddings")


@dataclass
class ModelArguments:
    model: str = field(default="", metadata={"help": "An encoder checkpoint of this family (folder or Hub id)."})
    pooling: str = field(default="mean", metadata={"help": "cls or mean: the embedding, saved with the model."})
    scale: float = field(default=20.0, metadata={"help": "The inverse temperature of the cosine similarities."})
    symmetric: bool = field(default=True, metadata={"help": "Also the positive-to-anchor direction of the loss."})
    trust_remote_code: bool = False


@dataclass
class DataArguments:
    corpus_settings: ClassVar[tuple[str, ...]] = ("data",)  # the data, recorded with the run
    data: str = field(default="../shared/data/multi30k", metadata={"help": "Aligned files, local files or Hub id."})
    anchor: str = field(default="en", metadata={"help": "The anchors' language or column."})
    positive: str = field(default="de", metadata={"help": "The positives' language or column."})
    train_split: str = "train"
    validation_split: str = "validation"
    test_split: str | None = field(default="test", metadata={"help": "Scored with the chosen model; '' for none."})
    max_length: int = field(default=64, metadata={"help": "Longer texts are truncated (and counted in the log)."})
    max_train_examples: int = field(default=0, metadata={"help": "Only the first N training pairs (0: all)."})
    max_eval_pairs: int = field(default=0, metadata={"help": "Retrieval among the first N pairs (0: all)."})
    eval_batch_size: int = 128


def distinct_pairs(dataset, anchor: str, positive: str, split_name: str):
    """The pairs whose anchor and positive texts both appear for the first time: a repeated text would be a false
    negative of its twin in the same batch (what sentence-transformers' NO_DUPLICATES sampler avoids). Counted."""
    seen, keep = set(), []
    for index, (left, right) in enumerate(zip(dataset[anchor], dataset[positive], strict=True)):
        if (anchor, left) not in seen and (positive, right) not in seen:
            keep.append(index)
        seen.update({(anchor, left), (positive, right)})
    if dropped := len(dataset) - len(keep):
        logger.info("%s: %d of %d pairs repeat a text seen before and are left out", split_name, dropped, len(dataset))
    return dataset.select(keep)


def tokenize_pairs(dataset, tokenizer, data: DataArguments, split_name: str):
    """`input_ids` (anchors) and `positive_input_ids`, truncated to `max_length` (the truncations counted)."""

    def encode(batch: dict) -> dict:
        encoded = {}
        for column, prefix in ((data.anchor, ""), (data.positive, "positive_")):
            full = tokenizer(batch[column])["input_ids"]
            encoded[f"{prefix}input_ids"] = [ids[: data.max_length] for ids in full]
            encoded[f"{prefix}truncated"] = [len(ids) > data.max_length for ids in full]
        return encoded

    encoded = dataset.map(encode, batched=True, remove_columns=dataset.column_names, desc=f"Tokenizing {split_name}")
    if truncated := sum(encoded["truncated"]) + sum(encoded["positive_truncated"]):
        logger.warning("%s: %d texts longer than max_length=%d were truncated", split_name, truncated, data.max_length)
    return encoded.remove_columns(["truncated", "positive_truncated"])


@torch.no_grad()
def embed_split(
    model: InBatchNegatives, rows: list[dict], collator, batch_size: int, device
) -> tuple[torch.Tensor, ...]:
    """Unit-length embeddings of the anchors and positives of `rows` (tokenized pairs), with the model in memory."""
    was_training = model.training
    model.eval()
    anchors, positives = [], []
    for start in range(0, len(rows), batch_size):
        batch = {key: value.to(device) for key, value in collator(rows[start : start + batch_size]).items()}
        anchors.append(model.embed(batch["input_ids"], batch["attention_mask"]).cpu())
        positives.append(model.embed(batch["positive_input_ids"], batch["positive_attention_mask"]).cpu())
    model.train(was_training)
    return torch.cat(anchors), torch.cat(positives)


def retrieval_evaluator(validation, collator, data: DataArguments):
    """The run's `evaluate(model, accelerator)`: retrieval on the validation pairs, both ways, and their mean."""
    rows = list(validation)

    def evaluate(model, accelerator) -> dict[str, float]:
        model = accelerator.unwrap_model(model)
        anchors, positives = embed_split(model, rows, collator, data.eval_batch_size, accelerator.device)
        return both_ways(anchors, positives, (data.anchor, data.positive), "validation")

    return evaluate


def metric_names(data: DataArguments) -> list[str]:
    """What the validation reports (`best_metric` is one of them): per direction, and the mean of both."""
    directions = [f"{data.anchor}-{data.positive}/", f"{data.positive}-{data.anchor}/", ""]
    return [f"validation/{direction}{key}" for direction in directions for key in ("recall@1", "mrr@10")]


def load_pairs(data: DataArguments) -> dict:
    pairs = load_parallel_dataset(data.data, data.anchor, data.positive)
    wanted = [data.train_split, data.validation_split, *([data.test_split] * bool(data.test_split))]
    if missing := [split for split in wanted if split not in pairs]:
        raise ValueError(f"{data.data!r} has no split {missing[0]!r}; it has {sorted(pairs)}.")
    pairs[data.train_split] = distinct_pairs(
        first_n(pairs[data.train_split], data.max_train_examples or None), data.anchor, data.positive, "train"
    )
    for split in wanted[1:]:
        pairs[split] = first_n(pairs[split], data.max_eval_pairs or None)
    return {split: pairs[split] for split in wanted}


def build_model(args: ModelArguments) -> InBatchNegatives:
    encoder = AutoModel.from_pretrained(args.model, trust_remote_code=args.trust_remote_code)
    if args.pooling not in ("cls", "mean"):
        raise ValueError(f"pooling={args.pooling!r}: choose cls or mean.")
    encoder.config.classifier_pooling = args.pooling  # the embedding's pooling, saved with the model
    return InBatchNegatives(encoder, args.scale, args.symmetric)


def main(argv: list[str] | None = None) -> dict:
    model_args, data_args, training = parse_arguments((ModelArguments, DataArguments, TrainingConfig), argv)
    if not model_args.model:
        raise ValueError("Give the encoder checkpoint to start from: --model PATH_OR_HUB_ID.")
    training.token_level_loss = False  # one loss per batch of pairs
    settings = {"script": "train_embeddings", "model": model_args, "data": data_args}
    run = start_run(training, settings, metric_names(data_args))
    state = PartialState()
    with state.main_process_first():
        tokenizer = AutoTokenizer.from_pretrained(model_args.model, trust_remote_code=model_args.trust_remote_code)
        pairs = load_pairs(data_args)
        encoded = {split: tokenize_pairs(dataset, tokenizer, data_args, split) for split, dataset in pairs.items()}
    model = build_model(model_args)
    collator = PairCollator(tokenizer)
    evaluate = retrieval_evaluator(encoded[data_args.validation_split], collator, data_args)
    summary = {"base_model": model_args.model, "parameters": parameter_count(model)}
    if data_args.test_split:  # the starting checkpoint's scores, with the same pooling
        rows = list(encoded[data_args.test_split])
        anchors, positives = embed_split(model, rows, collator, data_args.eval_batch_size, state.device)
        summary["start"] = both_ways(anchors, positives, (data_args.anchor, data_args.positive), "test")
    result = train(model, encoded[data_args.train_split], collator, run, tokenizer, evaluate)
    chosen = chosen_model(run)
    summary |= {"model": str(chosen), "train": asdict(result), "train_pairs": len(encoded[data_args.train_split])}
    if data_args.test_split:
        test, names = pairs[data_args.test_split], (data_args.anchor, data_args.positive)
        summary["test"] = retrieval(chosen, test[names[0]], test[names[1]], names, "test", data_args.eval_batch_size)
        summary["test_split"], summary["test_pairs"] = data_args.test_split, len(test)
    if state.is_main_process:
        write_results(run.path, summary)
        logger.info("done: %s", json.dumps({key: summary[key] for key in ("start", "test") if key in summary}))
    run.close()
    return summary


if __name__ == "__main__":
    main()
