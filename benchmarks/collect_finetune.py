"""Gather finished fine-tuning runs (hf-encoders finetune) into one results JSON: each run's command, settings,
trainable parameters, training time, the validation curve it was chosen on and its reported figures, and per method
(runs that differ only in their seed) the mean and spread over seeds; with the pretraining run's commands, tokens and
held-out curve, and a figure of the curves.

    python benchmarks/collect_finetune.py --method full=runs/sst2_full_s0,runs/sst2_full_s1,runs/sst2_full_s2 \
        --method lora=runs/sst2_lora_s0,runs/sst2_lora_s1,runs/sst2_lora_s2 \
        --pretraining runs/mlm_small --output benchmarks/results/lora_sst2_cpu.json --plot lora_sst2_cpu.png
"""

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REPORTED = ("accuracy", "f1", "matthews_correlation")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", action="append", required=True, help="NAME=RUN_DIR,RUN_DIR,... (one per seed)")
    parser.add_argument("--pretraining", type=Path, help="the pretraining run's folder (its tokens are stated)")
    parser.add_argument("--title", default="Fine-tuning runs over seeds, chosen on validation, scored once on test")
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--plot", type=Path, help="a PNG of the pretraining's and every run's validation curve")
    return parser.parse_args()


def read_run(folder: Path) -> dict:
    """One finished run: what it ran with, what it trained, what it was chosen on, what it scored."""
    results = json.loads((folder / "results.json").read_text())
    settings = json.loads((folder / "config.json").read_text())
    best_metric = settings["training"]["best_metric"]
    curve = [
        {"step": row["step"], best_metric: row[best_metric]}
        for row in map(json.loads, (folder / "metrics.jsonl").read_text().splitlines())
        if best_metric in row
    ]
    return {
        "run": str(folder),
        "command": settings.get("command"),
        "seed": settings["training"]["seed"],
        "lora": settings.get("lora"),
        "training": settings["training"],
        "parameters": results["parameters"],
        "trainable_parameters": results.get("trainable_parameters"),
        "chosen_on": results.get("validation_split"),
        "steps": results["train"]["steps"],
        "train_seconds": results["train"]["seconds"],
        "validation_curve": curve,
        "chosen": (max if settings["training"]["greater_is_better"] else min)(curve, key=lambda row: row[best_metric]),
        "reported": results["test"],
    }


def read_pretraining(folder: Path) -> dict:
    """What the fine-tuned encoder was pretrained with: its run's commands (one per segment), steps, tokens, time
    and held-out curve."""
    results = json.loads((folder / "results.json").read_text())
    settings = json.loads((folder / "config.json").read_text())
    rows = map(json.loads, (folder / "metrics.jsonl").read_text().splitlines())
    return {
        "run": str(folder),
        "commands": settings.get("commands", [settings.get("command")]),
        "data": settings["data"]["train_data"] + ":" + settings["data"]["train_split"],
        "parameters": results["parameters"],
        "steps": results["steps"],
        "tokens_seen": results["tokens_seen"],
        "train_seconds": results["seconds"],
        "stopped_by": results["stopped_by"],
        "final_metrics": results["metrics"],
        "validation_curve": [row for row in rows if results["metrics"].keys() & row.keys()],
    }


def summary(runs: list[dict]) -> dict:
    """Mean and standard deviation over seeds of the reported figures, and what the method trains."""
    figures = {}
    for name in REPORTED:
        values = [run["reported"][name] for run in runs]
        figures[name] = {
            "mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "values": values,
        }
    chosen = [next(value for key, value in run["chosen"].items() if key != "step") for run in runs]
    return {
        "seeds": [run["seed"] for run in runs],
        "chosen_on": runs[0]["chosen_on"],
        "mean_chosen_validation": statistics.fmean(chosen),
        "reported_split": runs[0]["reported"]["split"],
        "trainable_parameters": runs[0]["trainable_parameters"],
        "parameters": runs[0]["parameters"],
        "mean_train_seconds": statistics.fmean(run["train_seconds"] for run in runs),
        **figures,
    }


def plot(methods: dict, pretraining: dict | None, output: Path) -> None:
    """The pretraining's held-out loss per evaluation (when given), then per method each seed's validation curve
    with the chosen evaluation circled."""
    from hf_encoders.plots import _pyplot, _save

    plt = _pyplot()
    panels = [pretraining] * bool(pretraining) + list(methods)
    figure, axes = plt.subplots(1, len(panels), figsize=(4.8 * len(panels), 3.6), squeeze=False)
    axes = list(axes[0])
    if pretraining:
        axis = axes.pop(0)
        for name in (key for key in pretraining["final_metrics"] if key.endswith("/loss")):
            points = [(row["step"], row[name]) for row in pretraining["validation_curve"] if name in row]
            axis.plot(*zip(*points, strict=True), marker="o", ms=3, label=name)
        axis.set(
            title=f"pretraining: held-out MLM loss ({pretraining['tokens_seen'] / 1e6:.1f}M tokens)", xlabel="step"
        )
    for axis, (name, method) in zip(axes, methods.items(), strict=True):
        for run in method["runs"]:
            metric = next(key for key in run["chosen"] if key != "step")
            (line,) = axis.plot(
                [row["step"] for row in run["validation_curve"]],
                [row[metric] for row in run["validation_curve"]],
                marker="o",
                ms=3,
                label=f"seed {run['seed']}",
            )
            axis.plot(run["chosen"]["step"], run["chosen"][metric], "o", ms=9, mfc="none", color=line.get_color())
        summary = method["summary"]
        axis.set(
            title=f"{name}: {metric} on {summary['chosen_on']}\n{summary['reported_split']} accuracy "
            f"{100 * summary['accuracy']['mean']:.1f} ± {100 * summary['accuracy']['std']:.1f}",
            xlabel="step",
        )
    for axis in figure.axes:
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    _save(figure, output)


def main() -> None:
    args = parse_args()
    sys.path.insert(0, str(ROOT))
    from benchmarks.common import write_result

    methods = {}
    for entry in args.method:
        name, _, folders = entry.partition("=")
        runs = [read_run(Path(folder)) for folder in folders.split(",")]
        methods[name] = {"summary": summary(runs), "runs": runs}
    settings = {"pretraining": read_pretraining(args.pretraining) if args.pretraining else None}
    write_result(args.output, args.title, settings, {"methods": methods})
    if args.plot:
        plot(methods, settings["pretraining"], args.plot)


if __name__ == "__main__":
    main()
