"""Fine-tune an encoder for text classification, regression or token classification on the shared training loop.

    python training/finetune_classification.py --config finetune_sst2 \
        --model runs/mlm_small/best                       # ours, or any transformers encoder folder / Hub id
    accelerate launch training/finetune_classification.py --config finetune_imdb --model ...

Tasks (`--task`): `single_label` (one class per text or text pair), `multi_label` (a list of classes per text),
`regression` (a number), `token` (a class per word of a pre-split sentence, learned on the first sub-token of each
word, -100 elsewhere). Label names go into the model's config (`id2label`/`label2id`); they come from `label_names`,
else from the data. Metrics come from the offline `evaluate` module `hf_encoders.metrics` "classification" (accuracy,
F1, Matthews; exact match and F1; Pearson and Spearman). The best model on `best_metric` is exported to `best/` and
predicts the test split: `predictions.<split>.jsonl` beside it, test metrics in `results.json` when it has labels.
"""

import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar

import torch
from accelerate import PartialState
from accelerate.utils import gather_object
from tqdm.auto import tqdm
from transformers import (
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoTokenizer,
    DataCollatorForTokenClassification,
    DataCollatorWithPadding,
)

from ... import load_text_dataset, metrics
from ...adapters import LoraArguments, is_adapter, load_adapted, with_lora
from ...data import build_dataloader
from ...run_folder import start_run
from ...training import TrainingConfig, train
from ..harness import chosen_model, first_n, parameter_count, parse_arguments, write_results
from .card import pretraining_tokens

logger = logging.getLogger("finetune_classification")
TASKS = ("single_label", "multi_label", "regression", "token")
# what the "classification" metric reports for each task (on the validation split: validation/NAME)
TASK_METRICS = {
    "single_label": ("accuracy", "f1", "f1_macro", "matthews_correlation"),
    "multi_label": ("exact_match", "f1_micro", "f1_macro"),
    "regression": ("pearson", "spearman", "mse"),
}
TASK_METRICS["token"] = TASK_METRICS["single_label"]  # every labelled token is one example
HELD_OUT = "held_out_of_train"  # the validation split carved from train (validation_from_train)


@dataclass
class ModelArguments:
    model: str = field(default="", metadata={"help": "Checkpoint folder or Hub id: ours or any transformers encoder."})
    task: str = field(default="single_label", metadata={"help": "single_label, multi_label, regression or token."})
    trust_remote_code: bool = False

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"task={self.task!r}: choose one of {', '.join(TASKS)}.")


@dataclass
class DataArguments:
    corpus_settings: ClassVar[tuple[str, ...]] = ("data",)  # the data, recorded with the run
    data: str = field(default="../shared/data/sst2", metadata={"help": "Local path or Hub id."})
    text_column: str = field(default="sentence", metadata={"help": "Text (token task: the list of words)."})
    text_pair_column: str | None = field(default=None, metadata={"help": "Second text of a pair, if any."})
    label_column: str = "label"
    label_names: list[str] | None = field(default=None, metadata={"help": "Class names in id order (else from data)."})
    train_split: str = "train"
    validation_split: str = "validation"
    validation_from_train: int = field(
        default=0,
        metadata={"help": "Choose the model on N examples held out of train (seeded by split_seed) instead."},
    )
    split_seed: int = 0
    test_split: str | None = field(default="test", metadata={"help": "Predicted with the best model; '' for none."})
    max_length: int = field(default=128, metadata={"help": "Longer inputs are truncated (and counted in the log)."})
    max_train_examples: int = field(default=0, metadata={"help": "Only the first N training examples (0: all)."})
    eval_batch_size: int = 64
    num_proc: int | None = None


def label_names_of(data: DataArguments, task: str, splits: dict) -> list[str]:
    """The class names: given, else the ClassLabel names, else the sorted labels of the training split."""
    if task == "regression":
        return ["score"]
    if data.label_names:
        return list(data.label_names)
    feature = splits[data.train_split].features[data.label_column]
    inner = getattr(feature, "feature", feature)  # a list of labels (multi-label, token)
    if hasattr(inner, "names"):
        return list(inner.names)
    values = splits[data.train_split][data.label_column]
    flat = sorted({value for row in values for value in row} if task in ("multi_label", "token") else set(values))
    if all(isinstance(value, int) for value in flat):
        return [str(i) for i in range(max(flat) + 1)]
    return [str(value) for value in flat]


def label_id(value, label2id: dict[str, int], where: str) -> int:
    """A label (a name, or an id) as a class id, or a clear error."""
    if isinstance(value, int) and not isinstance(value, bool):
        if not 0 <= value < len(label2id):
            raise ValueError(
                f"{where}: label {value} is outside num_labels={len(label2id)} (ids 0..{len(label2id) - 1})."
            )
        return value
    if str(value) not in label2id:
        raise ValueError(f"{where}: label {value!r} is not one of the label names {sorted(label2id)}.")
    return label2id[str(value)]


def tokenize(split_name: str, dataset, tokenizer, data: DataArguments, task: str, label2id: dict[str, int]):
    """Token ids (truncated to max_length, the truncations counted and logged) and labels in the task's form."""
    has_labels = data.label_column in dataset.column_names

    def encode(batch: dict, indices: list[int]) -> dict:
        texts = batch[data.text_column]
        pairs = batch[data.text_pair_column] if data.text_pair_column else None
        words = {"is_split_into_words": True} if task == "token" else {}
        full = tokenizer(texts, pairs, **words)["input_ids"]
        encoded = tokenizer(texts, pairs, truncation=True, max_length=data.max_length, **words)
        encoded["truncated"] = [len(ids) > data.max_length for ids in full]
        if not has_labels:
            return encoded
        labels = []
        for row, (index, value) in enumerate(zip(indices, batch[data.label_column], strict=True)):
            where = f"split {split_name!r}, row {index}"
            if task == "regression":
                labels.append(float(value))
            elif task == "multi_label":
                hot = [0.0] * len(label2id)
                for item in value:
                    hot[label_id(item, label2id, where)] = 1.0
                labels.append(hot)
            elif task == "token":
                word_labels = [label_id(item, label2id, where) for item in value]
                if len(word_labels) != len(texts[row]):
                    raise ValueError(f"{where}: {len(texts[row])} words but {len(word_labels)} labels.")
                previous, aligned = None, []
                for word in encoded.word_ids(row):  # the first sub-token of each word carries its label
                    aligned.append(-100 if word is None or word == previous else word_labels[word])
                    previous = word
                labels.append(aligned)
            else:
                labels.append(label_id(value, label2id, where))
        encoded["labels"] = labels
        return encoded

    encoded = dataset.map(
        encode,
        batched=True,
        with_indices=True,
        remove_columns=dataset.column_names,
        num_proc=data.num_proc,
        desc=f"Tokenizing {split_name}",
    )
    if truncated := sum(encoded["truncated"]):
        logger.warning(
            "%s: %d of %d examples are longer than max_length=%d tokens and were truncated",
            split_name,
            truncated,
            len(encoded),
            data.max_length,
        )
    return encoded.remove_columns("truncated")


def predict(model, dataset, collator, state, batch_size: int) -> tuple[torch.Tensor, list]:
    """Logits of every example (token task: of every labelled or first sub-token), all processes' shards gathered
    in order; and the labels when the split has them."""
    shard = dataset.shard(state.num_processes, state.process_index, contiguous=True)
    was_training = model.training
    model.eval()
    logits, labels = [], []
    with torch.no_grad():
        batches = build_dataloader(shard, collator, batch_size, shuffle=False)
        for batch in tqdm(batches, desc="predicting", disable=not state.is_local_main_process, leave=False):
            batch = {key: value.to(state.device) for key, value in batch.items()}
            gold = batch.pop("labels", None)
            output = model(**batch).logits.float().cpu()
            if output.dim() == 3:  # token classification: the positions that carry a word's label (else all tokens)
                keep = (gold != -100 if gold is not None else batch["attention_mask"].bool()).cpu()
                logits += [row[mask] for row, mask in zip(output, keep, strict=True)]
                labels += (
                    [row[mask].tolist() for row, mask in zip(gold.cpu(), keep, strict=True)]
                    if gold is not None
                    else []
                )
            else:
                logits += list(output)
                labels += gold.cpu().tolist() if gold is not None else []
    model.train(was_training)
    if state.num_processes > 1:
        logits, labels = gather_object(logits), gather_object(labels)
    return logits, labels


def scores(task: str, logits: list, labels: list) -> dict[str, float]:
    if task == "token":  # every labelled token counts once
        stacked, labels = torch.cat(logits), [label for row in labels for label in row]
    else:
        stacked = torch.stack(logits)
    if task == "regression":
        predictions = stacked.squeeze(-1).tolist()
    elif task == "multi_label":
        predictions = (stacked > 0).long().tolist()
        labels = [[int(value) for value in row] for row in labels]
    else:
        predictions = stacked.argmax(-1).tolist()
    metric = metrics.load("classification", config_name="single_label" if task == "token" else task)
    return metric.compute(predictions=predictions, references=labels)


def validation_name(data: DataArguments) -> str:
    """The split the model is chosen on: the data's validation split, or the one held out of train."""
    return HELD_OUT if data.validation_from_train else data.validation_split


def wanted_splits(data: DataArguments) -> list[str]:
    """The splits a run reads: training, validation and, unless '', test."""
    return [data.train_split, validation_name(data), *([data.test_split] * bool(data.test_split))]


def hold_out(splits: dict, data: DataArguments) -> None:
    """Move `validation_from_train` random training examples (seeded) to the split HELD_OUT."""
    train = splits[data.train_split]
    if not 0 < data.validation_from_train < len(train):
        raise ValueError(
            f"validation_from_train={data.validation_from_train}: the training split has {len(train)} examples."
        )
    parts = train.train_test_split(test_size=data.validation_from_train, seed=data.split_seed)
    splits[data.train_split], splits[HELD_OUT] = parts["train"], parts["test"]
    logger.info(
        "validation: %d examples held out of %s (seed %d)", len(parts["test"]), data.train_split, data.split_seed
    )


def load_splits(data: DataArguments, task: str) -> dict:
    """The data's splits, checked to have the wanted splits and columns; the training split cut to
    `max_train_examples`."""
    splits = load_text_dataset(data.data, text_column=None if task == "token" else data.text_column)
    if data.validation_from_train and data.train_split in splits:
        hold_out(splits, data)
    wanted = wanted_splits(data)
    for split_name in wanted:
        if split_name not in splits:
            raise ValueError(f"{data.data!r} has no split {split_name!r}; it has {sorted(splits)}.")
    for split_name in wanted:
        columns = splits[split_name].column_names
        needed = [data.text_column, data.text_pair_column]
        needed += [data.label_column] if split_name != data.test_split else []
        if missing := [column for column in needed if column and column not in columns]:
            raise ValueError(f"Split {split_name!r} of {data.data!r} has no {missing[0]!r} column; it has {columns}.")
    if len(splits[data.train_split]) == 0:
        raise ValueError(f"The training split {data.train_split!r} of {data.data!r} is empty.")
    splits[data.train_split] = first_n(splits[data.train_split], data.max_train_examples or None)
    return splits


def model_class(task: str) -> type:
    return AutoModelForTokenClassification if task == "token" else AutoModelForSequenceClassification


def label_settings(task: str, names: list[str], label2id: dict[str, int]) -> dict:
    """What a classification model's config says about its labels."""
    problem_type = {
        "single_label": "single_label_classification",
        "multi_label": "multi_label_classification",
        "regression": "regression",
    }.get(task)
    labels = {"num_labels": len(names), "id2label": dict(enumerate(names)), "label2id": label2id}
    return {**labels, **({"problem_type": problem_type} if problem_type else {})}


def build_model(args: ModelArguments, labels: dict) -> torch.nn.Module:
    """The checkpoint with a new head for the labels (`label_settings`), their names in its config."""
    return model_class(args.task).from_pretrained(args.model, trust_remote_code=args.trust_remote_code, **labels)


def validation_evaluator(validation, collator, task: str, batch_size: int) -> Callable:
    """The run's `evaluate(model, accelerator)`: the task's metrics on the validation split."""

    def evaluate(model, accelerator) -> dict[str, float]:
        logits, labels = predict(model, validation, collator, accelerator, batch_size)
        return {f"validation/{key}": value for key, value in scores(task, logits, labels).items()}

    return evaluate


def load_chosen(chosen: Path, args: ModelArguments, labels: dict) -> torch.nn.Module:
    """The exported model: a whole one, or an adapter on its base model (`labels`: the base's label settings)."""
    if is_adapter(chosen):
        return load_adapted(chosen, trust_remote_code=args.trust_remote_code, **labels)
    return model_class(args.task).from_pretrained(chosen, trust_remote_code=args.trust_remote_code)


def predict_test(chosen: Path, test, collator, state, args: ModelArguments, data: DataArguments, labels: dict):
    """The chosen model's logits on the test split, and its figures (the metrics when the split has labels)."""
    best = load_chosen(chosen, args, labels).to(state.device)
    logits, labels = predict(best, test, collator, state, data.eval_batch_size)
    figures = {
        "split": data.test_split,
        "examples": len(test),
        **(scores(args.task, logits, labels) if labels else {}),
    }
    return logits, figures


def main(argv: list[str] | None = None) -> dict:
    model_args, data_args, lora, training = parse_arguments(
        (ModelArguments, DataArguments, LoraArguments, TrainingConfig), argv
    )
    if not model_args.model:
        raise ValueError("Give the checkpoint to fine-tune: --model PATH_OR_HUB_ID.")
    task = model_args.task
    if task != "token" and training.token_level_loss:
        training.token_level_loss = False  # one label per example: the loss is the mean over the batch's examples
    settings = {
        "script": "finetune_classification",
        "model": model_args,
        "data": data_args,
        "lora": lora,
    }
    run = start_run(training, settings, [f"validation/{name}" for name in TASK_METRICS[task]])
    state = PartialState()
    with state.main_process_first():
        splits = load_splits(data_args, task)
        names = label_names_of(data_args, task, splits)
        label2id = {name: i for i, name in enumerate(names)}
        tokenizer = AutoTokenizer.from_pretrained(model_args.model, trust_remote_code=model_args.trust_remote_code)
        encoded = {
            name: tokenize(name, splits[name], tokenizer, data_args, task, label2id)
            for name in wanted_splits(data_args)
        }

    labels = label_settings(task, names, label2id)
    model = build_model(model_args, labels)
    base_tokens = pretraining_tokens(Path(model_args.model))  # None: not a local pretraining run of this package
    parameters = parameter_count(model)
    if lora.lora_r:  # adapters: only they and the head train
        model = with_lora(model, lora, "token-classification" if task == "token" else "sequence-classification")
    collator = (DataCollatorForTokenClassification if task == "token" else DataCollatorWithPadding)(tokenizer)
    validation = encoded[validation_name(data_args)]
    evaluate = validation_evaluator(validation, collator, task, data_args.eval_batch_size)
    trainable = parameter_count(model, trainable=True)
    run.settings["labels"] = names
    result = train(model, encoded[data_args.train_split], collator, run, tokenizer, evaluate)

    chosen = chosen_model(run)
    summary = {
        "model": str(chosen),
        "task": task,
        "labels": names,
        "parameters": parameters,
        "trainable_parameters": trainable,
        "train": asdict(result),
        "train_examples": len(encoded[data_args.train_split]),
        "validation_split": validation_name(data_args),
        "base_pretraining_tokens": base_tokens,
    }
    if data_args.test_split:
        logits, summary["test"] = predict_test(
            chosen, encoded[data_args.test_split], collator, state, model_args, data_args, labels
        )
        if state.is_main_process:
            write_predictions(chosen / f"predictions.{data_args.test_split}.jsonl", task, names, logits)
    if state.is_main_process:
        write_results(run.path, summary)
        logger.info("done: %s", json.dumps({key: summary[key] for key in ("train", "test") if key in summary}))
    run.close()
    return summary


def write_predictions(path: Path, task: str, names: list[str], logits: list) -> None:
    """One JSON line per test example: the predicted label(s) or value, and the probabilities."""
    with path.open("w") as handle:
        for index, row in enumerate(logits):
            if task == "regression":
                line = {"index": index, "prediction": row.item()}
            elif task == "multi_label":
                probabilities = row.sigmoid()
                line = {
                    "index": index,
                    "prediction": [names[i] for i in (probabilities > 0.5).nonzero().flatten()],
                    "probabilities": dict(zip(names, probabilities.tolist(), strict=True)),
                }
            elif task == "token":
                line = {"index": index, "prediction": [names[i] for i in row.argmax(-1).tolist()]}
            else:
                probabilities = row.softmax(-1)
                line = {
                    "index": index,
                    "prediction": names[int(probabilities.argmax())],
                    "probabilities": dict(zip(names, probabilities.tolist(), strict=True)),
                }
            handle.write(json.dumps(line) + "\n")


if __name__ == "__main__":
    main()
