"""Classification and regression scores as an `evaluate` metric that loads offline: accuracy, F1 and Matthews
correlation for single-label (and token) classification, exact match and F1 for multi-label, Pearson and Spearman
correlation for regression. Choose with the config name: single_label (default), multi_label, regression."""

import datasets
import evaluate
import numpy as np

_CITATION = """@article{matthews-1975,
    title = "Comparison of the predicted and observed secondary structure of T4 phage lysozyme",
    author = "Matthews, Brian W.",
    journal = "Biochimica et Biophysica Acta (BBA) - Protein Structure",
    volume = "405", number = "2", pages = "442--451", year = "1975",
}"""
_DESCRIPTION = (
    "Accuracy, F1 (binary or macro), Matthews correlation; multi-label exact match and F1; Pearson/Spearman."
)
_INPUTS = """
Args:
    predictions: predicted class ids (single_label), multi-hot 0/1 lists (multi_label) or numbers (regression).
    references: the gold values, in the same form.
Returns:
    single_label: accuracy, f1 (of class 1 with two classes, else macro), f1_macro, matthews_correlation.
    multi_label: exact_match, f1_micro, f1_macro.
    regression: pearson, spearman, mse.
"""
TASKS = ("single_label", "multi_label", "regression")


def f1_scores(gold: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """Per-class F1 for 0/1 indicator columns (n_examples, n_classes); 0 where a class is never gold nor predicted."""
    true_positives = (gold & predicted).sum(0)
    denominator = gold.sum(0) + predicted.sum(0)
    return np.divide(2 * true_positives, denominator, out=np.zeros(gold.shape[1]), where=denominator > 0)


def matthews_correlation(gold: np.ndarray, predicted: np.ndarray) -> float:
    """Matthews correlation for any number of classes (Gorodkin's R_K); 0 when undefined."""
    classes = np.union1d(gold, predicted)
    confusion = np.zeros((len(classes), len(classes)))
    np.add.at(confusion, (np.searchsorted(classes, gold), np.searchsorted(classes, predicted)), 1)
    total, correct = confusion.sum(), np.trace(confusion)
    true_counts, predicted_counts = confusion.sum(1), confusion.sum(0)
    denominator = np.sqrt((total**2 - predicted_counts @ predicted_counts) * (total**2 - true_counts @ true_counts))
    return float((correct * total - true_counts @ predicted_counts) / denominator) if denominator > 0 else 0.0


def ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing their mean rank."""
    order = np.argsort(values, kind="stable")
    ranked = np.empty(len(values))
    ranked[order] = np.arange(1, len(values) + 1)
    _, groups = np.unique(values, return_inverse=True)
    return (np.bincount(groups, ranked) / np.bincount(groups))[groups]


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    x, y = x - x.mean(), y - y.mean()
    denominator = np.sqrt((x @ x) * (y @ y))
    return float(x @ y / denominator) if denominator > 0 else 0.0


class Classification(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        if self.config_name not in (*TASKS, "default"):
            raise ValueError(f"Unknown task {self.config_name!r}; choose one of {', '.join(TASKS)}.")
        value = {
            "single_label": datasets.Value("int64"),
            "regression": datasets.Value("float64"),
            "multi_label": datasets.Sequence(datasets.Value("int64")),
        }.get(self.config_name, datasets.Value("int64"))
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_INPUTS,
            features=datasets.Features({"predictions": value, "references": value}),
        )

    def _compute(self, predictions, references) -> dict:
        predicted, gold = np.asarray(predictions), np.asarray(references)
        if len(gold) == 0:
            raise ValueError("No examples to score.")
        if self.config_name == "regression":
            predicted, gold = predicted.astype(float), gold.astype(float)
            return {
                "pearson": pearson(predicted, gold),
                "spearman": pearson(ranks(predicted), ranks(gold)),
                "mse": float(((predicted - gold) ** 2).mean()),
            }
        if self.config_name == "multi_label":
            predicted, gold = predicted.astype(bool), gold.astype(bool)
            micro_denominator = gold.sum() + predicted.sum()
            return {
                "exact_match": float((predicted == gold).all(1).mean()),
                "f1_micro": float(2 * (gold & predicted).sum() / micro_denominator) if micro_denominator else 0.0,
                "f1_macro": float(f1_scores(gold, predicted).mean()),
            }
        classes = np.union1d(gold, predicted)
        indicators = lambda values: values[:, None] == classes[None, :]  # noqa: E731
        per_class = f1_scores(indicators(gold), indicators(predicted))
        binary = len(classes) <= 2 and set(classes.tolist()) <= {0, 1}
        return {
            "accuracy": float((predicted == gold).mean()),
            "f1": float(per_class[classes.tolist().index(1)]) if binary and 1 in classes else float(per_class.mean()),
            "f1_macro": float(per_class.mean()),
            "matthews_correlation": matthews_correlation(gold, predicted),
        }
