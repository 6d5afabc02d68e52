"""training/pretrain_mlm.py end to end on a corpus the test writes: tokenizer, packing, training, evaluation,
export, results."""

import json
import subprocess
import sys
from pathlib import Path

import torch
from transformers import AutoModelForMaskedLM, AutoTokenizer, pipeline

ROOT = Path(__file__).resolve().parents[1]


def test_pretrain_mlm_script_end_to_end(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    sentences = ["the film was a great joy to watch", "a dull and tedious movie", "the actors were wonderful",
                 "i would not watch this again", "a story about a dog and his boy", "the ending made me cry"]  # fmt: skip
    (corpus / "train.txt").write_text(
        "".join(f"{sentences[i % 6]} . {sentences[(i * 5) % 6]} .\n" for i in range(400))
    )
    output = tmp_path / "run"
    command = [
        sys.executable, str(ROOT / "training" / "pretrain_mlm.py"), "--config",
        str(ROOT / "training" / "configs" / "mlm_tiny.yaml"), "--train_data", str(corpus), "--train_split", "train",
        "--eval_data", f"corpus={corpus}:validation", "--output_dir", str(output), "--vocab_size", "200",
        "--block_size", "64", "--max_steps", "12", "--eval_every", "6", "--save_every", "6", "--num_proc", "1",
        "--best_metric", "corpus/loss",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-4000:]

    results = json.loads((output / "results.json").read_text())
    assert results["steps"] == 12 and results["stopped_by"] == "max_steps" and results["tokens_seen"] > 12 * 8
    assert {"corpus/loss", "corpus/perplexity", "corpus/accuracy"} <= set(results["metrics"])
    resolved = json.loads((output / "config.json").read_text())
    assert resolved["data"]["vocab_size"] == 200 and resolved["training"]["max_steps"] == 12
    assert resolved["device"].startswith("CPU (") and resolved["versions"]["torch"] == torch.__version__
    rows = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    assert any("corpus/loss" in row for row in rows) and any("train/loss" in row for row in rows)
    for name in ("final", "best"):
        model = AutoModelForMaskedLM.from_pretrained(output / name)
        tokenizer = AutoTokenizer.from_pretrained(output / name)
        assert model.config.vocab_size == len(tokenizer)
    fill = pipeline("fill-mask", model=str(output / "final"))
    assert len(fill(f"the film was a great {tokenizer.mask_token} to watch", top_k=2)) == 2
    with torch.no_grad():
        out = model(**tokenizer("a dull and tedious movie", return_tensors="pt"))
    assert torch.isfinite(out.logits).all()
