"""Score an embedding model as its users run it, through `SentenceTransformer(folder)`: ours, or any other (such as
all-MiniLM-L6-v2), with the same protocol.

    hf-encoders evaluate-embeddings --model runs/embeddings_multi30k/best --pairs ../shared/data/multi30k \
        --anchor en --positive de --split test
    hf-encoders evaluate-embeddings --model MODEL --probe_data ../shared/data/sst2 --probe_split validation

- Retrieval (`--pairs`): each anchor retrieves its own positive among all the split's positives by cosine
  similarity, and each positive its anchor: recall@1 and MRR@10 per direction, and their means.
- Linear probe (`--probe_data`), MTEB's classification protocol: a logistic regression (scikit-learn, at most 100
  iterations) on frozen embeddings of the training split, scored on `--probe_split` (accuracy, macro F1). As MTEB,
  `--probe_experiments` runs of `--samples_per_label` training examples per label, drawn with the run's seed, and
  their mean and standard deviation; and once on the whole training split.
"""

import json
import logging
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ... import load_parallel_dataset, load_text_dataset
from ..harness import first_n, parse_arguments, write_results
from .contrastive import retrieval_scores

logger = logging.getLogger("evaluate_embeddings")


@dataclass
class EvaluationArguments:
    model: str = field(default="", metadata={"help": "A folder or Hub id that SentenceTransformer(...) loads."})
    trust_remote_code: bool = False
    pairs: str | None = field(default=None, metadata={"help": "Sentence pairs for retrieval (aligned files, ...)."})
    anchor: str = "en"
    positive: str = "de"
    split: str = "test"
    probe_data: str | None = field(default=None, metadata={"help": "Labelled texts for the linear probe."})
    text_column: str = "sentence"
    label_column: str = "label"
    probe_train_split: str = "train"
    probe_split: str = "validation"
    probe_experiments: int = field(default=10, metadata={"help": "MTEB's repeated small-sample probes."})
    samples_per_label: int = field(default=8, metadata={"help": "Training examples per label in each of them."})
    max_probe_train_examples: int = field(default=0, metadata={"help": "Only the first N training texts (0: all)."})
    batch_size: int = 128
    seed: int = 42
    output_dir: str | None = field(default=None, metadata={"help": "Write results.json here."})


def sentence_transformer(model_path: str | Path, trust_remote_code: bool = False):
    """The sentence-transformers model in `model_path` (ours load through the Auto classes hf_encoders registers)."""
    from sentence_transformers import SentenceTransformer

    import hf_encoders  # noqa: F401

    return SentenceTransformer(str(model_path), trust_remote_code=trust_remote_code)


def encode(model, texts: list[str], batch_size: int) -> torch.Tensor:
    """Unit-length embeddings of `texts` by the sentence-transformers `model`."""
    return model.encode(list(texts), batch_size=batch_size, convert_to_tensor=True, normalize_embeddings=True).cpu()


def both_ways(anchors: torch.Tensor, positives: torch.Tensor, names: tuple[str, str], prefix: str) -> dict:
    """Retrieval scores from anchors to positives and back (`{prefix}/{a}-{b}/recall@1`, ...), and their means
    (`{prefix}/recall@1`, `{prefix}/mrr@10`)."""
    a, b = names
    directions = {f"{a}-{b}": (anchors, positives), f"{b}-{a}": (positives, anchors)}
    metrics = {}
    for direction, (queries, documents) in directions.items():
        metrics |= {
            f"{prefix}/{direction}/{key}": value for key, value in retrieval_scores(queries, documents).items()
        }
    for key in ("recall@1", "mrr@10"):
        metrics[f"{prefix}/{key}"] = statistics.mean(
            metrics[f"{prefix}/{direction}/{key}"] for direction in directions
        )
    return metrics


def retrieval(
    model_path,
    anchors: list[str],
    positives: list[str],
    names: tuple[str, str],
    prefix: str,
    batch_size: int = 128,
    trust_remote_code: bool = False,
) -> dict[str, float]:
    """`both_ways` on the embeddings of the model in `model_path`, as sentence-transformers computes them."""
    model = sentence_transformer(model_path, trust_remote_code)
    return both_ways(encode(model, anchors, batch_size), encode(model, positives, batch_size), names, prefix)


def linear_probe(
    train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray], args: EvaluationArguments
) -> dict:
    """Logistic regressions on embeddings: MTEB's `probe_experiments` of `samples_per_label` examples per label, and
    one on the whole training split."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score

    def fit_and_score(x: np.ndarray, y: np.ndarray) -> dict[str, float]:
        classifier = LogisticRegression(max_iter=100, random_state=args.seed).fit(x, y)
        predicted = classifier.predict(test[0])
        return {"accuracy": accuracy_score(test[1], predicted), "f1": f1_score(test[1], predicted, average="macro")}

    generator = np.random.default_rng(args.seed)
    runs = []
    for _ in range(args.probe_experiments):
        order = generator.permutation(len(train[1]))
        chosen = np.concatenate(
            [order[train[1][order] == label][: args.samples_per_label] for label in np.unique(train[1])]
        )
        runs.append(fit_and_score(train[0][chosen], train[1][chosen]))
    sampled = {
        f"{key}_{statistic}": function([run[key] for run in runs])
        for key in ("accuracy", "f1")
        for statistic, function in (("mean", statistics.mean), ("std", statistics.pstdev))
    }
    return {
        "sampled": {**sampled, "experiments": len(runs), "samples_per_label": args.samples_per_label},
        "full": {**fit_and_score(*train), "train_examples": len(train[1])},
    }


def probe(args: EvaluationArguments) -> dict:
    data = load_text_dataset(args.probe_data, text_column=args.text_column)
    train = first_n(data[args.probe_train_split], args.max_probe_train_examples or None)
    test = data[args.probe_split]

    model = sentence_transformer(args.model, args.trust_remote_code)

    def embedded(split) -> tuple[np.ndarray, np.ndarray]:
        return encode(model, split[args.text_column], args.batch_size).numpy(), np.asarray(split[args.label_column])

    figures = linear_probe(embedded(train), embedded(test), args)
    return {"data": args.probe_data, "train_split": args.probe_train_split, "split": args.probe_split, **figures}


def main(argv: list[str] | None = None) -> dict:
    (args,) = parse_arguments((EvaluationArguments,), argv)
    if not args.model or not (args.pairs or args.probe_data):
        raise ValueError("Give --model, and --pairs (retrieval) and/or --probe_data (linear probe).")
    results = {"model": args.model, "settings": asdict(args)}
    if args.pairs:
        pairs = load_parallel_dataset(args.pairs, args.anchor, args.positive)[args.split]
        names, texts = (args.anchor, args.positive), (pairs[args.anchor], pairs[args.positive])
        options = dict(batch_size=args.batch_size, trust_remote_code=args.trust_remote_code)
        results["retrieval"] = retrieval(args.model, *texts, names, args.split, **options)
        results["retrieval_pairs"] = len(pairs)
    if args.probe_data:
        results["probe"] = probe(args)
    logger.info("%s", json.dumps({key: results[key] for key in ("retrieval", "probe") if key in results}))
    if args.output_dir:
        Path(args.output_dir).mkdir(parents=True, exist_ok=True)
        write_results(args.output_dir, results)
    return results


if __name__ == "__main__":
    main()
