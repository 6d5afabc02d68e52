"""Masked-LM pretraining of an hf_encoders encoder on the shared training loop.

    accelerate launch training/pretrain_mlm.py --config mlm_small [--max_steps 2000 ...]
    python training/pretrain_mlm.py --config mlm_tiny          # one CPU, minutes

Reads the corpus with `datasets` (local files or a Hub id), trains a WordPiece tokenizer unless one is given, packs
documents into blocks, and trains `EncoderForMaskedLM` with dynamic masking on padding-free batches. Evaluates masked-LM
loss, perplexity and masked-token accuracy on each `eval_data` set (`name=path-or-hub-id:split`), exports the final
and best models with their tokenizer, and writes `results.json` beside them.

`--architecture bert` trains transformers' `BertForMaskedLM` of the same width, depth and heads on the same blocks,
masks and schedule (padded batches, one document per row), for side-by-side comparisons; `--architecture modernbert`
trains `ModernBertForMaskedLM` of the same settings (its sparse head; padded batches too):

    python training/pretrain_mlm.py --config mlm_small --architecture bert \
        --tokenizer runs/mlm_small/best --output_dir runs/bert_small
"""

import json
import logging
from dataclasses import asdict, dataclass, field
from typing import ClassVar

from accelerate import PartialState
from transformers import AutoModelForMaskedLM, PreTrainedModel

from ... import EncoderConfig, EncoderForMaskedLM, MLMCollator, load_text_dataset, pack_for_mlm
from ...baselines import bert_for_masked_lm, modernbert_for_masked_lm
from ...data import parse_named_source
from ...data.streaming import StreamedExamples, mlm_blocks, stream_text_dataset
from ...run_folder import start_run
from ...training import LOSS_METRICS, TrainingConfig, train
from ..harness import check_heads, first_n, parameter_count, parse_arguments, run_tokenizer, write_results
from .evaluation import evaluate_masked_lm

logger = logging.getLogger("pretrain_mlm")
ARCHITECTURES = ("hf_encoder", "bert", "modernbert")


@dataclass
class ModelArguments:
    architecture: str = field(
        default="hf_encoder",
        metadata={
            "help": "hf_encoder (ours), bert (transformers' BertForMaskedLM; a GLU width becomes the plain MLP of "
            "the same FLOPs) or modernbert (ModernBertForMaskedLM of the same settings, with its sparse head)."
        },
    )
    hidden_size: int = 256
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    intermediate_size: int = 512
    hidden_activation: str = "geglu"
    norm_type: str = "layernorm"
    position_embedding_type: str = "rope"
    max_position_embeddings: int = 512
    local_attention: int | None = None
    global_attn_every_n_layers: int | None = None
    hidden_dropout: float = 0.0
    attention_dropout: float = 0.0
    attn_implementation: str = "sdpa"
    init_from: str | None = field(default=None, metadata={"help": "Start from this masked-LM checkpoint."})

    def __post_init__(self):
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture={self.architecture!r}: choose one of {', '.join(ARCHITECTURES)}.")
        if not self.init_from:  # the model's settings, checked before anything is read or written
            check_heads(self.hidden_size, self.num_attention_heads)
            if self.architecture == "hf_encoder":
                EncoderConfig(**self.model_settings())

    def model_settings(self) -> dict:
        """The settings of a new model (all but `architecture` and `init_from`)."""
        return {k: v for k, v in asdict(self).items() if k not in ("architecture", "init_from")}


@dataclass
class DataArguments:
    corpus_settings: ClassVar[tuple[str, ...]] = ("train_data", "eval_data")  # the data, recorded with the run
    train_data: str = field(default="../shared/data/imdb", metadata={"help": "Local path or Hub id."})
    train_split: str = "unsup"
    text_column: str = "text"
    eval_data: list[str] = field(
        default_factory=lambda: [
            "imdb=../shared/data/imdb:validation",
            "wikitext2=../shared/data/wikitext2:validation",
        ],
        metadata={"help": "Held-out sets as name=path-or-hub-id:split."},
    )
    max_eval_documents: int = 1000
    tokenizer: str | None = field(default=None, metadata={"help": "A saved tokenizer; else one is trained."})
    vocab_size: int = 32768
    tokenizer_training_documents: int = 50000
    block_size: int = 512
    mlm_probability: float = 0.3
    whole_word_mask: bool = False
    num_proc: int = 2
    streaming: bool = field(
        default=False, metadata={"help": "Read, tokenize and pack the corpus on the fly (the budget in max_steps)."}
    )
    shuffle_buffer: int = field(default=10_000, metadata={"help": "Blocks a streamed run shuffles among."})


def load_eval_sets(data: DataArguments, tokenizer) -> dict:
    sets = {}
    for entry in data.eval_data:
        name, spec, split = parse_named_source(entry)
        documents = load_text_dataset(spec)[split]
        documents = first_n(documents, data.max_eval_documents)
        sets[name] = pack_for_mlm(documents, tokenizer, data.block_size, num_proc=data.num_proc)
    return sets


def load_documents(data: DataArguments):
    """The training split's documents: a `datasets.Dataset`, or a stream of them (`--streaming`)."""
    if data.streaming:
        return stream_text_dataset(data.train_data, data.train_split)
    corpus = load_text_dataset(data.train_data, text_column=data.text_column)
    if data.train_split not in corpus:
        raise ValueError(f"{data.train_data!r} has no split {data.train_split!r}: {list(corpus)}.")
    return corpus[data.train_split]


def training_blocks(documents, tokenizer, data: DataArguments, seed: int):
    """The documents packed into blocks: all of them now, or on the fly, this process's part (`--streaming`)."""
    if not data.streaming:
        return pack_for_mlm(documents, tokenizer, data.block_size, data.text_column, data.num_proc)
    make = mlm_blocks(tokenizer, data.block_size, data.text_column)
    return StreamedExamples(documents, make, seed=seed, buffer_size=data.shuffle_buffer, text_column=data.text_column)


def build_model(args: ModelArguments, tokenizer) -> PreTrainedModel:
    if args.init_from:
        return AutoModelForMaskedLM.from_pretrained(args.init_from, attn_implementation=args.attn_implementation)
    settings = args.model_settings()
    if args.architecture == "bert":  # global attention everywhere: no local/global layer pattern
        return bert_for_masked_lm(
            tokenizer, **{k: v for k, v in settings.items() if k != "global_attn_every_n_layers"}
        )
    if args.architecture == "modernbert":
        return modernbert_for_masked_lm(tokenizer, **settings)
    config = EncoderConfig(
        **settings,
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        cls_token_id=tokenizer.cls_token_id,
        sep_token_id=tokenizer.sep_token_id,
        mask_token_id=tokenizer.mask_token_id,
        bos_token_id=tokenizer.cls_token_id,
        eos_token_id=tokenizer.sep_token_id,
        sparse_prediction=True,
    )
    return EncoderForMaskedLM(config)


def main(argv: list[str] | None = None) -> dict:
    model_args, data_args, training = parse_arguments((ModelArguments, DataArguments, TrainingConfig), argv)
    eval_names = [parse_named_source(entry)[0] for entry in data_args.eval_data]
    run = start_run(
        training,
        {"script": "pretrain_mlm", "model": model_args, "data": data_args},
        metric_names=[f"{name}/{key}" for name in eval_names for key in LOSS_METRICS],
    )
    state = PartialState()
    with state.main_process_first():  # one process tokenizes and fills the datasets cache, the others read it
        train_documents = load_documents(data_args)
        tokenizer = run_tokenizer(
            run,
            data_args.tokenizer or model_args.init_from,
            [train_documents],
            [data_args.text_column],
            data_args.vocab_size,
            max_rows=data_args.tokenizer_training_documents,
            model_max_length=data_args.block_size,
        )
        blocks = training_blocks(train_documents, tokenizer, data_args, training.seed)
        eval_sets = load_eval_sets(data_args, tokenizer)

    model = build_model(model_args, tokenizer)
    padding_free = model.config.model_type == EncoderConfig.model_type  # ours reads packed documents, the others rows
    collator = MLMCollator(
        tokenizer,
        data_args.mlm_probability,
        whole_word_mask=data_args.whole_word_mask,
        padding_free=padding_free,
        seed=training.seed,
    )

    def evaluate(model, accelerator) -> dict[str, float]:
        metrics = {}
        for name, dataset in eval_sets.items():
            scores = evaluate_masked_lm(
                model,
                dataset,
                tokenizer,
                accelerator,
                training.per_device_batch_size,
                data_args.mlm_probability,
                padding_free=padding_free,
            )
            metrics.update({f"{name}/{key}": value for key, value in scores.items()})
        return metrics

    result = train(model, blocks, collator, run, tokenizer, evaluate)
    summary = {**asdict(result), "parameters": parameter_count(model)}
    if not data_args.streaming:
        summary["train_tokens_per_epoch"] = sum(map(len, blocks["input_ids"]))
    if state.is_main_process:
        write_results(run.path, summary)
        logger.info("done: %s", json.dumps(summary))
    run.close()
    return summary


if __name__ == "__main__":
    main()
