"""Corpus BLEU computed by sacreBLEU, with its signature, as an `evaluate` metric that loads offline."""

import datasets
import evaluate
from sacrebleu.metrics import BLEU

_CITATION = """@inproceedings{post-2018-call,
    title = "A Call for Clarity in Reporting {BLEU} Scores",
    author = "Post, Matt",
    booktitle = "Proceedings of the Third Conference on Machine Translation: Research Papers",
    year = "2018",
    pages = "186--191",
}"""
_DESCRIPTION = "Corpus-level BLEU (Papineni et al. 2002) computed by sacreBLEU, reported with its signature."
_INPUTS = """
Args:
    predictions: list of hypothesis strings (detokenized).
    references: list of reference strings, or of lists of references (the same number for every prediction).
    lowercase: compare lowercased text (the "lowercased BLEU" of many papers).
    tokenize: sacreBLEU tokenizer, "13a" (default, WMT's), "intl", "char", "none", ...
Returns:
    score (0-100), signature, precisions, bp, sys_len, ref_len, counts, totals.
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _INPUTS)
class SacrebleuBleu(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_INPUTS,
            features=[
                datasets.Features(
                    {
                        "predictions": datasets.Value("string"),
                        "references": datasets.Sequence(datasets.Value("string")),
                    }
                ),
                datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")}),
            ],
            reference_urls=["https://github.com/mjpost/sacrebleu"],
        )

    def _compute(self, predictions, references, lowercase: bool = False, tokenize: str = "13a") -> dict:
        references = [[reference] if isinstance(reference, str) else list(reference) for reference in references]
        if len({len(refs) for refs in references}) > 1:
            raise ValueError("sacreBLEU needs the same number of references for every prediction.")
        bleu = BLEU(lowercase=lowercase, tokenize=tokenize)
        result = bleu.corpus_score(predictions, [list(refs) for refs in zip(*references, strict=True)])
        return {
            "score": result.score,
            "signature": str(bleu.get_signature()),
            "precisions": result.precisions,
            "bp": result.bp,
            "sys_len": result.sys_len,
            "ref_len": result.ref_len,
            "counts": result.counts,
            "totals": result.totals,
        }
