"""training/pretrain_mlm.py end to end on a corpus the test writes: tokenizer, packing, training, evaluation,
export, results."""

import json

import torch
from transformers import AutoModelForMaskedLM, AutoTokenizer, pipeline


def test_pretrain_mlm_script_end_to_end(mlm_run):
    output = mlm_run
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
