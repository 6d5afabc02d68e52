"""Gather finished translation runs (hf-encoders train-translation) into one results JSON and one figure: each run's
command lines, settings, validation curve (greedy BLEU at every evaluation), the averages of its last checkpoints,
the model chosen on validation, the decodings tried on validation, and the test figures of that model and decoding.
Beside the run's sacreBLEU on the detokenized references, its test hypotheses are scored as the published Multi30k
figures are (fairseq's tokenized BLEU): hypotheses and references Moses-tokenized for the target language
(sacremoses) and lowercased, then BLEU on those tokens (`bleu_tokenized_lowercased`).

    python benchmarks/collect_translation.py runs/t25_de_en runs/t25_en_de \
        --output benchmarks/results/translation_recipe_cpu.json --plot benchmarks/results/translation_recipe_cpu.png
"""

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCORES = ("bleu", "bleu_lowercased", "chrf")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="finished train-translation output folders")
    parser.add_argument("--title", default="Multi30k translation recipe: chosen on val, test2016 decoded once")
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--plot", type=Path, help="the validation curves and decoding grids as PNG")
    return parser.parse_args()


def tokenized_bleu(hypotheses: list[str], references: list[str], language: str) -> dict:
    """BLEU of Moses-tokenized, lowercased text: the package's sacreBLEU metric on the tokens (`tokenize="none"`: they
    are split already)."""
    from sacremoses import MosesTokenizer

    from hf_encoders import metrics

    tokenizer = MosesTokenizer(lang=language)
    hypotheses, references = (
        [tokenizer.tokenize(text.lower(), escape=False, return_str=True) for text in texts]
        for texts in (hypotheses, references)
    )
    score = metrics.load("sacrebleu_bleu").compute(predictions=hypotheses, references=references, tokenize="none")
    return {"score": score["score"], "signature": f"moses-{language}+lowercased|{score['signature']}"}


def test_references(record, split: str) -> list[str]:
    """The run's references of `split`, read from its data where it recorded it (the absolute path, when local)."""
    from hf_encoders import load_parallel_dataset

    data = record.data
    where = record.data_source(data["data"]).get("path", data["data"])
    return list(load_parallel_dataset(where, data["src"], data["tgt"])[split][data["tgt"]])


def read_run(folder: Path) -> dict:
    """One finished run: how it was started and resumed, what it trained, what it was chosen on, what it scored."""
    from hf_encoders.cards import read_run as read_record

    record = read_record(folder)
    settings, results = record.settings, record.results
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines() if line.strip()]
    curve = [
        {"step": row["step"], "loss": row["validation/loss"], **{k: row[f"validation/{k}"] for k in SCORES}}
        for row in rows
        if "validation/bleu" in row
    ]
    test = results["test"]
    direction, tgt = f"{settings['data']['src']}-{settings['data']['tgt']}", settings["data"]["tgt"]
    hypotheses = (folder / "best" / f"hypotheses.{test['split']}.{direction}.{tgt}").read_text().splitlines()
    references = test_references(record, test["split"])
    if len(hypotheses) != len(references) or len(hypotheses) != test["examples"]:
        raise ValueError(
            f"{folder}: {len(hypotheses)} test hypotheses, {len(references)} references in its data now, "
            f"{test['examples']} when it was tested: the data or the hypotheses file changed since."
        )
    return {
        "run": str(folder),
        "direction": direction,
        "architecture": results["architecture"],
        "commands": settings.get("commands", [settings.get("command")]),
        "parameters": results["parameters"],
        "model": settings["model"],
        "training": settings["training"],
        "device": settings.get("device"),
        "versions": settings.get("versions"),
        "train_pairs": results["train_pairs"],
        "steps": results["train"]["steps"],
        "train_minutes": results["train"]["seconds"] / 60,
        "tokens_seen": results["train"]["tokens_seen"],
        "validation_curve": curve,
        "averaged": results["train"].get("averaged", {}),
        "chosen_model": record.chosen_evaluation()[0],
        "chosen_validation": record.chosen_metrics(),
        "decoding_on_validation": test.get("decoding_on_validation", []),
        "test": {
            "split": test["split"],
            "examples": test["examples"],
            "num_beams": test["num_beams"],
            "length_penalty": test.get("length_penalty", 1.0),
            "seconds": test["seconds"],
            **{name: test[name] for name in SCORES},
            "bleu_tokenized_lowercased": tokenized_bleu(hypotheses, references, tgt),
        },
    }


def plot(runs: list[dict], output: Path) -> None:
    """Greedy validation BLEU (lowercased) per evaluation, the averages as crosses at the last step; validation
    loss per evaluation; validation BLEU (lowercased) of every beam size (one marker each) and length penalty tried.
    A run keeps its colour in every panel."""
    from hf_encoders.plots import _pyplot, _save

    plt = _pyplot()
    figure, (curves, losses, grid) = plt.subplots(1, 3, figsize=(16, 4))
    kinds = Counter((run["architecture"], run["direction"]) for run in runs)
    for run in runs:
        name = f"{run['architecture']} {run['direction']}"
        if kinds[run["architecture"], run["direction"]] > 1:  # runs of one kind told apart by their folders
            name += f" ({Path(run['run']).name})"
        style = "-" if run["architecture"] == runs[0]["architecture"] else "--"  # a baseline beside: dashed
        steps = [point["step"] for point in run["validation_curve"]]
        (line,) = curves.plot(steps, [p["bleu_lowercased"] for p in run["validation_curve"]], style, marker="o", ms=3)
        curves.plot(
            [run["steps"]] * len(run["averaged"]),
            [m["validation/bleu_lowercased"] for m in run["averaged"].values()],
            "x",
            color=line.get_color(),
            label=f"{name}: averages of the last {', '.join(n[9:] for n in run['averaged'])}",
        )
        curves.plot([], [], style, color=line.get_color(), label=f"{name}: per evaluation (greedy)")
        losses.plot(steps, [p["loss"] for p in run["validation_curve"]], style, marker="o", ms=3, label=name)
        tried = run["decoding_on_validation"]
        for beams, marker in zip(sorted({row["num_beams"] for row in tried}), "osD^v", strict=False):
            chosen = [row for row in tried if row["num_beams"] == beams]
            grid.plot(
                [row["length_penalty"] for row in chosen],
                [row["bleu_lowercased"] for row in chosen],
                style,
                marker=marker,
                color=line.get_color(),
                label=f"{name}, beam {beams}",
            )
    curves.set(title="validation BLEU (lowercased) while training", xlabel="step")
    losses.set(title="validation loss while training", xlabel="step")
    grid.set(title="validation BLEU (lowercased) of the chosen model", xlabel="length penalty")
    for axis in (curves, losses, grid):
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    _save(figure, output)


def main() -> None:
    args = parse_args()
    sys.path.insert(0, str(ROOT))
    from benchmarks.common import write_result

    runs = [read_run(folder) for folder in args.runs]
    note = (
        "bleu, bleu_lowercased, chrf: sacreBLEU on the detokenized references; bleu_tokenized_lowercased: BLEU of "
        "Moses-tokenized, lowercased hypotheses and references, as the published Multi30k figures are scored"
    )
    write_result(args.output, args.title, {"metric_note": note}, {"runs": runs})
    if args.plot:
        plot(runs, args.plot)


if __name__ == "__main__":
    main()
