"""Serving speed on the CPU: every engine in a process of its own, several rounds, medians with their spread.

Translation (Multi30k test2016 sources): ours through transformers' `generate` (`hf_encoders.translate`), ours
exported to CTranslate2 (`hf-encoders export --format ctranslate2`) in int8 and float32 and served as `hf-encoders
translate` serves it (`hf_encoders.export_ctranslate2.CTranslate2Model`), a `MarianMTModel` of the same size through
`generate`, and that Marian converted by CTranslate2's own Marian loader, int8 and float32. Batch 32 translates all
sources in batches of 32; batch 1 translates the first `--batch1-sentences` one request at a time (tokenize, translate,
decode), as a server answering one sentence per call does. Greedy and beam 4; `generate` runs with
`early_stopping=True`, the beam search CTranslate2 runs, so that float32 exports give the PyTorch model's tokens.

Each (engine, round) is a fresh Python process that loads one engine, warms it up on every setting and times every
setting once: PyTorch and CTranslate2 never share a process (each brings its own OpenMP runtime), and the engines take
turns round by round, so machine noise falls on all alike. Threads are pinned and stated: `OMP_NUM_THREADS` and
`MKL_NUM_THREADS` in the child's environment, the process's CPU affinity, `torch.set_num_threads(--threads)`, and
CTranslate2 served as the library serves it (`--threads` translations at once, one thread each: `inter_threads`
`--threads`, `intra_threads` 1). Each timing records how many CPUs other processes kept busy meanwhile (from
/proc/stat): on a shared machine that is the noise it bore. `--lock FILE` holds an exclusive `flock` on FILE round by
round (a shared machine's other heavy jobs wait; between rounds they may run; do not also wrap the command in `flock`
on the same file, which would deadlock). The JSON has every round's seconds, the median and the min/max of
sentences/s, the CPU's `lscpu` model name, and CTranslate2's own report of its kernels.

`--ct2-variants` adds the batch-1 study: ours in CTranslate2 int8 with CTranslate2's default threading (one
translation on every thread), on one thread, through the per-call path (`translate_ctranslate2` per request, which
loads the tokenizer each time), with Intel MKL's kernels (`CT2_USE_MKL=1`), two requests at once; and both models'
`generate` on one thread. `--onnx` adds the encoder table (`benchmarks/serving_onnx.py`), runtimes likewise one
process each.

    python benchmarks/bench_serving_cpu.py --ours runs/serve_ours/best --marian runs/serve_marian/best \\
        --rounds 3 --ct2-variants --onnx --lock /tmp/heavy.lock --output benchmarks/results/serving_cpu.json
"""

import argparse
import contextlib
import fcntl
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

Runner = Callable[[list[str], int, int], list[str]]  # (sources, batch size, beams) -> translations
SETTINGS = ((32, 1), (32, 4), (1, 1), (1, 4))  # (batch size, beams)
WARMUP_SENTENCES = 8


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ours", required=True, help="a Seq2SeqForConditionalGeneration folder")
    parser.add_argument("--marian", required=True, help="a MarianMTModel folder of the same size")
    parser.add_argument("--data", default="../shared/data/multi30k")
    parser.add_argument("--src", default="en")
    parser.add_argument("--tgt", default="de")
    parser.add_argument("--split", default="test")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3, help="processes per engine, taking turns")
    parser.add_argument("--batch32-sentences", type=int, default=None, help="default: the whole split")
    parser.add_argument("--batch1-sentences", type=int, default=200, help="sources translated one by one")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--ct2-variants", action="store_true", help="also the batch-1 study of CTranslate2")
    parser.add_argument("--onnx", action="store_true", help="also the ONNX encoder table")
    parser.add_argument("--lock", type=Path, help="hold an exclusive flock on this file round by round")
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/serving_cpu.json"))
    return parser.parse_args()


# ---------------------------------------------------------------------------------------------------------------
# the child: one engine, every setting, one timing each


def pin_threads(threads: int) -> list[int]:
    """Bind this process to the first `threads` CPUs it may use; return the CPUs it runs on."""
    allowed = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, allowed[:threads])
    return sorted(os.sched_getaffinity(0))


def generate_runner(folder: str, spec: dict) -> Runner:
    import torch
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from hf_encoders.translation import translate

    torch.set_num_threads(spec["threads"])
    model = AutoModelForSeq2SeqLM.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)

    def run(sources: list[str], batch_size: int, beams: int) -> list[str]:
        return translate(
            model,
            tokenizer,
            sources,
            spec["tgt"],
            batch_size,
            beams,
            spec["max_new_tokens"],
            show_progress=False,
            early_stopping=True,
        )

    return run


def ctranslate2_runner(folder: str, spec: dict) -> Runner:
    """The library's serving path, loaded once; `per_call_load` is the path before it (`translate_ctranslate2`
    reading the export's tokenizer and export.json on every call)."""
    from hf_encoders.export_ctranslate2 import CTranslate2Model, translate_ctranslate2

    options = {"threads": spec["threads"], **spec.get("ctranslate2", {})}
    served = CTranslate2Model(folder, **options)
    if spec.get("per_call_load"):
        translator = served.translator
        return lambda sources, batch_size, beams: translate_ctranslate2(
            folder, sources, spec["tgt"], batch_size, beams, spec["max_new_tokens"], translator=translator
        )
    return lambda sources, batch_size, beams: served.translate(
        sources, spec["tgt"], batch_size, beams, spec["max_new_tokens"]
    )


def busy_cpu_seconds() -> float:
    """CPU seconds all processes have spent busy since boot (/proc/stat's first line: all but idle and iowait)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def timed(run: Runner, sources: list[str], batch_size: int, beams: int, concurrent: int) -> dict:
    """One timing, with the CPUs that other processes kept busy meanwhile (their mean count: the noise it bore)."""
    busy, own, start = busy_cpu_seconds(), time.process_time(), time.perf_counter()
    hypotheses = serve(run, sources, batch_size, beams, concurrent)
    seconds = time.perf_counter() - start
    others = (busy_cpu_seconds() - busy) - (time.process_time() - own)
    return {"seconds": seconds, "other_processes_cpus": max(others, 0.0) / seconds, "hypotheses": hypotheses}


def serve(run: Runner, sources: list[str], batch_size: int, beams: int, concurrent: int = 1) -> list[str]:
    """Batch 1 is one call per sentence (a server's requests, `concurrent` of them at a time); larger batches are
    one call for all sources."""
    if batch_size > 1:
        return run(sources, batch_size, beams)
    if concurrent > 1:
        with ThreadPoolExecutor(concurrent) as pool:
            return list(pool.map(lambda source: run([source], 1, beams)[0], sources))
    return [run([source], 1, beams)[0] for source in sources]


def run_worker(spec_file: Path) -> None:
    spec = json.loads(spec_file.read_text())
    cpus = pin_threads(spec["threads"])
    started = time.perf_counter()
    make = generate_runner if spec["engine"] == "generate" else ctranslate2_runner
    run = make(spec["folder"], spec)
    load_s = time.perf_counter() - started
    sources = json.loads(Path(spec["sources"]).read_text())
    timings, concurrent = [], spec.get("concurrent", 1)
    for batch_size, beams, count in spec["settings"]:
        serve(run, sources[:WARMUP_SENTENCES], batch_size, beams, concurrent)
        timing = timed(run, sources[:count], batch_size, beams, concurrent)
        timings.append({"batch_size": batch_size, "num_beams": beams, **timing})
    result = {"cpus": cpus, "load_s": load_s, "timings": timings}
    Path(spec["result"]).write_text(json.dumps(result))


# ---------------------------------------------------------------------------------------------------------------
# the parent: exports, processes, figures


@contextlib.contextmanager
def held(lock: Path | None) -> Iterator[None]:
    if lock is None:
        yield
        return
    with open(lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def child_environment(threads: int, extra: dict[str, str]) -> dict[str, str]:
    threads_env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "CT2_VERBOSE": "1"}
    return {**os.environ, **threads_env, **extra}


def run_process(spec: dict, scratch: Path) -> tuple[dict, list[str]]:
    """Run one engine's child process; its result and CTranslate2's report of its kernels."""
    spec_file = scratch / f"spec-{spec['name'].replace(' ', '_')}.json"
    spec["result"] = str(spec_file.with_suffix(".result.json"))
    spec_file.write_text(json.dumps(spec))
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", str(spec_file)]
    env = child_environment(spec["threads"], spec.get("env", {}))
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{spec['name']} failed:\n{done.stderr[-4000:]}")
    report = [line.split("[info]", 1)[1].strip() for line in done.stderr.splitlines() if "[ctranslate2]" in line]
    return json.loads(Path(spec["result"]).read_text()), [line for line in report if not line.startswith("Loaded")]


def lscpu_model_name() -> str:
    try:
        lines = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (no lscpu)"
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("Model name")), "unknown")


def export_engines(args: argparse.Namespace, scratch: Path) -> list[dict]:
    """The engines of the main table: name, model, engine and folder (exports written to `scratch`)."""
    from hf_encoders.export_ctranslate2 import convert_to_ctranslate2

    engines = []
    for model, folder in (("ours", args.ours), ("MarianMTModel", args.marian)):
        engines.append({"name": f"{model} generate", "model": model, "engine": "generate", "folder": folder})
        for quantization in ("int8", "float32"):
            output = scratch / f"{model}-{quantization}"
            convert = convert_to_ctranslate2 if model == "ours" else convert_marian
            convert(folder, output, quantization)
            name = f"{model} CTranslate2 {quantization}"
            engines.append({"name": name, "model": model, "engine": "ctranslate2", "folder": str(output)})
    return engines


def convert_marian(folder: str, output: Path, quantization: str) -> Path:
    """The Marian through CTranslate2's own Marian loader, adapted to a `MarianMTModel` trained by our scripts (its
    decoder starts from `<s>`, a learned embedding, not from OPUS-MT's zero-embedded `<pad>` behind the vocabulary,
    which the loader drops); saved with its tokenizer and an export.json as ours are. (CTranslate2 is imported here,
    not at the top: a PyTorch child must not load its OpenMP runtime.)"""
    from ctranslate2.converters import Converter
    from ctranslate2.converters.transformers import BartLoader, MarianMTLoader
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from hf_encoders.export_ctranslate2 import EXPORT_INFO

    class OurRecipeMarianLoader(MarianMTLoader):
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

    model, tokenizer = AutoModelForSeq2SeqLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
    SpecConverter(OurRecipeMarianLoader()(model, tokenizer)).convert(str(output), quantization=quantization)
    tokenizer.save_pretrained(output)
    info = {"format": "ctranslate2", "quantization": quantization, "converter": OurRecipeMarianLoader.__name__}
    info["max_position_embeddings"] = model.config.max_position_embeddings
    (output / EXPORT_INFO).write_text(json.dumps(info) + "\n")
    return output


def variant_engines(scratch: Path, args: argparse.Namespace) -> list[dict]:
    """Batch-1 variants: ours in CTranslate2 int8 served other ways (CTranslate2's default threading, one thread,
    the per-call load, Intel MKL, two requests at once) and both models' `generate` on one thread."""
    base = {"model": "ours", "engine": "ctranslate2", "folder": str(scratch / "ours-int8")}
    variants = {
        f"intra_threads={args.threads} inter_threads=1": {"ctranslate2": {"intra_threads": args.threads}},
        "intra_threads=1 inter_threads=1": {"ctranslate2": {"threads": 1}},
        "per-call load (translate_ctranslate2 per request)": {"per_call_load": True},
        "CT2_USE_MKL=1 (Intel MKL's kernels)": {"env": {"CT2_USE_MKL": "1"}},
        f"{args.threads} requests at once": {"concurrent": args.threads},
    }
    engines = [{**base, "name": f"ours CTranslate2 int8, {name}", **options} for name, options in variants.items()]
    for model, folder in (("ours", args.ours), ("MarianMTModel", args.marian)):
        engines.append({"name": f"{model} generate, 1 thread", "model": model, "engine": "generate", "folder": folder})
        engines[-1]["threads"] = 1
    return engines


def measure(engines: list[dict], settings: list[tuple[int, int, int]], args, scratch: Path) -> dict[str, list]:
    """Every engine `args.rounds` times, one process each, engines rotating their order round by round; the lock is
    held round by round (one round's processes run back to back)."""
    results: dict[str, list] = {engine["name"]: [] for engine in engines}
    for round_index in range(args.rounds):
        order = engines[round_index % len(engines) :] + engines[: round_index % len(engines)]
        with held(args.lock):
            for engine in order:
                spec = {
                    "threads": args.threads,
                    **engine,
                    "settings": settings,
                    "sources": str(scratch / "sources.json"),
                }
                spec.update(tgt=args.tgt, max_new_tokens=args.max_new_tokens)
                started = time.perf_counter()
                results[engine["name"]].append(run_process(spec, scratch))
                print(f"round {round_index + 1} {engine['name']}: {time.perf_counter() - started:.0f} s", flush=True)
    return results


def spread(values: list[float], digits: int = 2) -> dict[str, float]:
    return {k: round(f(values), digits) for k, f in (("median", statistics.median), ("min", min), ("max", max))}


def rows(engines: list[dict], results: dict[str, list], references: list[str]) -> list[dict]:
    """One row per (engine, setting): sentences/s over the rounds, BLEU, the same output in every round."""
    from transformers import AutoTokenizer

    from hf_encoders.translation import score_translations

    figures = []
    for engine in engines:
        tokenizer = AutoTokenizer.from_pretrained(engine["folder"])
        runs = results[engine["name"]]
        for index, first in enumerate(runs[0][0]["timings"]):
            timings = [result["timings"][index] for result, _ in runs]
            hypotheses, count = first["hypotheses"], len(first["hypotheses"])
            tokens = sum(len(ids) + 1 for ids in tokenizer(hypotheses, add_special_tokens=False)["input_ids"])
            seconds = [timing["seconds"] for timing in timings]
            row = {"row": engine["name"], "batch_size": first["batch_size"], "num_beams": first["num_beams"]}
            row |= {"sentences": count, "rounds": len(seconds), "seconds": [round(s, 3) for s in seconds]}
            row |= {
                "sentences_per_s": spread([count / s for s in seconds]),
                "target_tokens_per_s": spread([tokens / s for s in seconds], 1),
                "bleu": round(score_translations(hypotheses, references[:count])["bleu"]["score"], 2),
                "same_output_every_round": all(t["hypotheses"] == hypotheses for t in timings),
                "other_processes_cpus": spread([timing["other_processes_cpus"] for timing in timings]),
                "load_s": spread([result["load_s"] for result, _ in runs]),
                "cpus": runs[0][0]["cpus"],
            }
            figures.append(row)
    return figures


def add_agreement(figures: list[dict], results: dict[str, list]) -> None:
    """Each CTranslate2 row's share of translations identical to its model's `generate` (first round of each)."""
    hypotheses = {}
    for name, runs in results.items():
        for timing in runs[0][0]["timings"]:
            hypotheses[name, timing["batch_size"], timing["num_beams"]] = timing["hypotheses"]
    for row in figures:
        reference = hypotheses.get(
            (row["row"].split(" CTranslate2")[0] + " generate", row["batch_size"], row["num_beams"])
        )
        if "CTranslate2" in row["row"] and reference is not None:
            mine = hypotheses[row["row"], row["batch_size"], row["num_beams"]]
            row["identical_to_generate"] = round(
                sum(a == b for a, b in zip(mine, reference, strict=True)) / len(mine), 4
            )


def speedups(figures: list[dict], numerator: str, denominator: str) -> list[dict]:
    """`numerator`'s sentences/s over `denominator`'s per setting: ratio of medians, and the ratio's range over the
    rounds (slowest numerator round / fastest denominator round, and the other way round)."""
    by_key = {(row["row"], row["batch_size"], row["num_beams"]): row["sentences_per_s"] for row in figures}
    out = []
    for batch_size, beams in SETTINGS:
        if (denominator, batch_size, beams) not in by_key:
            continue
        top, bottom = by_key[numerator, batch_size, beams], by_key[denominator, batch_size, beams]
        ratio = {
            "median": round(top["median"] / bottom["median"], 2),
            "min": round(top["min"] / bottom["max"], 2),
            "max": round(top["max"] / bottom["min"], 2),
        }
        out.append({"of": numerator, "over": denominator, "batch_size": batch_size, "num_beams": beams, **ratio})
    return out


def ctranslate2_reports(results: dict[str, list]) -> dict[str, list[str]]:
    return {name: runs[0][1] for name, runs in results.items() if runs[0][1]}


def translation_figures(args: argparse.Namespace, scratch: Path) -> dict:
    from hf_encoders.data import load_parallel_dataset

    test = load_parallel_dataset(args.data, args.src, args.tgt)[args.split]
    sources, references = list(test[args.src]), list(test[args.tgt])
    (scratch / "sources.json").write_text(json.dumps(sources))
    batch32 = args.batch32_sentences or len(sources)
    settings = [(b, beams, batch32 if b > 1 else args.batch1_sentences) for b, beams in SETTINGS]
    engines = export_engines(args, scratch)
    results = measure(engines, settings, args, scratch)
    figures = rows(engines, results, references)
    add_agreement(figures, results)
    out = {"translation": figures, "ctranslate2_report": ctranslate2_reports(results)}
    out["speedups"] = [
        *speedups(figures, "ours CTranslate2 int8", "MarianMTModel generate"),
        *speedups(figures, "ours CTranslate2 int8", "ours generate"),
        *speedups(figures, "ours CTranslate2 int8", "MarianMTModel CTranslate2 int8"),
    ]
    if args.ct2_variants:
        variants = variant_engines(scratch, args)
        batch1 = [setting for setting in settings if setting[0] == 1]
        variant_results = measure(variants, batch1, args, scratch)
        out["ctranslate2_batch1_variants"] = rows(variants, variant_results, references)
        both = figures + out["ctranslate2_batch1_variants"]
        out["speedups"] += speedups(both, "ours CTranslate2 int8", "MarianMTModel generate, 1 thread")
        out["ctranslate2_report"] |= ctranslate2_reports(variant_results)
    return out


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        run_worker(Path(sys.argv[2]))
        return
    args = parse_args()
    import ctranslate2
    import torch

    from benchmarks.common import write_result

    torch.set_num_threads(args.threads)  # (what the record states; the parent itself times nothing)
    with tempfile.TemporaryDirectory() as scratch:
        figures = translation_figures(args, Path(scratch))
    if args.onnx:
        from benchmarks.serving_onnx import onnx_encoder_rows

        figures["onnx_encoder"] = onnx_encoder_rows(threads=args.threads, rounds=args.rounds, lock=args.lock)
    settings = {
        **vars(args),
        "output": str(args.output),
        "lock": str(args.lock),
        "ctranslate2": ctranslate2.__version__,
    }
    settings |= {"lscpu_model_name": lscpu_model_name(), "warmup_sentences": WARMUP_SENTENCES}
    settings["thread_pinning"] = (
        f"each process: OMP_NUM_THREADS={args.threads}, MKL_NUM_THREADS={args.threads}, CPU affinity to "
        f"{args.threads} CPUs; PyTorch: torch.set_num_threads({args.threads}); CTranslate2: inter_threads="
        f"{args.threads}, intra_threads=1 (variants say otherwise in their names)"
    )
    write_result(args.output, "serving_cpu", settings, figures)


if __name__ == "__main__":
    main()
