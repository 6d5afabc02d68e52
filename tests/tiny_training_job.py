"""A tiny masked-LM training job for the training-loop tests. Runs alone, under `accelerate launch`, or in the
test process (`main(flags)`):

    python tests/tiny_training_job.py --output_dir DIR --max_steps 6 [any TrainingConfig flag]

Environment switches: HF_ENCODERS_TEST_MASKING=dynamic (MLMCollator; default: a fixed masking that does not depend
on how the batch is split), HF_ENCODERS_TEST_CRASH_AT_BATCH=k (the k-th batch fails: a killed run),
HF_ENCODERS_TEST_FAIL_SAVE_AT_STEP=n (writing checkpoint n fails halfway), HF_ENCODERS_TEST_NAN_AT_STEP=n (the
loss becomes NaN from that optimizer step on), HF_ENCODERS_TEST_STREAM=FILE (train on FILE's documents, streamed),
HF_ENCODERS_TEST_EVALUATE=1 (evaluate on 32 held-out examples: `held_out/loss`, ...),
HF_ENCODERS_TEST_REDUCES_AFTER=n (n all-reduces after `train()` returns, as the scripts' test evaluations do,
with gloo's worker threads starved: `starve_gloo_threads`).
"""

import contextlib
import os
import sys
from pathlib import Path
from unittest import mock

import torch
from accelerate import Accelerator
from datasets import Dataset
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hf_encoders import EncoderConfig, EncoderForMaskedLM, MLMCollator  # noqa: E402
from hf_encoders.data import StreamedExamples, mlm_blocks, stream_text_dataset  # noqa: E402
from hf_encoders.run_folder import start_run  # noqa: E402
from hf_encoders.training import TrainingConfig, TrainResult, evaluate_loss, parse_config, train  # noqa: E402

VOCAB = ["[PAD]", "[CLS]", "[SEP]", "[MASK]", "[UNK]"] + [f"t{i}" for i in range(59)]


def examples(count: int = 96, seed: int = 0) -> Dataset:
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(6, 20, (count,), generator=generator).tolist()
    return Dataset.from_dict(
        {"input_ids": [torch.randint(5, 64, (n,), generator=generator).tolist() for n in lengths]}
    )


def fixed_masking(batch: list[dict]) -> dict:
    """Padding-free rows; every token whose id is divisible by 3 is masked."""
    ids = torch.tensor([token for example in batch for token in example["input_ids"]])[None]
    positions = torch.cat([torch.arange(len(example["input_ids"])) for example in batch])[None]
    chosen = ids % 3 == 0
    return {
        "input_ids": ids.masked_fill(chosen, 3),
        "position_ids": positions,
        "labels": ids.masked_fill(~chosen, -100),
    }


def main(argv: list[str] | None = None) -> TrainResult:
    (config,) = parse_config((TrainingConfig,), argv)
    run = start_run(config, {"script": "tiny_training_job"})
    model = EncoderForMaskedLM(
        EncoderConfig(
            vocab_size=64,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=32,
            sparse_prediction=True,
        )
    )
    backend = Tokenizer(models.WordLevel({t: i for i, t in enumerate(VOCAB)}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        unk_token="[UNK]",
    )
    collator = (
        MLMCollator(tokenizer, 0.3, seed=0)
        if os.environ.get("HF_ENCODERS_TEST_MASKING") == "dynamic"
        else fixed_masking
    )

    if crash_at := int(os.environ.get("HF_ENCODERS_TEST_CRASH_AT_BATCH", 0)):
        inner, calls = collator, [0]

        def collator(batch):
            calls[0] += 1
            if calls[0] == crash_at:
                raise SystemExit("killed (test)")
            return inner(batch)

    failing_save = contextlib.nullcontext()
    if fail_at := int(os.environ.get("HF_ENCODERS_TEST_FAIL_SAVE_AT_STEP", 0)):
        save_state = Accelerator.save_state

        def failing_save_state(self, output_dir=None, **kwargs):
            save_state(self, output_dir, **kwargs)  # the files are written ...
            if output_dir.endswith(f"checkpoint-{fail_at}.tmp"):
                raise SystemExit("crashed while writing a checkpoint (test)")  # ... but the save never completes

        failing_save = mock.patch.object(Accelerator, "save_state", failing_save_state)

    if nan_at := int(os.environ.get("HF_ENCODERS_TEST_NAN_AT_STEP", 0)):
        calls = [0]

        def poison(module, args, output):
            calls[0] += 1
            return output * float("nan") if calls[0] >= nan_at * config.gradient_accumulation_steps else output

        model.head.register_forward_hook(poison)

    evaluate = held_out_loss if os.environ.get("HF_ENCODERS_TEST_EVALUATE") else None
    with failing_save:
        result = train(model, training_data(tokenizer), collator, run, tokenizer=tokenizer, evaluate=evaluate)
    if reduces := int(os.environ.get("HF_ENCODERS_TEST_REDUCES_AFTER", 0)):
        starve_gloo_threads()
        for _ in range(reduces):
            torch.distributed.all_reduce(torch.ones(256))
    return result


def starve_gloo_threads() -> None:
    """This process's threads on one CPU, gloo's worker threads in the idle class: they run only while the main
    thread waits, as a loaded machine has them now and then, made certain. After the last collective the main thread
    goes on to exit before gloo's thread drops that collective's tensors (Linux)."""
    cpu = min(os.sched_getaffinity(0))
    for task in Path("/proc/self/task").iterdir():
        with contextlib.suppress(ProcessLookupError, FileNotFoundError):  # a thread that has ended since
            os.sched_setaffinity(int(task.name), {cpu})
            if (task / "comm").read_text().strip() == "pt_gloo_runloop":
                os.sched_setscheduler(int(task.name), os.SCHED_IDLE, os.sched_param(0))


def held_out_loss(model, accelerator) -> dict[str, float]:
    losses = evaluate_loss(model, examples(32, seed=1), fixed_masking, accelerator, batch_size=8)
    return {f"held_out/{name}": value for name, value in losses.items()}


def training_data(tokenizer):
    """`examples()`, or with HF_ENCODERS_TEST_STREAM=FILE the documents of FILE streamed into blocks of 24."""
    if not (corpus := os.environ.get("HF_ENCODERS_TEST_STREAM")):
        return examples()
    return StreamedExamples(stream_text_dataset(corpus), mlm_blocks(tokenizer, 24), seed=0, buffer_size=8)


if __name__ == "__main__":
    main()
