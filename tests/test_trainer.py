"""Our models under transformers' own `Trainer`, with no special casing: labels and loss, gradient checkpointing,
evaluation and checkpoints during training, safetensors checkpoints, `load_best_model_at_end`, and a reload."""

import json
import random

import pytest
import torch
from conftest import WORDS, tiny_config
from datasets import Dataset
from transformers import (
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    DataCollatorForLanguageModeling,
    DataCollatorForTokenClassification,
    DataCollatorWithPadding,
    Trainer,
    TrainingArguments,
)

from hf_encoders import EncoderForMaskedLM, EncoderForSequenceClassification, EncoderForTokenClassification
from hf_encoders.run_folder import start_run
from hf_encoders.training import TrainingConfig, train


def arguments(output_dir, **overrides) -> TrainingArguments:
    values = dict(
        output_dir=str(output_dir),
        max_steps=20,
        per_device_train_batch_size=8,
        per_device_eval_batch_size=8,
        learning_rate=3e-3,
        eval_strategy="steps",
        eval_steps=10,
        save_strategy="steps",
        save_steps=10,
        load_best_model_at_end=True,
        metric_for_best_model="loss",
        gradient_checkpointing=True,
        logging_steps=1,
        report_to=[],
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
    )
    return TrainingArguments(**{**values, **overrides})


def texts(count: int, seed: int = 0) -> list[str]:
    generator = random.Random(seed)
    return [" ".join(generator.sample(WORDS, 5)) for _ in range(count)]


@pytest.mark.parametrize("task", ["sequence", "token"])
def test_trainer_fine_tunes_our_model_and_the_result_reloads(task, tokenizer, tmp_path):
    torch.manual_seed(0)
    config = tiny_config(num_labels=2, id2label={0: "no", 1: "yes"}, label2id={"no": 0, "yes": 1})
    sentences = texts(32)
    if task == "sequence":
        model = EncoderForSequenceClassification(config)
        data = Dataset.from_dict({"text": sentences, "label": [int("cat" in text) for text in sentences]})
        data = data.map(lambda row: tokenizer(row["text"]), remove_columns=["text"])
        collator, auto = DataCollatorWithPadding(tokenizer), AutoModelForSequenceClassification
    else:
        model = EncoderForTokenClassification(config)

        def tag(row):
            encoded = tokenizer(row["text"])
            words = tokenizer.convert_ids_to_tokens(encoded["input_ids"])
            encoded["labels"] = [-100 if word in ("[CLS]", "[SEP]") else int(word == "cat") for word in words]
            return encoded

        data = Dataset.from_dict({"text": sentences}).map(tag, remove_columns=["text"])
        collator, auto = DataCollatorForTokenClassification(tokenizer), AutoModelForTokenClassification
    trainer = Trainer(
        model=model,
        args=arguments(tmp_path / "run"),
        train_dataset=data,
        eval_dataset=data,
        data_collator=collator,
        processing_class=tokenizer,
    )
    result = trainer.train()
    assert result.global_step == 20 and torch.isfinite(torch.tensor(result.training_loss))
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert sum(losses[-5:]) < sum(losses[:5])  # it learns
    for checkpoint in ("checkpoint-10", "checkpoint-20"):
        files = {path.name for path in (tmp_path / "run" / checkpoint).iterdir()}
        assert "model.safetensors" in files and not files & {"pytorch_model.bin"}
    assert trainer.state.best_model_checkpoint is not None  # load_best_model_at_end picked one

    trainer.save_model(tmp_path / "final")
    reloaded = auto.from_pretrained(tmp_path / "final").eval()
    batch = collator([data[i] for i in range(4)])
    batch.pop("labels")
    trainer.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).logits, trainer.model(**batch).logits)
    assert reloaded.config.id2label == {0: "no", 1: "yes"}


def test_trainer_with_the_mlm_collator_takes_the_same_steps_as_our_loop(tokenizer, tmp_path):
    """`Trainer` with `DataCollatorForLanguageModeling` feeds our masked-LM padded batches, which the model unpads;
    step by step, its losses equal those of our own loop (hf_encoders.training.train) on the same batches."""
    generator = random.Random(0)
    sentences = [" ".join(generator.choices(WORDS, k=generator.randint(2, 12))) for _ in range(24)]
    data = Dataset.from_dict({"text": sentences}).map(lambda row: tokenizer(row["text"]), remove_columns=["text"])

    def same_batches():
        """The ecosystem's collator (seeded), given each batch's examples in one order whatever the sampler drew."""
        collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.3, seed=0)
        return lambda examples: collator(sorted(examples, key=lambda example: example["input_ids"]))

    def new_model():
        torch.manual_seed(0)
        return EncoderForMaskedLM(tiny_config(vocab_size=len(tokenizer)))

    batch = same_batches()(list(data))
    assert (batch["attention_mask"] == 0).float().mean() > 0.2  # padded batches: unpadded inside the model
    hyper = dict(learning_rate=3e-3, weight_decay=0.0, adam_beta2=0.98, adam_epsilon=1e-6, max_grad_norm=1.0, seed=0)
    trainer_args = arguments(
        tmp_path / "trainer",
        **hyper,
        max_steps=4,
        per_device_train_batch_size=len(data),  # each step sees every example
        lr_scheduler_type="constant",
        eval_strategy="no",
        save_strategy="no",
        load_best_model_at_end=False,
        gradient_checkpointing=False,
    )
    trainer = Trainer(model=new_model(), args=trainer_args, train_dataset=data, data_collator=same_batches())
    trainer.train()
    trainer_losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]

    config = TrainingConfig(
        output_dir=str(tmp_path / "ours"), per_device_batch_size=len(data), max_steps=4, log_every=1, **hyper
    )
    config.lr_schedule = "constant"
    train(new_model(), data, same_batches(), start_run(config))
    rows = [json.loads(line) for line in (tmp_path / "ours" / "metrics.jsonl").read_text().splitlines()]
    our_losses = [row["train/loss"] for row in rows if "train/loss" in row]
    assert len(trainer_losses) == len(our_losses) == 4
    assert our_losses == pytest.approx(trainer_losses, rel=1e-4)
    assert our_losses[-1] < our_losses[0]


# examples/pytorch/language-modeling/run_mlm.py, as transformers ships it: its evaluation reduces the logits to token
# predictions, then scores them where the labels are not -100, so it needs (batch, sequence, vocab) logits.
def preprocess_logits_for_metrics(logits, labels):
    if isinstance(logits, tuple):
        # Depending on the model and config, logits may contain extra tensors,
        # like past_key_values, but logits always come first
        logits = logits[0]
    return logits.argmax(dim=-1)


def compute_metrics(eval_preds):
    preds, labels = eval_preds
    # preds have the same shape as the labels, after the argmax(-1) has been calculated
    # by preprocess_logits_for_metrics
    labels = labels.reshape(-1)
    preds = preds.reshape(-1)
    mask = labels != -100
    labels = labels[mask]
    preds = preds[mask]
    return {"accuracy": float((preds == labels).mean())}  # run_mlm: evaluate.load("accuracy").compute(...)


def test_trainer_evaluates_the_masked_lm_as_run_mlm_does(tokenizer, tmp_path):
    """run_mlm.py's `Trainer.evaluate()` on `DataCollatorForLanguageModeling` batches: with the sparse head on (the
    default), evaluation gets logits for every position and scores them; training still runs the head on the labelled
    positions only. The metrics equal those of the model run in eval mode on the same batches."""
    generator = random.Random(0)
    sentences = [" ".join(generator.choices(WORDS, k=generator.randint(2, 12))) for _ in range(24)]
    data = Dataset.from_dict({"text": sentences}).map(lambda row: tokenizer(row["text"]), remove_columns=["text"])
    torch.manual_seed(0)
    model = EncoderForMaskedLM(tiny_config(vocab_size=len(tokenizer)))
    assert model.config.sparse_prediction
    collator, batches = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.3, seed=0), []

    def recorded(examples):
        batch = collator(examples)
        batches.append((model.training, {key: value.clone() for key, value in batch.items()}))
        return batch

    decoder_rows = []  # the rows the head transforms before the decoder (in training, the loss reads the decoder's weight)
    model.head.register_forward_hook(lambda _, args, output: decoder_rows.append(tuple(args[0].shape[:-1])))
    trainer_args = arguments(
        tmp_path / "run",
        max_steps=3,
        per_device_eval_batch_size=8,
        eval_strategy="no",
        save_strategy="no",
        load_best_model_at_end=False,
        gradient_checkpointing=False,
    )
    trainer = Trainer(
        model=model,
        args=trainer_args,
        train_dataset=data,
        eval_dataset=data,
        data_collator=recorded,
        compute_metrics=compute_metrics,
        preprocess_logits_for_metrics=preprocess_logits_for_metrics,
    )
    trainer.train()
    metrics = trainer.evaluate()

    trained = [batch for training, batch in batches if training]
    evaluated = [batch for training, batch in batches if not training]
    assert len(trained) == 3 and len(evaluated) == 3
    assert decoder_rows[:3] == [(int((batch["labels"] != -100).sum()),) for batch in trained]  # the sparse head
    assert decoder_rows[3:] == [tuple(batch["labels"].shape) for batch in evaluated]  # every position
    model.eval()
    correct, labelled, losses = 0, 0, []
    with torch.no_grad():
        for batch in evaluated:
            out, keep = model(**batch), batch["labels"] != -100
            correct += int((out.logits.argmax(-1)[keep] == batch["labels"][keep]).sum())
            labelled += int(keep.sum())
            losses += [out.loss.item()] * len(batch["labels"])
    assert metrics["eval_accuracy"] == pytest.approx(correct / labelled)
    assert metrics["eval_loss"] == pytest.approx(sum(losses) / len(losses), rel=1e-5)
