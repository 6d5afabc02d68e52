"""The model card's section of a denoising (or, with a latent bottleneck, a sentence-VAE) pretraining run: the
reconstruction figures of each text source, the latent figures of a VAE, its objective and a text-to-text example."""

from ...cards import ENCODER_TEMPLATE, SEQ2SEQ_FAMILY, CardSection, ResultRow, RunRecord, describe_data
from ...data import monolingual_source_name, parse_named_source

RECONSTRUCTION_METRICS = {"perplexity": "reconstruction perplexity", "accuracy": "reconstruction token accuracy"}
LATENT_METRIC_NAMES = {
    "kl_per_sentence": "KL per sentence (nats)",
    "active_units": "active latent units",
    "reconstruction_bleu": "reconstruction BLEU (greedy, posterior mean)",
    "reconstruction_chrf": "reconstruction chrF (greedy, posterior mean)",
}


def text_sources(run: RunRecord) -> list[tuple[str, str, str]]:
    """(language, data spec, metrics name) of each `language=path-or-hub-id[:split]` source of a denoising run."""
    sources = []
    for entry in run.data["texts"]:
        language, spec, _ = parse_named_source(entry, default_split="train", what="language")
        sources.append((language, spec, monolingual_source_name(language, spec)))
    return sources


def result_rows(run: RunRecord, sources: list[tuple[str, str, str]]) -> list[ResultRow]:
    metrics, variational = run.chosen_metrics(), bool(run.settings["model"].get("latent_size"))
    noise = {key: run.settings["noise"][key] for key in ("mask_ratio", "poisson_lambda", "permute_sentence_ratio")}
    rows = []
    for index, (language, spec, name) in enumerate(sources):
        dataset = describe_data(spec, run)
        where = dict(
            task_type="text2text-generation",
            task_name="Sentence autoencoding" if variational else "Denoising autoencoding",
            dataset_type=dataset.dataset_type,
            dataset_name=f"{dataset.title} ({language})",
            dataset_config=language,
            dataset_split="validation",
        )
        rows += [
            ResultRow(
                **where, metric_type=key, metric_name=metric_name, value=metrics[f"{name}/{key}"], metric_args=noise
            )
            for key, metric_name in RECONSTRUCTION_METRICS.items()
            if f"{name}/{key}" in metrics
        ]
        if index == 0:  # the latent figures are measured on the first source's clean validation sentences
            rows += [
                ResultRow(**where, metric_type=key, metric_name=metric_name, value=metrics[f"latent/{key}"])
                for key, metric_name in LATENT_METRIC_NAMES.items()
                if f"latent/{key}" in metrics
            ]
    return rows


def card_section(run: RunRecord) -> CardSection:
    model, noise, data = run.settings["model"], run.settings["noise"], run.data
    sources = text_sources(run)
    trained_on = describe_data(sources[0][1], run)
    corruption = [
        part
        for part, on in (
            ("sentence permutation", noise["permute_sentence_ratio"] > 0),
            (
                f"text infilling ({noise['mask_ratio']:.0%} of the words hidden in spans of "
                f"Poisson({noise['poisson_lambda']:g}) lengths)",
                noise["mask_ratio"] > 0,
            ),
        )
        if on
    ]
    noised = f" from a copy corrupted by {' and '.join(corruption)}" if corruption else ""
    evaluation_note = (
        "Teacher-forced reconstruction perplexity and token accuracy on each source's validation split, corrupted by "
        "the training noise (the same draw at every evaluation)."
    )
    if model.get("latent_size"):
        annealing = (
            f"KL weight annealed from 0 to 1 over {noise['kl_annealing_steps']:,} steps)"
            if noise["kl_annealing_steps"]
            else "full KL weight from the start)"
        )
        objective = (
            f"trained as a sentence variational autoencoder: a {model['latent_size']}-dimensional Gaussian latent, "
            f"read by the decoder through {model['latent_memory_tokens']} memory vectors, rebuilds the text{noised} "
            f"(KL free bits {model['kl_free_bits']:g}, " + annealing
        )
        intended_use = (
            "Sentence embeddings (the posterior mean, `model.encode_latent(...)`), sampling sentences from the prior "
            "and interpolating between sentences (`model.generate(latent=...)`)."
        )
        example = "A man rides a horse on the beach."
        evaluation_note += (
            f" The latent figures come from the first {run.settings['evaluation']['reconstruction_examples']:,} "
            f"clean validation sentences of {sources[0][2]}: the KL of the posterior from the prior per sentence, "
            "the latent dimensions whose posterior mean varies across sentences (variance above 0.01), and "
            "BLEU/chrF of greedy reconstructions from the posterior mean."
        )
    else:
        objective = f"pretrained as a denoising autoencoder: it rebuilds text{noised}"
        intended_use = (
            "Initialising translation and other text-to-text models (`training/train_translation.py --init_from`), "
            "and filling in masked spans of text."
        )
        example = f"A man {run.mask_token} on the beach."
    others = {
        other.title: other
        for _, spec, _ in sources[1:]
        if (other := describe_data(spec, run)).title != trained_on.title
    }
    return CardSection(
        results=result_rows(run, sources),
        data=trained_on,
        pipeline_tag="text2text-generation",
        template=ENCODER_TEMPLATE,
        example=example,
        evaluation_note=evaluation_note,
        fields=dict(
            family=SEQ2SEQ_FAMILY,
            objective=objective,
            intended_use=intended_use,
            auto_class="AutoModelForSeq2SeqLM",
            train_description=(
                f"{', '.join(name for _, _, name in sources)}: segments of whole sentences, at most "
                f"{data['max_length']} tokens each, "
                + (
                    f"made on the fly from the streamed texts ({run.train_results['tokens_seen']:,} tokens seen)"
                    if data.get("streaming")
                    else f"{run.results['train_segments']:,} of them "
                    f"({run.results['train_tokens_per_epoch']:,} target tokens per epoch)"
                )
            ),
            eval_data=list(others.values()),
        ),
        languages=sorted({language for language, _, _ in sources}),
    )
