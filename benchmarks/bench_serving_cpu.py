"""Serving speed on the CPU, side by side in one run, with the BLEU of every row.

Translation (Multi30k test2016 sources): ours through transformers' `generate`, ours converted to CTranslate2
(`hf-encoders export --format ctranslate2`) in float32 and int8, a `MarianMTModel` of the same size through
`generate`, and that Marian converted by CTranslate2's own Marian loader, float32 and int8. Sentences/s and target
tokens/s at batch 32 (all sources) and batch 1 (the first `--batch1-sentences`), greedy and beam 4. `generate` runs
with `early_stopping=True`, the beam search CTranslate2 runs (it ends when `num_beams` hypotheses are finished), so
that float32 exports give the PyTorch model's tokens; the share of identical translations is recorded.

Encoders (`--onnx`): feature extraction on padded batches through PyTorch eager, `torch.compile` and ONNX Runtime
float32 and int8 (`benchmarks/serving_onnx.py`).

    python benchmarks/bench_serving_cpu.py --ours runs/serve_ours/best --marian runs/serve_marian/best \\
        --output benchmarks/results/serving_cpu.json
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import ctranslate2
import torch
from ctranslate2.converters import Converter
from ctranslate2.converters.transformers import BartLoader, MarianMTLoader
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import write_result  # noqa: E402
from hf_encoders.data import load_parallel_dataset  # noqa: E402
from hf_encoders.export_ctranslate2 import EXPORT_INFO, convert_to_ctranslate2, translate_ctranslate2  # noqa: E402
from hf_encoders.translation import score_translations, translate  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ours", required=True, help="a Seq2SeqForConditionalGeneration folder")
    parser.add_argument("--marian", required=True, help="a MarianMTModel folder of the same size")
    parser.add_argument("--data", default="../shared/data/multi30k")
    parser.add_argument("--src", default="en")
    parser.add_argument("--tgt", default="de")
    parser.add_argument("--split", default="test")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch1-sentences", type=int, default=200, help="sources translated one by one")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--onnx", action="store_true", help="also the ONNX encoder table")
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/serving_cpu.json"))
    return parser.parse_args()


class OurRecipeMarianLoader(MarianMTLoader):
    """CTranslate2's Marian loader for a `MarianMTModel` trained by our scripts: its decoder starts from `<s>`, a
    learned embedding, not from OPUS-MT's zero-embedded `<pad>` behind the vocabulary (which the loader drops)."""

    def get_model_spec(self, model):
        model.config.normalize_before = False
        model.config.normalize_embedding = False
        return BartLoader.get_model_spec(self, model)

    def set_config(self, config, model, tokenizer):
        super().set_config(config, model, tokenizer)
        config.decoder_start_token = tokenizer.convert_ids_to_tokens(model.config.decoder_start_token_id)

    def set_decoder(self, spec, decoder):
        BartLoader.set_decoder(self, spec, decoder)


class SpecConverter(Converter):
    def __init__(self, spec):
        self.spec = spec

    def _load(self):
        return self.spec


def convert_marian(folder: str, output: Path, quantization: str) -> Path:
    """The Marian through CTranslate2's loader, saved with its tokenizer and an export.json as ours are."""
    model, tokenizer = AutoModelForSeq2SeqLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
    SpecConverter(OurRecipeMarianLoader()(model, tokenizer)).convert(str(output), quantization=quantization)
    tokenizer.save_pretrained(output)
    info = {"format": "ctranslate2", "quantization": quantization, "converter": OurRecipeMarianLoader.__name__}
    info["max_position_embeddings"] = model.config.max_position_embeddings
    (output / EXPORT_INFO).write_text(json.dumps(info) + "\n")
    return output


def timed(run, sources: list[str], batch_size: int, beams: int) -> tuple[list[str], float]:
    run(sources[:4], batch_size, beams)  # warm-up
    started = time.perf_counter()
    hypotheses = run(sources, batch_size, beams)
    return hypotheses, time.perf_counter() - started


def translators(args: argparse.Namespace, scratch: Path) -> dict:
    """Row name -> (tokenizer, function translating a list of sources with (batch size, beams))."""
    rows = {}
    for name, folder in (("ours", args.ours), ("MarianMTModel", args.marian)):
        model = AutoModelForSeq2SeqLM.from_pretrained(folder).eval()
        tokenizer = AutoTokenizer.from_pretrained(folder)
        rows[f"{name} generate"] = (tokenizer, generate_runner(model, tokenizer, args))
        for quantization in ("float32", "int8"):
            output = scratch / f"{name}-{quantization}"
            if name == "ours":
                convert_to_ctranslate2(folder, output, quantization)
            else:
                convert_marian(folder, output, quantization)
            rows[f"{name} CTranslate2 {quantization}"] = (tokenizer, ctranslate2_runner(output, args))
    return rows


def generate_runner(model, tokenizer, args):
    def run(sources, batch_size, beams):
        return translate(
            model,
            tokenizer,
            sources,
            args.tgt,
            batch_size,
            beams,
            args.max_new_tokens,
            show_progress=False,
            early_stopping=True,
        )

    return run


def ctranslate2_runner(folder: Path, args):
    translator = ctranslate2.Translator(str(folder), device="cpu", intra_threads=args.threads)

    def run(sources, batch_size, beams):
        return translate_ctranslate2(
            folder, sources, args.tgt, batch_size, beams, args.max_new_tokens, translator=translator
        )

    return run


def measure(rows: dict, sources: list[str], references: list[str], args) -> list[dict]:
    figures, outputs = [], {}
    for batch_size, count in ((32, len(sources)), (1, args.batch1_sentences)):
        for beams in (1, 4):
            for name, (tokenizer, run) in rows.items():
                hypotheses, seconds = timed(run, sources[:count], batch_size, beams)
                outputs[name, batch_size, beams] = hypotheses
                tokens = sum(len(ids) + 1 for ids in tokenizer(hypotheses, add_special_tokens=False)["input_ids"])
                bleu = score_translations(hypotheses, references[:count])["bleu"]["score"]
                figures.append(
                    {
                        "row": name,
                        "batch_size": batch_size,
                        "num_beams": beams,
                        "sentences": count,
                        "seconds": round(seconds, 3),
                        "sentences_per_s": round(count / seconds, 2),
                        "target_tokens_per_s": round(tokens / seconds, 1),
                        "bleu": round(bleu, 2),
                    }
                )
                print(json.dumps(figures[-1]))
    return add_agreement(figures, outputs)


def add_agreement(figures: list[dict], outputs: dict) -> list[dict]:
    """Each CTranslate2 row's share of translations identical to its model's `generate`."""
    for row in figures:
        if "CTranslate2" in row["row"]:
            model = row["row"].split(" CTranslate2")[0]
            key = (row["batch_size"], row["num_beams"])
            mine, reference = outputs[row["row"], *key], outputs[f"{model} generate", *key]
            row["identical_to_generate"] = round(
                sum(a == b for a, b in zip(mine, reference, strict=True)) / len(mine), 4
            )
    return figures


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    test = load_parallel_dataset(args.data, args.src, args.tgt)[args.split]
    sources, references = list(test[args.src]), list(test[args.tgt])
    with tempfile.TemporaryDirectory() as scratch:
        figures = {"translation": measure(translators(args, Path(scratch)), sources, references, args)}
    if args.onnx:
        from benchmarks.serving_onnx import onnx_encoder_rows

        figures["onnx_encoder"] = onnx_encoder_rows(threads=args.threads)
    settings = {**vars(args), "output": str(args.output), "ctranslate2": ctranslate2.__version__}
    write_result(args.output, "serving_cpu", settings, figures)


if __name__ == "__main__":
    main()
