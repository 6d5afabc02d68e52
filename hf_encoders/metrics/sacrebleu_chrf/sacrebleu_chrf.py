"""chrF / chrF++ computed by sacreBLEU, with its signature, as an `evaluate` metric that loads offline."""

import datasets
import evaluate
from sacrebleu.metrics import CHRF

_CITATION = """@inproceedings{popovic-2015-chrf,
    title = "chr{F}: character n-gram {F}-score for automatic {MT} evaluation",
    author = "Popovi{\\'c}, Maja",
    booktitle = "Proceedings of the Tenth Workshop on Statistical Machine Translation",
    year = "2015",
    pages = "392--395",
}"""
_DESCRIPTION = "Corpus-level chrF (character n-gram F-score; chrF++ with word_order=2) computed by sacreBLEU."
_INPUTS = """
Args:
    predictions: list of hypothesis strings.
    references: list of reference strings, or of lists of references (the same number for every prediction).
    word_order: 0 for chrF, 2 for chrF++.
    lowercase: compare lowercased text.
Returns:
    score (0-100), signature.
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _INPUTS)
class SacrebleuChrf(evaluate.Metric):
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

    def _compute(self, predictions, references, word_order: int = 0, lowercase: bool = False) -> dict:
        references = [[reference] if isinstance(reference, str) else list(reference) for reference in references]
        if len({len(refs) for refs in references}) > 1:
            raise ValueError("sacreBLEU needs the same number of references for every prediction.")
        chrf = CHRF(word_order=word_order, lowercase=lowercase)
        result = chrf.corpus_score(predictions, [list(refs) for refs in zip(*references, strict=True)])
        return {"score": result.score, "signature": str(chrf.get_signature())}
