"""Our models under transformers' own `Trainer`, with no special casing: labels and loss, gradient checkpointing,
evaluation and checkpoints during training, safetensors checkpoints, `load_best_model_at_end`, and a reload."""

import random

import pytest
import torch
from conftest import WORDS, tiny_config
from datasets import Dataset
from transformers import (
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    DataCollatorForTokenClassification,
    DataCollatorWithPadding,
    Trainer,
    TrainingArguments,
)

from hf_encoders import EncoderForSequenceClassification, EncoderForTokenClassification


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
