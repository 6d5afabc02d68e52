"""The offline `evaluate` metric modules agree with sacreBLEU called directly."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import hf_encoders.metrics

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"

SCRIPT = textwrap.dedent(
    """
    import gzip, json, sys
    import evaluate, sacrebleu
    from hf_encoders import metrics

    references = [line.strip() for line in gzip.open(sys.argv[1], "rt")][:200]
    # hypotheses: the references with every third sentence cut short and some words swapped
    hypotheses = [r if i % 3 else " ".join(r.split()[:-2]) for i, r in enumerate(references)]
    hypotheses = [h.replace(" a ", " the ") if i % 5 == 0 else h for i, h in enumerate(hypotheses)]
    bleu = evaluate.load(metrics.path("sacrebleu_bleu"))
    chrf = evaluate.load(metrics.path("sacrebleu_chrf"))
    out = {
        "bleu": bleu.compute(predictions=hypotheses, references=references),
        "bleu_lc": bleu.compute(predictions=hypotheses, references=[[r.lower()] for r in references], lowercase=True),
        "chrf": chrf.compute(predictions=hypotheses, references=references),
        "chrfpp": chrf.compute(predictions=hypotheses, references=references, word_order=2),
        "direct_bleu": sacrebleu.corpus_bleu(hypotheses, [references]).score,
        "direct_bleu_lc": sacrebleu.corpus_bleu(hypotheses, [[r.lower() for r in references]], lowercase=True).score,
        "direct_chrf": sacrebleu.corpus_chrf(hypotheses, [references]).score,
        "direct_chrfpp": sacrebleu.corpus_chrf(hypotheses, [references], word_order=2).score,
        "perfect": bleu.compute(predictions=references[:20], references=references[:20])["score"],
    }
    try:
        bleu.compute(predictions=["a", "b"], references=[["a"], ["b", "c"]])
    except ValueError as error:
        out["uneven"] = str(error)
    print(json.dumps(out))
    """
)


def test_metric_modules_load_offline_and_agree_with_sacrebleu():
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(SHARED / "multi30k" / "test_2016_flickr.de.gz")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["bleu"]["score"] == pytest.approx(out["direct_bleu"]) and 20 < out["bleu"]["score"] < 100
    assert out["bleu_lc"]["score"] == pytest.approx(out["direct_bleu_lc"])
    assert out["chrf"]["score"] == pytest.approx(out["direct_chrf"])
    assert out["chrfpp"]["score"] == pytest.approx(out["direct_chrfpp"])
    assert out["bleu"]["signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:")
    assert "case:lc" in out["bleu_lc"]["signature"] and "nw:2" in out["chrfpp"]["signature"]
    assert out["perfect"] == pytest.approx(100.0)
    assert "same number of references" in out["uneven"]


def test_unknown_metric_names_are_refused():
    with pytest.raises(ValueError, match="Unknown metric 'bleu'; hf_encoders ships sacrebleu_bleu, sacrebleu_chrf"):
        hf_encoders.metrics.path("bleu")
