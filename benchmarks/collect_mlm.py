"""Masked-LM time to quality: held-out loss against training seconds for several architectures trained by
`pretrain_mlm.py` on the same tokenizer, data and hardware (`--architecture hf_encoder / modernbert / bert`), each at
the learning rate its own sweep chose, into one results JSON and a figure.

Each `--arch NAME=RUN,RUN,...` lists the runs of one architecture that differ in their learning rate (a sweep): the
one with the lowest `--choose-on` at its end is chosen. Its `--metric` curve is reported against the run's
wall-clock seconds (`train/seconds` in metrics.jsonl, evaluations included), with the seconds each chosen run took to
first reach each of the `--targets` (linear between evaluations; by default the loss every chosen run reached, the
highest of their final losses), and each run's time against the first architecture's.

    python benchmarks/collect_mlm.py --arch ours=runs/tq_ours_1e-3,runs/tq_ours_2e-3 \
        --arch modernbert=runs/tq_mb_1e-3,runs/tq_mb_2e-3 --arch bert=runs/tq_bert_3e-4,runs/tq_bert_1e-3 \
        --choose-on imdb/loss --metric imdb_test/loss \
        --output benchmarks/results/mlm_time_to_quality_cpu.json --plot benchmarks/results/mlm_time_to_quality_cpu.png
"""

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", action="append", required=True, help="NAME=RUN_DIR,RUN_DIR,... (one per LR)")
    parser.add_argument("--choose-on", required=True, help="the metric each sweep is chosen on, e.g. imdb/loss")
    parser.add_argument("--metric", required=True, help="the held-out loss reported against seconds")
    parser.add_argument("--targets", type=float, nargs="*", help="losses to time (default: the one all reach)")
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--plot", type=Path, help="a PNG of the chosen runs' curves against seconds")
    return parser.parse_args(argv)


def read_run(folder: Path, choose_on: str, metric: str) -> dict:
    """One finished run: its settings, its curve of `metric` against seconds, and its final `choose_on`."""
    results = json.loads((folder / "results.json").read_text())
    settings = json.loads((folder / "config.json").read_text())
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    seconds = {row["step"]: row["train/seconds"] for row in rows if "train/seconds" in row}
    missing = [row["step"] for row in rows if metric in row and row["step"] not in seconds]
    if missing or not seconds:
        raise ValueError(
            f"{folder}: no train/seconds logged at steps {missing or 'any'} where {metric} was evaluated (runs "
            "from before train/seconds was logged, or eval_every not a multiple of log_every, cannot be timed)."
        )
    for name in (choose_on, metric):
        if name not in results["metrics"]:
            raise ValueError(f"{folder} did not evaluate {name}: it has {sorted(results['metrics'])}.")
    return {
        "run": str(folder),
        "commands": settings.get("commands", [settings.get("command")]),
        "architecture": settings["model"]["architecture"],
        "learning_rate": settings["training"]["learning_rate"],
        "parameters": results["parameters"],
        "steps": results["steps"],
        "tokens_seen": results["tokens_seen"],
        "seconds": results["seconds"],
        "device": settings.get("device"),
        "final": {choose_on: results["metrics"][choose_on], metric: results["metrics"][metric]},
        "curve": [
            {"step": row["step"], "seconds": seconds[row["step"]], metric: row[metric]}
            for row in rows
            if metric in row
        ],
    }


def seconds_to_reach(curve: list[dict], metric: str, target: float) -> float | None:
    """When the curve first reaches `target` (linear between evaluations), or None if it never does."""
    previous = None
    for point in curve:
        if point[metric] <= target:
            if previous is None:
                return point["seconds"]
            fraction = (previous[metric] - target) / (previous[metric] - point[metric])
            return previous["seconds"] + fraction * (point["seconds"] - previous["seconds"])
        previous = point
    return None


def time_to_quality(chosen: dict[str, dict], metric: str, targets: list[float]) -> list[dict]:
    """For each target: the seconds each chosen run took to reach it, and each against the first architecture's."""
    first = next(iter(chosen))
    rows = []
    for target in targets:
        reached = {name: seconds_to_reach(run["curve"], metric, target) for name, run in chosen.items()}
        ratio = {
            name: reached[name] / reached[first] if reached[name] and reached[first] else None for name in reached
        }
        rows.append({"target": target, "seconds": reached, f"seconds_vs_{first}": ratio})
    return rows


def plot(chosen: dict[str, dict], metric: str, targets: list[float], output: Path) -> None:
    from hf_encoders.plots import _pyplot, _save

    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6.4, 4.2))
    for name, run in chosen.items():
        axis.plot(
            [point["seconds"] for point in run["curve"]],
            [point[metric] for point in run["curve"]],
            marker="o",
            ms=3,
            label=f"{name} (lr {run['learning_rate']:g})",
        )
    for target in targets:
        axis.axhline(target, color="grey", lw=0.8, ls="--")
    axis.set(xlabel="training seconds (wall clock, evaluations included)", ylabel=metric, title="time to quality")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    _save(figure, output)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.choose_on == args.metric:
        raise ValueError(
            f"--choose-on and --metric are both {args.metric}: the learning rates would be chosen on the figures "
            "reported. Choose on a validation set and report another held-out set (e.g. the test split)."
        )
    sys.path.insert(0, str(ROOT))
    from benchmarks.common import write_result

    sweeps, chosen = {}, {}
    for entry in args.arch:
        name, _, folders = entry.partition("=")
        runs = [read_run(Path(folder), args.choose_on, args.metric) for folder in folders.split(",")]
        sweeps[name] = [{k: run[k] for k in ("run", "learning_rate", "final")} for run in runs]
        chosen[name] = min(runs, key=lambda run: run["final"][args.choose_on])
    targets = args.targets or [max(run["final"][args.metric] for run in chosen.values())]
    figures = {
        "sweeps": sweeps,
        "chosen": chosen,
        "time_to_quality": time_to_quality(chosen, args.metric, targets),
    }
    settings = {"choose_on": args.choose_on, "metric": args.metric, "targets": targets}
    write_result(args.output, "masked-LM time to quality", settings, figures)
    if args.plot:
        plot(chosen, args.metric, targets, args.plot)
    return figures


if __name__ == "__main__":
    main()
