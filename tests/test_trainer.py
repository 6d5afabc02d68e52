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
