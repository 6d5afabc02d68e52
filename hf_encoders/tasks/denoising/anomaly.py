"""Reconstruction-based anomaly detection: score held-out in-domain texts and out-of-domain texts with a model
trained on the in-domain data, and report how well the scores tell them apart (AUROC).

    python training/evaluate_anomaly.py --model runs/denoising_imdb/final --in_domain imdb=../shared/data/imdb:test \
        --out_of_domain multi30k=../shared/data/multi30k:test wikitext2=../shared/data/wikitext2:test \
        --output_dir runs/anomaly_imdb

The score is a denoising autoencoder's reconstruction loss per token (`hf_encoders.reconstruction_scores`, for
seq2seq checkpoints) or a masked LM's negative pseudo-log-likelihood per token
(`hf_encoders.pseudo_log_likelihood_scores`, for masked-LM checkpoints); higher means less like the training data.
Each set is shuffled (seeded) and its first `max_examples` texts with at least `min_words` words are scored.
Writes `results.json` (AUROC per out-of-domain set, mean scores), `scores.jsonl` and `score_histograms.png`.
"""

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForMaskedLM, AutoModelForSeq2SeqLM, AutoTokenizer

from ... import auroc, load_monolingual_dataset, pseudo_log_likelihood_scores, reconstruction_scores
from ...data import parse_named_source
from ...plots import plot_score_histograms
from ..harness import default_device, parse_arguments, write_results

logger = logging.getLogger("evaluate_anomaly")


@dataclass
class AnomalyArguments:
    model: str = field(
        default="", metadata={"help": "A denoising seq2seq or a masked-LM checkpoint (path or Hub id)."}
    )
    in_domain: str = field(default="imdb=../shared/data/imdb:test", metadata={"help": "name=path-or-hub-id:split"})
    out_of_domain: list[str] = field(
        default_factory=lambda: ["multi30k=../shared/data/multi30k:test", "wikitext2=../shared/data/wikitext2:test"],
        metadata={"help": "Out-of-domain sets, each name=path-or-hub-id:split."},
    )
    language: str = field(default="en", metadata={"help": "The texts' language (picks a side of parallel files)."})
    max_examples: int = 500
    min_words: int = field(default=5, metadata={"help": "Leave out texts with fewer words (headings, blank lines)."})
    max_length: int = field(default=128, metadata={"help": "Tokens scored per text; longer texts are cut."})
    batch_size: int = 32
    seed: int = 0
    output_dir: str = "runs/anomaly"


def load_texts(entry: str, args: AnomalyArguments) -> tuple[str, list[str]]:
    name, spec, split = parse_named_source(entry)
    data = load_monolingual_dataset(spec, args.language)  # the whole split (no validation carved from it)
    if split not in data:
        raise ValueError(f"{entry}: {spec!r} has no split {split!r}; it has {sorted(data)}.")
    texts = data[split].shuffle(seed=args.seed)["text"]
    kept = [text.strip() for text in texts if len(text.split()) >= args.min_words][: args.max_examples]
    if not kept:
        raise ValueError(f"{entry}: no text has {args.min_words} words or more.")
    return name, kept


def main(argv: list[str] | None = None) -> dict:
    (args,) = parse_arguments((AnomalyArguments,), argv)
    if not args.model:
        raise ValueError("Give the checkpoint to score with: --model PATH.")
    if not args.out_of_domain:
        raise ValueError("Give at least one out-of-domain set: --out_of_domain name=path:split.")
    config = AutoConfig.from_pretrained(args.model)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    device = default_device()
    if config.is_encoder_decoder:
        kind, model = "reconstruction", AutoModelForSeq2SeqLM.from_pretrained(args.model).to(device)
    else:
        kind, model = "pseudo_log_likelihood", AutoModelForMaskedLM.from_pretrained(args.model).to(device)

    def score(texts: list[str]) -> torch.Tensor:
        if kind == "reconstruction":
            return reconstruction_scores(
                model,
                tokenizer,
                texts,
                args.language,
                seed=args.seed,
                batch_size=args.batch_size,
                max_length=args.max_length,
                show_progress=True,
            )
        return pseudo_log_likelihood_scores(
            model, tokenizer, texts, batch_size=args.batch_size, max_length=args.max_length, show_progress=True
        )

    in_name, in_texts = load_texts(args.in_domain, args)
    scores = {in_name: score(in_texts)}
    results = {
        "model": args.model,
        "score": kind,
        "settings": asdict(args),
        "in_domain": {"name": in_name, "examples": len(in_texts), "mean_score": scores[in_name].mean().item()},
        "out_of_domain": {},
    }
    for entry in args.out_of_domain:
        name, texts = load_texts(entry, args)
        scores[name] = score(texts)
        results["out_of_domain"][name] = {
            "examples": len(texts),
            "mean_score": scores[name].mean().item(),
            "auroc": auroc(scores[in_name], scores[name]),
        }
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    write_results(output_dir, results)
    with (output_dir / "scores.jsonl").open("w") as handle:
        for name, values in scores.items():
            handle.writelines(
                json.dumps({"set": name, "index": i, "score": value}) + "\n" for i, value in enumerate(values.tolist())
            )
    plot_score_histograms(
        {name: values.tolist() for name, values in scores.items()},
        output_dir / "score_histograms.png",
        title=f"{kind} scores of {'/'.join(Path(args.model).parts[-2:])}",
    )
    for name, row in results["out_of_domain"].items():
        print(
            f"{in_name} vs {name:<12} AUROC {row['auroc']:.4f}   mean score {results['in_domain']['mean_score']:.3f}"
            f" vs {row['mean_score']:.3f}"
        )
    return results


if __name__ == "__main__":
    main()
