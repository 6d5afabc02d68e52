"""Train a translation model on the shared training loop, pick it on validation BLEU, score it on the test set.

    accelerate launch training/train_translation.py --config translation_de_en
    python training/train_translation.py --config translation_de_en --architecture marian \
        --output_dir runs/marian_de_en                        # transformers' MarianMTModel, same data and budget

Reads sentence pairs with `datasets` (aligned local files such as Multi30k's, or a Hub id like `bentrevett/multi30k`),
trains a joint tokenizer with language tags unless one is given, and trains `Seq2SeqForConditionalGeneration` (or a
`MarianMTModel` of the same size) with label-smoothed cross-entropy on length-bucketed batches. Every `eval_every`
steps it reports validation loss and greedy BLEU/chrF; the best model by validation BLEU is exported to `best/`
(averages of the last checkpoints compete for it with `--average_last 5 10`). With `--tune_num_beams` and/or
`--tune_length_penalty`, that model decodes the validation split with every combination, and the best by validation
BLEU becomes the test's decoding, saved as the model's `generation_config.json` (what pipelines use by default).
Then it translates the test split once: hypotheses, scores with sacreBLEU signatures and `results.json` are written
beside it.
"""

import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import ClassVar

import torch
from accelerate import PartialState
from accelerate.utils import gather_object
from datasets import DatasetDict
from transformers import AutoModelForSeq2SeqLM

from ... import (
    Seq2SeqCollator,
    Seq2SeqConfig,
    Seq2SeqForConditionalGeneration,
    Seq2SeqVAEConfig,
    Seq2SeqVAEForConditionalGeneration,
    load_parallel_dataset,
    prepare_translation,
    score_translations,
    translate,
    write_translations,
)
from ...adapters import LoraArguments, is_adapter, load_adapted, with_lora
from ...baselines import marian_mt
from ...data.streaming import StreamedExamples, stream_parallel_dataset, translation_pairs
from ...run_folder import start_run
from ...tokenization import seq2seq_token_ids
from ...training import LOSS_METRICS, TrainingConfig, evaluate_loss, train
from ...translation import TRANSLATION_SCORES
from ..harness import (
    check_heads,
    chosen_model,
    first_n,
    parameter_count,
    parse_arguments,
    run_tokenizer,
    write_results,
)

logger = logging.getLogger("train_translation")
ARCHITECTURES = ("hf_seq2seq", "marian")


@dataclass
class ModelArguments:  # also the denoising task's (tasks/denoising/pretrain.py): the same models
    architecture: str = field(default="hf_seq2seq", metadata={"help": "hf_seq2seq (ours) or marian (MarianMTModel)."})
    hidden_size: int = 256
    num_hidden_layers: int = field(default=3, metadata={"help": "Encoder layers."})
    num_decoder_layers: int = 3
    num_attention_heads: int = 4
    intermediate_size: int = 1024
    hidden_activation: str = field(default="gelu", metadata={"help": "gelu, geglu, swiglu (Marian: gelu only)."})
    norm_type: str = "layernorm"
    position_embedding_type: str = "rope"
    max_position_embeddings: int = 256
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.0
    embedding_dropout: float = field(
        default=0.0, metadata={"help": "On the input embeddings (Marian: its one dropout, hidden_dropout, is there)."}
    )
    attn_implementation: str = "sdpa"
    latent_size: int | None = field(default=None, metadata={"help": "Variational bottleneck size (None: off)."})
    latent_memory_tokens: int = field(default=1, metadata={"help": "Memory vectors the latent becomes."})
    kl_free_bits: float = field(default=0.0, metadata={"help": "KL floor per latent dimension, in nats."})
    init_from: str | None = field(default=None, metadata={"help": "Start from this seq2seq checkpoint."})

    def __post_init__(self):
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture={self.architecture!r}: choose one of {', '.join(ARCHITECTURES)}.")
        if self.architecture == "marian" and self.latent_size:
            raise ValueError(
                "The variational bottleneck (latent_size) is an hf_seq2seq feature; MarianMTModel has none."
            )
        if not self.init_from:  # the model's settings, checked before anything is read or written
            check_heads(self.hidden_size, self.num_attention_heads)
            if self.architecture == "hf_seq2seq":
                our_config(self)


VAE_SETTINGS = ("latent_size", "latent_memory_tokens", "kl_free_bits")


def our_config(args: ModelArguments, **token_ids) -> Seq2SeqConfig:
    """The config of a new model of ours from the settings: a sentence VAE's with `latent_size`."""
    settings = {k: v for k, v in asdict(args).items() if k not in ("architecture", "init_from", *VAE_SETTINGS)}
    if args.latent_size:  # the variational bottleneck
        vae = {name: getattr(args, name) for name in VAE_SETTINGS}
        return Seq2SeqVAEConfig(**settings, **vae, **token_ids, sparse_prediction=True)
    return Seq2SeqConfig(**settings, **token_ids, sparse_prediction=True)


@dataclass
class DataArguments:
    corpus_settings: ClassVar[tuple[str, ...]] = ("data",)  # the data, recorded with the run
    data: str = field(default="../shared/data/multi30k", metadata={"help": "Parallel data: path or Hub id."})
    src: str = "de"
    tgt: str = "en"
    tokenizer: str | None = field(default=None, metadata={"help": "A saved tokenizer; else a joint one is trained."})
    tokenizer_model: str = field(default="unigram", metadata={"help": "unigram, bpe or wordpiece."})
    vocab_size: int = 8000
    max_source_length: int = 128
    max_target_length: int = 128
    overlong: str = field(default="truncate", metadata={"help": "Over-long pairs: truncate or drop (both logged)."})
    max_train_examples: int = field(default=0, metadata={"help": "Only the first N training pairs (0: all)."})
    num_proc: int | None = None
    streaming: bool = field(
        default=False, metadata={"help": "Read and tokenize the training pairs on the fly (the budget in max_steps)."}
    )
    shuffle_buffer: int = field(default=10_000, metadata={"help": "Pairs a streamed run shuffles among."})


@dataclass
class EvaluationArguments:
    eval_max_examples: int = field(default=0, metadata={"help": "Validation pairs for greedy BLEU (0: all)."})
    eval_batch_size: int = 64
    test_split: str = "test"
    test_max_examples: int = field(default=0, metadata={"help": "Only the first N test pairs (0: all)."})
    test_num_beams: int = 5
    length_penalty: float = 1.0
    tune_num_beams: list[int] = field(
        default_factory=list, metadata={"help": "Beam sizes tried on validation; the best decodes the test."}
    )
    tune_length_penalty: list[float] = field(
        default_factory=list, metadata={"help": "Length penalties tried on validation, with each beam size."}
    )
    max_new_tokens: int = 128

    def __post_init__(self):
        if any(beams < 1 for beams in (self.test_num_beams, *self.tune_num_beams)):
            raise ValueError(f"Beam sizes must be at least 1: {self.test_num_beams}, {self.tune_num_beams}.")

    def decodings(self) -> list[dict]:
        """The beam sizes and length penalties to try: the tuned grid, or the one given decoding (greedy search, one
        beam, has no length penalty: it is tried once)."""
        beams = self.tune_num_beams or [self.test_num_beams]
        penalties = self.tune_length_penalty or [self.length_penalty]
        grid = [{"num_beams": b, "length_penalty": p if b > 1 else 1.0} for b in beams for p in penalties]
        return list({tuple(decoding.values()): decoding for decoding in grid}.values())


def build_model(args: ModelArguments, tokenizer) -> torch.nn.Module:
    if args.init_from:
        return AutoModelForSeq2SeqLM.from_pretrained(args.init_from, attn_implementation=args.attn_implementation)
    if args.architecture == "marian":  # no bottleneck (refused in ModelArguments)
        settings = {k: v for k, v in asdict(args).items() if k not in ("architecture", "init_from", *VAE_SETTINGS)}
        return marian_mt(tokenizer, **settings)
    config = our_config(args, **seq2seq_token_ids(tokenizer))
    if isinstance(config, Seq2SeqVAEConfig):  # a sentence VAE
        return Seq2SeqVAEForConditionalGeneration(config)
    return Seq2SeqForConditionalGeneration(config)


def translate_everywhere(model, state: PartialState, tokenizer, sources: list[str], tgt: str, **options) -> list[str]:
    """Each process translates its contiguous slice of `sources`; every process gets all translations, in order."""
    per_process = math.ceil(len(sources) / state.num_processes)
    mine = sources[state.process_index * per_process : (state.process_index + 1) * per_process]
    hypotheses = translate(model, tokenizer, mine, tgt, show_progress=state.is_local_main_process, **options)
    return gather_object(hypotheses) if state.num_processes > 1 else hypotheses


def load_data(
    run, model_args: ModelArguments, data_args: DataArguments, eval_args: EvaluationArguments, seed: int
) -> tuple:
    """The sentence pairs (the training split cut to `max_train_examples`), the run's joint tokenizer and the pairs
    tokenized: `(pairs, tokenizer, tokenized)`; with `streaming`, the training pairs are a stream, tokenized on the
    fly (`StreamedExamples`)."""
    src, tgt = data_args.src, data_args.tgt
    evaluated = ("validation", eval_args.test_split) if data_args.streaming else None
    pairs = load_parallel_dataset(data_args.data, src, tgt, splits=evaluated)
    if data_args.streaming:
        pairs = {**pairs, "train": stream_parallel_dataset(data_args.data, src, tgt)}
    for split in ("train", "validation", eval_args.test_split):
        if split not in pairs:
            raise ValueError(f"{data_args.data!r} has no {split!r} split of {src}-{tgt} pairs: {sorted(pairs)}.")
    pairs["train"] = first_n(pairs["train"], data_args.max_train_examples or None)  # 0: all
    tokenizer = run_tokenizer(
        run,
        data_args.tokenizer or model_args.init_from,
        [pairs["train"]],
        [src, tgt],
        data_args.vocab_size,
        kind="seq2seq",
        model=data_args.tokenizer_model,
        languages=sorted((src, tgt)),
        model_max_length=data_args.max_source_length,
    )
    limits = (data_args.max_source_length, data_args.max_target_length, data_args.overlong)
    mapped = DatasetDict({name: split for name, split in pairs.items() if not data_args.streaming or name != "train"})
    tokenized = prepare_translation(mapped, tokenizer, src, tgt, *limits, data_args.num_proc)
    if data_args.streaming:
        make = translation_pairs(tokenizer, src, tgt, *limits)
        buffer = data_args.shuffle_buffer
        tokenized["train"] = StreamedExamples(
            pairs["train"], make, seed=seed, buffer_size=buffer, text_column=(src, tgt)
        )
    return pairs, tokenizer, tokenized


def generation_options(eval_args: EvaluationArguments) -> dict:
    """The settings of `translate` that validation (greedy) and test (beam search) share."""
    return {"batch_size": eval_args.eval_batch_size, "max_new_tokens": eval_args.max_new_tokens}


def choose_decoding(
    model, state: PartialState, tokenizer, pairs, data_args: DataArguments, eval_args: EvaluationArguments, metric: str
) -> tuple[dict, list[dict]]:
    """The beam size and length penalty the test is decoded with: the given ones, or of the tuned grid the one with
    the highest validation `metric` (a score of `score_translations`); and every tried decoding's validation scores."""
    decodings = eval_args.decodings()
    if len(decodings) == 1:
        return decodings[0], []
    validation = first_n(pairs["validation"], eval_args.eval_max_examples or None)
    sources, references = list(validation[data_args.src]), list(validation[data_args.tgt])
    tried = []
    for decoding in decodings:
        hypotheses = translate_everywhere(
            model, state, tokenizer, sources, data_args.tgt, **generation_options(eval_args), **decoding
        )
        scores = {name: score["score"] for name, score in score_translations(hypotheses, references).items()}
        tried.append({**decoding, **scores})
        logger.info("validation, beams %(num_beams)d, length penalty %(length_penalty)g: %(bleu).2f BLEU", tried[-1])
    chosen = max(tried, key=lambda row: row[metric])
    return {key: chosen[key] for key in decodings[0]}, tried


def validation_evaluator(
    pairs, tokenized, collator, tokenizer, data_args: DataArguments, eval_args: EvaluationArguments
) -> Callable:
    """The run's `evaluate(model, accelerator)`: validation loss, and BLEU/chrF of greedy translations."""
    validation = first_n(pairs["validation"], eval_args.eval_max_examples or None)
    validation_sources, validation_references = list(validation[data_args.src]), list(validation[data_args.tgt])
    generation = generation_options(eval_args)

    def evaluate(model, accelerator) -> dict[str, float]:
        losses = evaluate_loss(model, tokenized["validation"], collator, accelerator, eval_args.eval_batch_size)
        # the unwrapped model keeps the mixed-precision forward of the prepared one
        hypotheses = translate_everywhere(
            accelerator.unwrap_model(model),
            accelerator,
            tokenizer,
            validation_sources,
            data_args.tgt,
            num_beams=1,
            **generation,
        )
        scores = score_translations(hypotheses, validation_references)
        return {
            **{f"validation/{k}": v for k, v in losses.items()},
            **{f"validation/{name}": score["score"] for name, score in scores.items()},
        }

    return evaluate


def evaluate_on_test(
    run, state: PartialState, tokenizer, pairs, data_args: DataArguments, eval_args: EvaluationArguments
) -> tuple:
    """The test set, once, translated with beam search by the model chosen on validation, with the decoding chosen
    on validation (saved as the model's generation config): `(chosen model folder, hypotheses, test figures)`."""
    chosen = chosen_model(run)
    best = (load_adapted(chosen) if is_adapter(chosen) else AutoModelForSeq2SeqLM.from_pretrained(chosen)).to(
        state.device
    )
    metric = run.config.best_metric.removeprefix("validation/")
    decoding, tried = choose_decoding(
        best, state, tokenizer, pairs, data_args, eval_args, metric if metric in TRANSLATION_SCORES else "bleu"
    )
    if state.is_main_process and not is_adapter(chosen):  # what pipelines and `generate` then use by default
        best.generation_config.update(**decoding)
        best.generation_config.save_pretrained(chosen)
    started = time.perf_counter()
    test = first_n(pairs[eval_args.test_split], eval_args.test_max_examples or None)
    hypotheses = translate_everywhere(
        best, state, tokenizer, list(test[data_args.src]), data_args.tgt, **generation_options(eval_args), **decoding
    )
    scores = score_translations(hypotheses, list(test[data_args.tgt]))
    figures = {
        "split": eval_args.test_split,
        "examples": len(hypotheses),
        **decoding,
        "seconds": time.perf_counter() - started,
        **scores,
        "decoding_on_validation": tried,
    }
    return chosen, hypotheses, figures


def write_test_outputs(run, chosen, data_args: DataArguments, hypotheses: list[str], summary: dict) -> None:
    """The test hypotheses and scores beside the chosen model, `results.json` in the run folder, the scores
    printed."""
    test = summary["test"]
    write_translations(chosen, test["split"], data_args.src, data_args.tgt, hypotheses, test)
    write_results(run.path, summary)
    for name in TRANSLATION_SCORES:
        print(f"test {name:<16} {test[name]['score']:6.2f}   {test[name]['signature']}")


def main(argv: list[str] | None = None) -> dict:
    model_args, data_args, eval_args, lora, training = parse_arguments(
        (ModelArguments, DataArguments, EvaluationArguments, LoraArguments, TrainingConfig), argv
    )
    if lora.lora_r and not model_args.init_from:
        raise ValueError("LoRA adapts a trained model: give it with --init_from (or set --lora_r 0).")
    settings = {
        "script": "train_translation",
        "model": model_args,
        "data": data_args,
        "evaluation": eval_args,
        "lora": lora,
    }
    run = start_run(training, settings, [f"validation/{key}" for key in (*LOSS_METRICS, *TRANSLATION_SCORES)])
    state = PartialState()
    with state.main_process_first():  # one process reads and tokenizes, filling the datasets cache for the others
        pairs, tokenizer, tokenized = load_data(run, model_args, data_args, eval_args, training.seed)

    model = build_model(model_args, tokenizer)
    # what its saved folders tell pipelines, `generate` and `translate`: the length validation decodes to, its direction
    model.generation_config.max_new_tokens = eval_args.max_new_tokens
    model.config.translation_directions = [f"{data_args.src}-{data_args.tgt}"]
    padding_free = isinstance(model, Seq2SeqForConditionalGeneration)  # Marian reads padded batches only
    collator = Seq2SeqCollator(tokenizer, padding_free=padding_free)
    evaluate = validation_evaluator(pairs, tokenized, collator, tokenizer, data_args, eval_args)
    parameters = parameter_count(model)
    if lora.lora_r:  # adapters: only they train
        model = with_lora(model, lora, "translation")
    result = train(model, tokenized["train"], collator, run, tokenizer, evaluate)

    chosen, hypotheses, test = evaluate_on_test(run, state, tokenizer, pairs, data_args, eval_args)
    summary = {
        "model": str(chosen),
        "architecture": model_args.architecture,
        "parameters": parameters,
        "trainable_parameters": parameter_count(model, trainable=True),
        "train": asdict(result),
        "train_pairs": None if data_args.streaming else len(tokenized["train"]),
        "test": test,
    }
    if state.is_main_process:
        write_test_outputs(run, chosen, data_args, hypotheses, summary)
    run.close()
    return summary


if __name__ == "__main__":
    main()
