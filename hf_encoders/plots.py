"""Pictures of runs: training curves (the train loss and every validation metric, from `metrics.jsonl`) and the
histograms of anomaly scores per data set."""

import json
from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def _save(figure, output: str | Path) -> Path:
    figure.tight_layout()
    figure.savefig(output, dpi=110)
    _pyplot().close(figure)
    return Path(output)


def plot_training_curves(metrics_file: str | Path, output: str | Path, title: str | None = None) -> Path:
    """Draw `train/loss` and each evaluation metric against the step, one panel per kind of metric (loss,
    perplexity, accuracy, ...; the evaluation sets share a panel), and save the figure as PNG."""
    plt = _pyplot()

    rows = [json.loads(line) for line in Path(metrics_file).read_text().splitlines() if line.strip()]
    series: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for row in rows:
        for key, value in row.items():
            if key in ("step", "train/lr", "train/seconds") or not isinstance(value, (int, float)):
                continue
            source, _, kind = key.rpartition("/")
            series.setdefault(kind, {}).setdefault(source or key, []).append((row["step"], value))
    if not series:
        raise ValueError(f"{metrics_file} holds no metrics to plot.")
    figure, axes = plt.subplots(1, len(series), figsize=(4.5 * len(series), 3.4), squeeze=False)
    for axis, (kind, by_source) in zip(axes[0], sorted(series.items()), strict=True):
        for source, points in sorted(by_source.items()):
            steps, values = zip(*points, strict=True)
            axis.plot(steps, values, marker="o" if len(points) < 30 else None, markersize=3, label=source)
        axis.set_title(kind)
        axis.set_xlabel("step")
        if kind == "perplexity":
            axis.set_yscale("log")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    if title:
        figure.suptitle(title)
    return _save(figure, output)


def plot_score_histograms(scores: dict[str, list[float]], output: str | Path, title: str | None = None) -> Path:
    """Overlaid histograms of per-example scores, one per data set (in-domain and out-of-domain anomaly scores)."""
    plt = _pyplot()

    if not scores:
        raise ValueError("No scores to plot.")
    low = min(min(values) for values in scores.values())
    high = max(max(values) for values in scores.values())
    figure, axis = plt.subplots(figsize=(6, 3.6))
    for name, values in scores.items():
        axis.hist(values, bins=40, range=(low, high), alpha=0.5, label=f"{name} ({len(values)})")
    axis.set_xlabel("anomaly score (higher: less like the training data)")
    axis.set_ylabel("examples")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    if title:
        axis.set_title(title)
    return _save(figure, output)


__all__ = ["plot_training_curves", "plot_score_histograms"]
