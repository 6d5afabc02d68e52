"""Denoising pretraining of an encoder-decoder (BART-style) on monolingual text, on the shared training loop; with
`--latent_size`, a variational autoencoder of sentences.

    accelerate launch training/pretrain_denoising.py --config denoising_multi30k
    python training/pretrain_denoising.py --config vae_multi30k_en     # sentence VAE
    python training/train_translation.py --config translation_de_en \\
        --init_from runs/denoising_multi30k/final                              # then fine-tune on translation

Reads each `texts` source (`language=path-or-hub-id[:split]`: a side of aligned parallel files such as Multi30k's,
or any text data such as IMDB's unlabeled reviews), trains a joint tokenizer with the sources' language tags unless
one is given, cuts documents into segments of whole sentences, and trains `Seq2SeqForConditionalGeneration` to
rebuild each segment from a noised copy (`DenoisingCollator`: sentence permutation, text infilling). The targets
start with the language tag, as translation targets do, so a translation fine-tune starts from a decoder that
already writes both languages.

Every `eval_every` steps: the reconstruction loss on each source's validation split (the same noise every time);
with the bottleneck also the KL per sentence, the active latent units and the reconstruction BLEU of greedy
decoding from the posterior mean of clean validation sentences. `results.json` gets the final figures and, with
the bottleneck, sentences sampled from the prior and decoded along interpolations between two sentences' latents.
"""

import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import ClassVar

import torch
from accelerate import PartialState
from accelerate.utils import broadcast_object_list
from datasets import concatenate_datasets

from ... import (
    DenoisingCollator,
    Seq2SeqForConditionalGeneration,
    active_units,
    load_monolingual_dataset,
    prepare_denoising,
    score_translations,
    target_language_token,
    translate,
)
from ...data import monolingual_source_name, parse_named_source
from ...data.streaming import StreamedExamples, denoising_segments, stream_monolingual_dataset
from ...modeling_seq2seq_vae import gaussian_kl
from ...run_folder import start_run
from ...training import LOSS_METRICS, TrainingConfig, evaluate_loss, train
from ..harness import first_n, parameter_count, parse_arguments, run_tokenizer, write_results
from ..translation.train import ModelArguments, build_model  # the translation model's settings, shared

logger = logging.getLogger("pretrain_denoising")


@dataclass
class DataArguments:
    corpus_settings: ClassVar[tuple[str, ...]] = ("texts",)  # the data, recorded with the run
    texts: list[str] = field(
        default_factory=lambda: ["en=../shared/data/multi30k", "de=../shared/data/multi30k"],
        metadata={"help": "Monolingual sources as language=path-or-hub-id[:split] (default split: train)."},
    )
    max_documents: int = field(default=0, metadata={"help": "Only the first N training documents per source."})
    tokenizer: str | None = field(default=None, metadata={"help": "A saved seq2seq tokenizer; else one is trained."})
    tokenizer_model: str = field(default="unigram", metadata={"help": "unigram, bpe or wordpiece."})
    vocab_size: int = 8000
    max_length: int = field(default=128, metadata={"help": "Tokens per segment, language tag and </s> included."})
    num_proc: int | None = None
    streaming: bool = field(
        default=False, metadata={"help": "Read and segment the training texts on the fly (the budget in max_steps)."}
    )
    shuffle_buffer: int = field(default=10_000, metadata={"help": "Segments a streamed run shuffles among."})


@dataclass
class NoiseArguments:
    mask_ratio: float = field(default=0.3, metadata={"help": "Fraction of words hidden by text infilling."})
    poisson_lambda: float = field(default=3.0, metadata={"help": "Mean length (in words) of a hidden span."})
    permute_sentence_ratio: float = field(default=1.0, metadata={"help": "Share of segments whose sentences shuffle."})
    kl_annealing_steps: int = field(
        default=0, metadata={"help": "KL weight rises linearly from 0 to 1 (0: always 1)."}
    )


@dataclass
class EvaluationArguments:
    eval_max_examples: int = field(default=500, metadata={"help": "Validation segments per source (0: all)."})
    eval_batch_size: int = 64
    reconstruction_examples: int = field(default=200, metadata={"help": "Bottleneck: sentences decoded for BLEU."})
    max_new_tokens: int = 128


LATENT_METRICS = ("kl_per_sentence", "active_units", "reconstruction_bleu", "reconstruction_chrf")


def latent_report(
    model: Seq2SeqForConditionalGeneration,
    tokenizer,
    texts: list[str],
    language: str,
    batch_size: int,
    max_new_tokens: int,
) -> dict[str, float]:
    """KL per sentence, active units and greedy reconstruction BLEU/chrF of held-out sentences."""
    model.eval()
    means, kls = [], []
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(texts[start : start + batch_size], padding=True, return_tensors="pt").to(model.device)
            mean, logvar = model.encode_latent(batch["input_ids"], batch["attention_mask"])
            means.append(mean.float())
            kls.append(gaussian_kl(mean.float(), logvar.float()).sum(-1))
    reconstructions = translate(
        model, tokenizer, texts, language, num_beams=1, batch_size=batch_size, max_new_tokens=max_new_tokens
    )
    scores = score_translations(reconstructions, texts)
    model.train()
    values = (
        torch.cat(kls).mean().item(),
        active_units(torch.cat(means)),
        scores["bleu"]["score"],
        scores["chrf"]["score"],
    )
    return dict(zip(LATENT_METRICS, values, strict=True))


def decode_latents(model, tokenizer, latents: torch.Tensor, language: str, max_new_tokens: int) -> list[str]:
    tag = target_language_token(tokenizer, language)
    generated = model.generate(latent=latents.to(model.device), forced_bos_token_id=tag, max_new_tokens=max_new_tokens)
    return tokenizer.batch_decode(generated, skip_special_tokens=True)


def latent_examples(model, tokenizer, texts: list[str], language: str, max_new_tokens: int, seed: int) -> dict:
    """Five sentences decoded from prior samples; the path between two held-out sentences' latents."""
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    prior = torch.randn(5, model.config.latent_size, generator=generator)
    with torch.no_grad():
        batch = tokenizer(texts[:2], padding=True, return_tensors="pt").to(model.device)
        start, end = model.encode_latent(batch["input_ids"], batch["attention_mask"])[0]
    weights = torch.linspace(0, 1, 5)[:, None].to(start.device)
    path = (1 - weights) * start + weights * end
    return {
        "prior_samples": decode_latents(model, tokenizer, prior, language, max_new_tokens),
        "interpolation": {
            "from": texts[0],
            "to": texts[1],
            "steps": decode_latents(model, tokenizer, path, language, max_new_tokens),
        },
    }


def denoising_sources(model_args: ModelArguments, data_args: DataArguments, training: TrainingConfig) -> list:
    """The `texts` sources as `(language, spec, split)`, once the settings are known to fit denoising pretraining."""
    if model_args.architecture != "hf_seq2seq":
        raise ValueError("Denoising pretraining trains hf_seq2seq models (architecture=hf_seq2seq).")
    if model_args.latent_size and training.label_smoothing:
        raise ValueError("label_smoothing replaces the model's loss, which carries the KL term: leave it at 0.")
    sources = [parse_named_source(entry, default_split="train", what="language") for entry in data_args.texts]
    if not sources:
        raise ValueError("Give at least one monolingual source in `texts`.")
    return sources


def metric_names(sources: list, latent_size: int | None) -> list[str]:
    """Each source's validation losses; with the bottleneck, the latent figures too."""
    names = [
        f"{monolingual_source_name(language, spec)}/{key}" for language, spec, _ in sources for key in LOSS_METRICS
    ]
    return names + ([f"latent/{key}" for key in LATENT_METRICS] if latent_size else [])


def load_documents(sources: list, data_args: DataArguments) -> dict:
    """Each source's documents: name -> `(language, training documents, validation documents)`; with `streaming`,
    the training documents are a stream."""
    documents = {}
    for language, spec, split in sources:
        if data_args.streaming:
            data = load_monolingual_dataset(spec, language, "validation")
            train_texts = stream_monolingual_dataset(spec, language, split)
        else:
            data = load_monolingual_dataset(spec, language, split)
            train_texts = data[split]
        train_texts = first_n(train_texts, data_args.max_documents or None)  # 0: all
        documents[monolingual_source_name(language, spec)] = (language, train_texts, data["validation"])
    return documents


def denoising_tokenizer(run, documents: dict, sources: list, model_args: ModelArguments, data_args: DataArguments):
    """The run's joint tokenizer, with the sources' language tags."""
    return run_tokenizer(
        run,
        data_args.tokenizer or model_args.init_from,
        [texts for _, texts, _ in documents.values()],
        ["text"],
        data_args.vocab_size,
        kind="seq2seq",
        model=data_args.tokenizer_model,
        languages=sorted({language for language, _, _ in sources}),
        model_max_length=data_args.max_length,
    )


def prepare_segments(
    documents: dict, tokenizer, data_args: DataArguments, eval_args: EvaluationArguments, seed: int
) -> tuple:
    """The training segments of all sources (one after the other; with `streaming`, made on the fly), and each
    source's validation segments (cut to `eval_max_examples`)."""
    segments, validation = [], {}
    for name, (language, train_texts, validation_texts) in documents.items():
        if not data_args.streaming:
            train_texts = prepare_denoising(
                train_texts, tokenizer, language, data_args.max_length, num_proc=data_args.num_proc
            )
        segments.append(train_texts)
        held_out = prepare_denoising(validation_texts, tokenizer, language, data_args.max_length)
        validation[name] = first_n(held_out, eval_args.eval_max_examples or None)  # 0: all
    if not data_args.streaming:
        return concatenate_datasets(segments), validation
    make = denoising_segments(tokenizer, data_args.max_length)
    stream = StreamedExamples(concatenate_datasets(segments), make, seed=seed, buffer_size=data_args.shuffle_buffer)
    return stream, validation


def noise_settings(noise_args: NoiseArguments) -> dict:
    return {
        "mask_ratio": noise_args.mask_ratio,
        "poisson_lambda": noise_args.poisson_lambda,
        "permute_sentence_ratio": noise_args.permute_sentence_ratio,
    }


def shared_latent_report(
    model, accelerator, tokenizer, sentences: list[str], language: str, eval_args: EvaluationArguments
) -> dict:
    """`latent_report`, decoded on the main process; every process gets the figures (best_metric)."""
    report = [
        latent_report(
            accelerator.unwrap_model(model),
            tokenizer,
            sentences,
            language,
            eval_args.eval_batch_size,
            eval_args.max_new_tokens,
        )
        if accelerator.is_main_process
        else None
    ]
    if accelerator.num_processes > 1:
        broadcast_object_list(report)
    return report[0]


def validation_evaluator(
    validation: dict,
    tokenizer,
    noise_args: NoiseArguments,
    eval_args: EvaluationArguments,
    seed: int,
    latent: tuple[list[str], str] | None = None,
) -> Callable:
    """The run's `evaluate(model, accelerator)`: each source's reconstruction loss, the same noise every time; with
    the bottleneck (`latent`: held-out sentences and their language), the latent figures of those sentences too."""
    noise = noise_settings(noise_args)

    def evaluate(model, accelerator) -> dict[str, float]:
        # the same noise at every evaluation, one seed per process
        held_out = DenoisingCollator(tokenizer, **noise, seed=seed + 1 + accelerator.process_index)
        metrics = {
            f"{name}/{key}": value
            for name, dataset in validation.items()
            for key, value in evaluate_loss(model, dataset, held_out, accelerator, eval_args.eval_batch_size).items()
        }
        if latent:
            report = shared_latent_report(model, accelerator, tokenizer, *latent, eval_args)
            metrics.update({f"latent/{key}": value for key, value in report.items()})
        return metrics

    return evaluate


def kl_annealing(steps: int) -> Callable[[int], dict[str, float]]:
    """The model's `kl_weight` at each step: rising linearly from 0 to 1 over `steps` (0: always 1)."""

    def anneal_kl(step: int) -> dict[str, float]:
        return {"kl_weight": min(1.0, (step + 1) / steps) if steps else 1.0}

    return anneal_kl


def main(argv: list[str] | None = None) -> dict:
    model_args, data_args, noise_args, eval_args, training = parse_arguments(
        (ModelArguments, DataArguments, NoiseArguments, EvaluationArguments, TrainingConfig), argv
    )
    sources = denoising_sources(model_args, data_args, training)
    settings = {
        "script": "pretrain_denoising",
        "model": model_args,
        "data": data_args,
        "noise": noise_args,
        "evaluation": eval_args,
    }
    run = start_run(training, settings, metric_names(sources, model_args.latent_size))
    state = PartialState()
    with state.main_process_first():  # one process reads and tokenizes, filling the datasets cache for the others
        documents = load_documents(sources, data_args)
        tokenizer = denoising_tokenizer(run, documents, sources, model_args, data_args)
        train_segments, validation = prepare_segments(documents, tokenizer, data_args, eval_args, training.seed)

    model = build_model(model_args, tokenizer)
    model.generation_config.max_new_tokens = eval_args.max_new_tokens  # its saved folders generate as it evaluates
    collator = DenoisingCollator(tokenizer, **noise_settings(noise_args), padding_free=True, seed=training.seed)
    language, _, first_validation = next(iter(documents.values()))  # the latent figures: the first source's
    sentences = [text.strip() for text in first_validation["text"][: eval_args.reconstruction_examples]]
    latent = (sentences, language) if model_args.latent_size else None
    evaluate = validation_evaluator(validation, tokenizer, noise_args, eval_args, training.seed, latent)
    parameters = parameter_count(model)
    step_inputs = kl_annealing(noise_args.kl_annealing_steps) if model_args.latent_size else None
    result = train(model, train_segments, collator, run, tokenizer, evaluate, step_inputs=step_inputs)

    summary = {**asdict(result), "parameters": parameters}
    if not data_args.streaming:
        summary["train_segments"] = len(train_segments)
        summary["train_tokens_per_epoch"] = sum(map(len, train_segments["labels"]))
    if model_args.latent_size and state.is_main_process:
        final = type(model).from_pretrained(run.path / "final").to(state.device)
        summary["latent_examples"] = latent_examples(
            final, tokenizer, sentences, language, eval_args.max_new_tokens, training.seed
        )
    if state.is_main_process:
        write_results(run.path, summary)
        logger.info("done: %s", json.dumps(summary, ensure_ascii=False))
    run.close()
    return summary


if __name__ == "__main__":
    main()
