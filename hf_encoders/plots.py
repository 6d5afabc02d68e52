"""Training curves as a picture: the train loss and every validation metric of a run, from its `metrics.jsonl`."""

import json
from pathlib import Path


def plot_training_curves(metrics_file: str | Path, output: str | Path, title: str | None = None) -> Path:
    """Draw `train/loss` and each evaluation metric against the step, one panel per kind of metric (loss,
    perplexity, accuracy, ...; the evaluation sets share a panel), and save the figure as PNG."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in Path(metrics_file).read_text().splitlines() if line.strip()]
    series: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for row in rows:
        for key, value in row.items():
            if key == "step" or not isinstance(value, (int, float)) or key == "train/lr":
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
    figure.tight_layout()
    output = Path(output)
    figure.savefig(output, dpi=110)
    plt.close(figure)
    return output


__all__ = ["plot_training_curves"]
