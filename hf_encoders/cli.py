"""The `hf-encoders` command: the library and the training scripts from a shell.

    hf-encoders demo                                    # the whole mission on Multi30k En->De, in minutes on a CPU
    hf-encoders train-tokenizer DATA OUT [--kind seq2seq --languages en de]
    hf-encoders pretrain --config mlm_tiny [--max_steps 100 ...]            # hf_encoders.tasks.masked_lm.train
    hf-encoders train-translation --config translation_en_de [...]         # hf_encoders.tasks.translation.train
    hf-encoders finetune --config finetune_sst2 --model RUN/best          # hf_encoders.tasks.classification.finetune
    hf-encoders evaluate-translation --model RUN/best --src en --tgt de    # hf_encoders.tasks.translation.evaluate
    hf-encoders pretrain-denoising --config denoising_multi30k [...]       # hf_encoders.tasks.denoising.pretrain
    hf-encoders evaluate-anomaly --model RUN/final [--in_domain ...]       # hf_encoders.tasks.denoising.anomaly
    hf-encoders translate MODEL "A dog runs." --tgt-lang de                # or --file F, or stdin; MODEL may be
                                                                           # a CTranslate2 export
    hf-encoders export MODEL --format ctranslate2 [--quantization int8]    # or --format onnx [--quantize]
    hf-encoders convert answerdotai/ModernBERT-base OUT [--head masked-lm]  # ModernBERT weights in this family
    hf-encoders card RUN_DIR [--repo-id ORG/NAME]                          # RUN_DIR/README.md from the run
    hf-encoders push RUN_DIR ORG/NAME [--private] [--create-pr] [--revision BRANCH] [--dry-run]
    hf-encoders merge-lora RUN/best OUT                                    # a LoRA adapter merged: a whole model

The training commands are those of the tasks in `hf_encoders.tasks` (each runs its module's `main(argv)`, as
`python training/<script>.py` does). `--config NAME` finds the configs that ship with the package
(hf_encoders/configs/NAME.yaml) as well as files. An error is one line on stderr and a non-zero exit status; `--debug`
(before the command) shows the traceback instead.
"""

import argparse
import ast
import contextlib
import importlib.util
import json
import logging
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from .tasks import TASKS, task_for_command
from .tasks.harness import configure_logging, packaged_config

DEMO_SENTENCES = [
    "Two dogs are running through the snow.",
    "A man in a red jacket is riding a bicycle.",
    "A little girl is climbing into a wooden playhouse.",
]
logger = logging.getLogger("hf_encoders.cli")


class CommandError(Exception):
    """A bad command line: reported in one line with exit status 2."""


def resolve_config(argv: list[str]) -> list[str]:
    """`--config NAME` -> the packaged hf_encoders/configs/NAME.yaml when NAME is not a file."""
    try:
        return packaged_config(argv)
    except FileNotFoundError as error:
        raise CommandError(str(error)) from None


def task_commands() -> dict[str, str]:
    """Every task's commands: command -> its module (`hf_encoders.tasks.<task>.<module>`)."""
    return {command: task.module_name(module) for task in TASKS.values() for command, module in task.commands.items()}


def command_summary(module: str) -> str:
    """The first sentence of a task module's docstring, read without importing the module (and torch with it)."""
    spec = importlib.util.find_spec(module)
    docstring = ast.get_docstring(ast.parse(Path(spec.origin).read_text(encoding="utf-8"))) or module
    paragraph = " ".join(docstring.split("\n\n")[0].split())
    return paragraph.split(". ")[0].rstrip(".") + "."


def run_task(command: str, argv: list[str]):
    """Run the `main(argv)` of a task's command in this process, as `python training/<script>.py argv` would."""
    return task_for_command(command).entry_point(command)(resolve_config(argv))


def task_command(args: argparse.Namespace) -> None:
    run_task(args.command, args.script_args)


def logging_for(command: str) -> None:
    """Warnings and errors on stderr. A task's own progress and the library's ("Resumed from ...") are shown too, at
    INFO, as `python training/<script>.py` shows them; other libraries' INFO lines are not."""
    name = task_commands().get(command)
    if name is None:
        return configure_logging(show=())
    module = importlib.import_module(name)
    own = getattr(module, "logger", logging.getLogger(module.__name__)).name  # e.g. "pretrain_mlm"
    configure_logging(show=("hf_encoders", own))


def train_tokenizer_command(args: argparse.Namespace) -> None:
    from .data import load_parallel_dataset, load_text_dataset
    from .tokenization import train_tokenizer

    if args.kind == "seq2seq" and len(args.languages) != 2:
        raise CommandError("--kind seq2seq needs --languages SRC TGT (the two sides of the parallel data).")
    if args.kind == "seq2seq":
        rows, columns = load_parallel_dataset(args.data, *args.languages), args.languages
    else:
        rows, columns = load_text_dataset(args.data, text_column=args.text_column), [args.text_column]
    if args.split not in rows:
        raise CommandError(f"{args.data} has no split {args.split!r}; it has {sorted(rows)}.")
    texts = (batch[column] for column in columns for batch in rows[args.split].iter(batch_size=1000))
    tokenizer = train_tokenizer(
        texts,
        args.vocab_size,
        kind=args.kind,
        model=args.model,
        languages=sorted(args.languages),
        lowercase=args.lowercase,
        model_max_length=args.model_max_length,
    )
    tokenizer.save_pretrained(args.output_dir)
    print(f"trained a {len(tokenizer):,}-token tokenizer on {args.data} ({args.split}); saved to {args.output_dir}")


def read_sentences(sentences: list[str], file: str | None) -> list[str]:
    if sentences and file:
        raise CommandError("Give sentences as arguments or --file, not both.")
    if file:
        if not Path(file).is_file():
            raise CommandError(f"--file {file}: no such file.")
        lines = Path(file).read_text(encoding="utf-8").splitlines()
    else:
        lines = sentences or sys.stdin.read().splitlines()
    if not any(line.strip() for line in lines):
        raise CommandError("Nothing to translate: give sentences as arguments, with --file, or on stdin.")
    return lines


def check_model_location(model: str) -> None:
    """Refuse a model argument that names a local path (absolute, `./`, `~/`, deeper than ORG/NAME, a file, or a
    folder whose parent exists) without being a folder: it is not a Hub id either, whatever the Hub would say."""
    path = Path(model)
    if path.is_dir():
        return
    path_like = (
        path.is_absolute()
        or model.startswith((".", "~"))
        or model.count(os.sep) > 1
        or path.exists()
        or (path.parent != Path(".") and path.parent.is_dir())
    )
    if path_like:
        raise CommandError(
            f"{model}: no such model folder, and not a Hub id (ORG/NAME) either; give the folder of a "
            "saved model (e.g. RUN_DIR/best) or a Hub repository id."
        )


def check_translation_model(model: str, trust_remote_code: bool) -> None:
    """Refuse a model that does not translate (an encoder) by what it is, and what serves it."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model, trust_remote_code=trust_remote_code)
    if not getattr(config, "is_encoder_decoder", False):
        architecture = (config.architectures or [type(config).__name__])[0]
        raise CommandError(
            f"{model} is an encoder ({architecture}, model_type {config.model_type!r}), not an encoder-decoder: it "
            "does not translate. Serve it with transformers' pipelines (fill-mask, text-classification, "
            "feature-extraction), sentence-transformers, or `hf-encoders export MODEL --format onnx`."
        )


def fit_overlong(tokenizer, sentences: list[str], limit: int | None, args: argparse.Namespace) -> tuple:
    """`(sentences, max_source_length)` as `--overlong` treats the sentences longer than the model takes (`limit`
    tokens): an error naming the first of them, or each of them skipped (an empty line) or truncated, counted on
    stderr."""
    from .translation import overlong_sources

    if not limit or not (overlong := overlong_sources(tokenizer, sentences, limit)):
        return sentences, None
    where = f"of {args.file}" if args.file else "of the input"
    lines = ", ".join(str(i + 1) for i in list(overlong)[:10]) + (", ..." if len(overlong) > 10 else "")
    if args.overlong == "error":
        first, length = next(iter(overlong.items()))
        raise CommandError(
            f"line {first + 1} {where} has {length} tokens; the model takes at most {limit} "
            f"({len(overlong)} line(s) are too long: {lines}). Give --overlong truncate (cut them to {limit} tokens) "
            "or --overlong skip (an empty line for each)."
        )
    if args.overlong == "truncate":
        print(f"{len(overlong)} line(s) {where} truncated to {limit} tokens: {lines}", file=sys.stderr)
        return sentences, limit
    print(
        f"{len(overlong)} line(s) {where} skipped (an empty line each), over {limit} tokens: {lines}", file=sys.stderr
    )
    return ["" if i in overlong else sentence for i, sentence in enumerate(sentences)], None


def translate_command(args: argparse.Namespace) -> None:
    import torch
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from .export_ctranslate2 import EXPORT_INFO, is_ctranslate2_export, translate_ctranslate2
    from .translation import translate

    check_model_location(args.model)
    sentences = read_sentences(args.sentences, args.file)
    options = dict(batch_size=args.batch_size, num_beams=args.num_beams, max_new_tokens=args.max_new_tokens)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    if is_ctranslate2_export(args.model):
        limit = json.loads((Path(args.model) / EXPORT_INFO).read_text())["max_position_embeddings"]
        sentences, options["max_source_length"] = fit_overlong(tokenizer, sentences, limit, args)
        lines = translate_ctranslate2(args.model, sentences, args.tgt_lang, **options)
    else:
        check_translation_model(args.model, args.trust_remote_code)
        model = AutoModelForSeq2SeqLM.from_pretrained(args.model, trust_remote_code=args.trust_remote_code)
        model.to("cuda" if torch.cuda.is_available() else "cpu")
        limit = getattr(model.config, "max_position_embeddings", None)
        sentences, options["max_source_length"] = fit_overlong(tokenizer, sentences, limit, args)
        show_progress = len(sentences) > args.batch_size
        lines = translate(model, tokenizer, sentences, args.tgt_lang, show_progress=show_progress, **options)
    for line in lines:
        print(line)


def export_output(model: str, format: str, output: str | None) -> Path:
    """Where an export goes: `--output`, else the `ctranslate2/` or `onnx/` subfolder of a local model folder
    (which `hf-encoders push` uploads beside the weights)."""
    if output:
        return Path(output)
    if not Path(model).is_dir():
        raise CommandError(f"{model} is a Hub id: give --output, the folder to write the {format} export to.")
    return Path(model) / format


def export_command(args: argparse.Namespace) -> None:
    check_model_location(args.model)
    if args.format == "ctranslate2" and args.quantize:
        raise CommandError("--quantize is for --format onnx; CTranslate2 takes --quantization int8 (or others).")
    if args.format == "onnx" and args.quantization:
        raise CommandError("--quantization is for --format ctranslate2; ONNX takes --quantize (int8 dynamic).")
    output = fresh_output(export_output(args.model, args.format, args.output), args.force)  # replaced with --force
    if args.format == "ctranslate2":
        from .export_ctranslate2 import convert_to_ctranslate2

        convert_to_ctranslate2(args.model, output, args.quantization, args.force)
        print(f"wrote the CTranslate2 model ({args.quantization or 'float32'}) to {output}")
        return
    from .export_onnx import export_onnx

    info = export_onnx(args.model, output, quantize=args.quantize, trust_remote_code=args.trust_remote_code)
    print(f"wrote the ONNX model ({info['task']}) to {output}: {', '.join(info['files'])}")


BASE_MODEL_HELP = "A LoRA adapter's base model on the Hub, when the adapter was trained on a local copy of it."
CONVERT_HEADS = {
    "model": "EncoderModel",
    "masked-lm": "EncoderForMaskedLM",
    "sequence-classification": "EncoderForSequenceClassification",
    "token-classification": "EncoderForTokenClassification",
}


def fresh_output(folder: str | Path, force: bool) -> Path:
    """The folder a command writes a model to: new or empty, unless `--force`."""
    output = Path(folder)
    if output.exists() and any(output.iterdir()) and not force:
        raise CommandError(f"{output} is not empty: give an empty or new folder, or --force to write into it.")
    return output


def convert_command(args: argparse.Namespace) -> None:
    check_model_location(args.source)
    from transformers import AutoConfig, AutoTokenizer

    import hf_encoders

    from .conversion_modernbert import HEADS, check_is_modernbert

    check_is_modernbert(args.source)
    output = fresh_output(args.output, args.force)

    if args.head:
        head = CONVERT_HEADS[args.head]
    else:
        architectures = AutoConfig.from_pretrained(args.source).architectures or ["ModernBertForMaskedLM"]
        head = HEADS.get(architectures[0], "EncoderModel")
    model = getattr(hf_encoders, head).from_modernbert(args.source)
    model.save_pretrained(output)
    try:
        AutoTokenizer.from_pretrained(args.source).save_pretrained(output)
    except (OSError, ValueError) as error:
        logger.warning(
            "%s has no tokenizer to carry over (%s): add one to %s before using it.", args.source, error, output
        )
    parameters = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"wrote {head} ({parameters:.1f}M parameters, ModernBERT's outputs checked) to {output}")


def card_command(args: argparse.Namespace) -> None:
    from .cards import build_model_card
    from .hub import checked_card

    card = build_model_card(
        args.run_dir, repo_id=args.repo_id, license=args.license, language=args.language, base_model=args.base_model
    )
    content = checked_card(str(card))
    output = Path(args.output or Path(args.run_dir) / "README.md")
    output.write_text(content, encoding="utf-8")
    print(f"wrote {output}")


def push_command(args: argparse.Namespace) -> None:
    from .hub import push_to_hub

    result = push_to_hub(
        args.run_dir,
        args.repo_id,
        private=args.private,
        token=args.token,
        revision=args.revision,
        create_pr=args.create_pr,
        commit_message=args.commit_message,
        license=args.license,
        language=args.language,
        dry_run=args.dry_run,
        base_model=args.base_model,
    )
    width = max(map(len, result.files))
    for path, size in result.files.items():
        print(f"{path:<{width}}  {size:>12,} bytes")
    if args.dry_run:
        print(f"dry run: {len(result.files)} files would be committed to {args.repo_id}; nothing was uploaded")
    elif not result.committed:
        where = f"{args.repo_id}@{args.revision or 'main'}"
        print(
            f"nothing committed: {where} already holds these {len(result.files)} files as they are ({result.commit_url})"
        )
    else:
        print(f"committed {len(result.files)} files: {result.pull_request_url or result.commit_url}")


RELOAD = textwrap.dedent(
    """
    import json, sys
    from transformers import pipeline
    model_id, target, sentences = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    translator = pipeline("translation", model=model_id, trust_remote_code=True)
    outputs = [translator(sentence, tgt_lang=target, num_beams=4)[0]["translation_text"] for sentence in sentences]
    model = translator.model
    print(json.dumps({"class": type(model).__module__ + "." + type(model).__name__, "translations": outputs}))
    """
)
DEMO_OWN = ("--config", "--data", "--src", "--tgt", "--output_dir", "--output-dir")


def demo_training_args(args: argparse.Namespace) -> list[str]:
    """The arguments of the demo's `train-translation`: the demo's own settings, then the user's."""
    if clash := [arg for arg in args.training_args if arg.split("=")[0] in DEMO_OWN]:
        raise CommandError(f"{clash[0]}: give the demo's own --config/--data/--src/--tgt/--output-dir instead.")
    # a finished demo in the folder is replaced by the new one; any other run there is the training rules' to refuse
    again = (Path(args.output_dir) / "demo_summary.json").is_file() and "--resume" not in args.training_args
    fresh = ["--overwrite_output_dir"] if again else []
    own = ["--config", args.config, "--data", args.data, "--src", args.src, "--tgt", args.tgt]
    return [*own, "--output_dir", str(Path(args.output_dir)), *fresh, *args.training_args]


def push_demo(args: argparse.Namespace, output_dir: Path, stack: contextlib.ExitStack) -> tuple:
    """Push the run as `--push-to` says: `(pushed files, the model id to reload, where it went, the environment of
    the process that reloads it)`. A local Hub stays up until `stack` closes."""
    from .hub import push_to_hub, upload_plan
    from .testing.local_hub import LocalHub

    env = {**os.environ, "HF_HUB_DISABLE_TELEMETRY": "1"}
    if args.push_to == "local":
        hub = stack.enter_context(LocalHub())
        env.update(HF_ENDPOINT=hub.endpoint, HF_TOKEN="local", HF_HUB_CACHE=str(output_dir / "hub_cache"))
        env.pop("HF_HUB_OFFLINE", None)
        files = push_to_hub(output_dir, args.repo_id, endpoint=hub.endpoint, token="local").files
        model_id, where = args.repo_id, f"{args.repo_id} on the local Hub {hub.endpoint} (stopped with the demo)"
    elif args.push_to == "hub":
        pushed = push_to_hub(output_dir, args.repo_id, private=True)
        files, model_id, where = pushed.files, args.repo_id, pushed.commit_url
    else:  # a folder: the files the commit would hold
        folder = Path(args.push_to).resolve()
        folder.mkdir(parents=True, exist_ok=True)
        files = upload_plan(output_dir, args.repo_id)
        for path, content in files.items():
            (folder / path).write_bytes(content)
        model_id = where = str(folder)
    return files, model_id, where, env


def reload_in_fresh_process(model_id: str, target: str, env: dict) -> subprocess.CompletedProcess:
    """`RELOAD` in a new Python process: the pushed model through `pipeline`, translating `DEMO_SENTENCES`."""
    return subprocess.run(
        [sys.executable, "-c", RELOAD, model_id, target, json.dumps(DEMO_SENTENCES)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )


def demo_summary(
    results: dict,
    seconds: dict[str, float],
    output_dir: Path,
    card_path: Path,
    files: dict,
    where: str,
    reloaded: dict,
) -> dict:
    """What `demo_summary.json` holds: the test figures of the translation run, the times, where things are."""
    test = results["test"]
    return {
        "test": {
            "split": test["split"],
            "examples": test["examples"],
            "num_beams": test["num_beams"],
            "bleu": test["bleu"]["score"],
            "chrf": test["chrf"]["score"],
            "bleu_signature": test["bleu"]["signature"],
        },
        "train_steps": results["train"]["steps"],
        "seconds": seconds,
        "run_dir": str(output_dir),
        "model": str(output_dir / Path(results["model"]).name),
        "card": str(card_path),
        "pushed_to": where,
        "pushed_files": sorted(files),
        "reloaded_class": reloaded["class"],
        "translations": dict(zip(DEMO_SENTENCES, reloaded["translations"], strict=True)),
    }


def print_demo_summary(summary: dict, summary_path: Path) -> None:
    """The demo's figures and where its outputs are, as a two-column table."""
    test, reloaded_class = summary["test"], summary["reloaded_class"]
    rows = [
        (
            "test BLEU",
            f"{test['bleu']:.2f} ({test['split']}, {test['examples']:,} sentences, "
            f"beam {test['num_beams']}; {test['bleu_signature']})",
        ),
        ("test chrF", f"{test['chrf']:.2f}"),
        ("training", f"{summary['train_steps']:,} steps"),
        *(
            (f"time: {name}", f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s")
            for name, seconds in summary["seconds"].items()
        ),
        ("run folder", summary["run_dir"]),
        ("model", summary["model"]),
        ("card", summary["card"]),
        ("pushed to", summary["pushed_to"]),
        (
            "reloaded as",
            reloaded_class.rpartition(".")[2]
            + (
                " (the repository's own code, trust_remote_code)"
                if reloaded_class.startswith("transformers_modules")
                else ""
            ),
        ),
        *((f"'{source}'", target) for source, target in summary["translations"].items()),
        ("summary", str(summary_path)),
    ]
    width = max(len(name) for name, _ in rows)
    print("\n" + "\n".join(f"{name:<{width}}  {value}" for name, value in rows))


def demo_command(args: argparse.Namespace) -> dict:
    """Tokenizer, training, test BLEU/chrF, card, push, reload in a fresh process, translations; then a summary."""
    from .cards import build_model_card

    training_args = demo_training_args(args)
    output_dir = Path(args.output_dir)
    times: dict[str, float] = {}
    started = time.perf_counter()
    print(f"[1/4] training the joint tokenizer and a {args.src}->{args.tgt} model on {args.data} ({args.config})")
    results = run_task("train-translation", training_args)
    times["train + evaluate"] = time.perf_counter() - started

    print("[2/4] writing the model card")
    card_path = output_dir / "README.md"
    card_path.write_text(str(build_model_card(output_dir, repo_id=args.repo_id)), encoding="utf-8")

    print(f"[3/4] pushing to {args.push_to}")
    mark = time.perf_counter()
    with contextlib.ExitStack() as stack:
        files, model_id, where, env = push_demo(args, output_dir, stack)
        times["card + push"] = time.perf_counter() - mark

        print("[4/4] loading the pushed model in a fresh process and translating")
        mark = time.perf_counter()
        done = reload_in_fresh_process(model_id, args.tgt, env)
    if done.returncode != 0:
        raise RuntimeError(f"Reloading {model_id} in a fresh process failed: {done.stderr.strip().splitlines()[-1]}")
    reloaded = json.loads(done.stdout.strip().splitlines()[-1])
    times["reload + translate"] = time.perf_counter() - mark

    seconds = {**times, "total": time.perf_counter() - started}
    summary = demo_summary(results, seconds, output_dir, card_path, files, where, reloaded)
    summary_path = output_dir / "demo_summary.json"
    summary_path.write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    print_demo_summary(summary, summary_path)
    return summary


class Parser(argparse.ArgumentParser):
    """argparse's errors in the command's one-line form, and no abbreviations (`--to` is not `--token`); the
    sub-commands' parsers are of the same class."""

    def __init__(self, *args, allow_abbrev: bool = False, **kwargs):
        super().__init__(*args, allow_abbrev=allow_abbrev, **kwargs)

    def error(self, message: str):
        raise CommandError(message)


def add_demo_command(commands: argparse._SubParsersAction) -> None:
    sub = commands.add_parser(
        "demo",
        help="Train, evaluate, card, push, reload and translate: the whole mission.",
        description="The main job: train the joint tokenizer and a small translation model "
        "on Multi30k, evaluate BLEU/chrF on the test set with beam search, write the model "
        "card, push to a local Hub (started and stopped here), the Hub or a folder, reload the "
        "pushed model in a fresh process and translate a few sentences. Other arguments go to "
        "training/train_translation.py (e.g. --max_steps 50, --test_max_examples 100).",
    )
    sub.add_argument(
        "--config",
        default="translation_demo",
        help="Training config (default: translation_demo, minutes on a CPU; translation_en_de is the "
        "full-size run for a GPU).",
    )
    sub.add_argument("--data", default="../shared/data/multi30k", help="Parallel data: a folder or a Hub id.")
    sub.add_argument("--src", default="en", help="Source language (default: en).")
    sub.add_argument("--tgt", default="de", help="Target language (default: de).")
    sub.add_argument(
        "--output-dir",
        default="runs/demo",
        help="The run folder (default: runs/demo); a new demo replaces a finished one there.",
    )
    sub.add_argument("--repo-id", default="demo/hf-seq2seq-multi30k-en-de", help="The repository to push to.")
    sub.add_argument(
        "--push-to",
        default="local",
        help="local (a local Hub for the demo's length; default), hub (the Hub at HF_ENDPOINT, as a "
        "private repository) or a folder path.",
    )
    sub.set_defaults(handler=demo_command, passthrough=True)


def add_train_tokenizer_command(commands: argparse._SubParsersAction) -> None:
    sub = commands.add_parser(
        "train-tokenizer",
        help="Train a tokenizer on a text corpus or parallel data.",
        description="Train a tokenizer with `tokenizers` and save it as a transformers "
        "tokenizer (AutoTokenizer.from_pretrained loads it).",
    )
    sub.add_argument("data", help="A corpus or parallel data: a local file or folder, or a Hub id.")
    sub.add_argument("output_dir", help="Where to save the tokenizer.")
    sub.add_argument(
        "--kind",
        choices=("encoder", "seq2seq"),
        default="encoder",
        help="encoder ([CLS] ... [SEP], [MASK]) or seq2seq (... </s>, language tags).",
    )
    sub.add_argument("--languages", nargs="*", default=[], help="seq2seq: the two languages of the parallel data.")
    sub.add_argument(
        "--model",
        choices=("wordpiece", "bpe", "unigram"),
        default=None,
        help="Default: wordpiece for encoders, unigram for seq2seq.",
    )
    sub.add_argument("--vocab-size", type=int, default=8000)
    sub.add_argument("--split", default="train", help="The split to learn from (default: train).")
    sub.add_argument("--text-column", default="text", help="encoder: the text column (default: text).")
    sub.add_argument("--lowercase", action="store_true")
    sub.add_argument("--model-max-length", type=int, default=512)
    sub.set_defaults(handler=train_tokenizer_command)


def add_task_commands(commands: argparse._SubParsersAction) -> None:
    """The tasks' commands (hf_encoders.tasks): every argument goes to their `main`."""
    for command, module in task_commands().items():  # the tasks' commands: every argument goes to their main
        help = command_summary(module)
        sub = commands.add_parser(
            command,
            help=help,
            add_help=False,
            description=f"{help} Every argument goes to {module}.main; --help lists them.",
        )
        sub.set_defaults(handler=task_command, passthrough=True)


def add_translate_command(commands: argparse._SubParsersAction) -> None:
    sub = commands.add_parser(
        "translate",
        help="Translate sentences with a seq2seq model.",
        description="Translate sentences given as arguments, in a file (one per line) or on "
        "stdin; prints one translation per line.",
    )
    sub.add_argument("model", help="A model folder or Hub id.")
    sub.add_argument("sentences", nargs="*", help="Sentences to translate (default: --file, else stdin).")
    sub.add_argument("--tgt-lang", required=True, help="Target language; its tag <2xx> starts generation.")
    sub.add_argument("--file", help="A file of sentences, one per line.")
    sub.add_argument("--num-beams", type=int, help="Beam size (default: the model's generation config).")
    sub.add_argument("--batch-size", type=int, default=32)
    sub.add_argument(
        "--max-new-tokens", type=int, help="Longest translation in tokens (default: the model's, else 128)."
    )
    sub.add_argument(
        "--overlong",
        choices=("error", "truncate", "skip"),
        default="error",
        help="A line longer than the model takes: stop naming it (default), cut it, or give an empty line for it.",
    )
    sub.add_argument("--trust-remote-code", action="store_true", help="Run the model folder's own code.")
    sub.set_defaults(handler=translate_command)


def add_export_command(commands: argparse._SubParsersAction) -> None:
    sub = commands.add_parser(
        "export",
        help="Export a model for serving: CTranslate2 (translation) or ONNX Runtime (encoders).",
        description="Convert a seq2seq checkpoint to CTranslate2 (--format ctranslate2, optionally quantized) or "
        "an encoder head (embeddings, classification, fill-mask) to ONNX (--format onnx, optionally int8). The "
        "export is checked against the PyTorch model; it is written to --output, by default the model folder's "
        "ctranslate2/ or onnx/ subfolder, which `hf-encoders push` uploads.",
    )
    sub.add_argument("model", help="A model folder or Hub id.")
    sub.add_argument("--format", required=True, choices=["ctranslate2", "onnx"])
    sub.add_argument("--output", help="The export folder (default: MODEL/ctranslate2 or MODEL/onnx).")
    sub.add_argument(
        "--quantization",
        choices=["int8", "int8_float32", "int16", "float32"],
        help="ctranslate2: the weights' type (default float32).",
    )
    sub.add_argument("--quantize", action="store_true", help="onnx: also write model_quantized.onnx (int8).")
    sub.add_argument("--force", action="store_true", help="Replace an existing export in the export folder.")
    sub.add_argument("--trust-remote-code", action="store_true", help="onnx: run the model folder's own code.")
    sub.set_defaults(handler=export_command)


def add_convert_command(commands: argparse._SubParsersAction) -> None:
    sub = commands.add_parser(
        "convert",
        help="Convert a transformers ModernBERT checkpoint into this family (weights, config, tokenizer).",
        description="Load a ModernBERT checkpoint (a folder or Hub id such as answerdotai/ModernBERT-base), convert "
        "it exactly into this family's head of the same kind (or --head), check that both give the same outputs, "
        "and save it with its tokenizer: it then loads with the Auto classes and trains, serves and exports as "
        "any model of this family. Settings this family cannot compute are refused by name.",
    )
    sub.add_argument("source", help="A ModernBERT model folder or Hub id.")
    sub.add_argument("output", help="The folder to write the converted model to.")
    sub.add_argument("--head", choices=sorted(CONVERT_HEADS), help="The head to convert into (default: the source's).")
    sub.add_argument("--force", action="store_true", help="Write into a folder that is not empty.")
    sub.set_defaults(handler=convert_command)


def add_card_command(commands: argparse._SubParsersAction) -> None:
    sub = commands.add_parser(
        "card",
        help="Write a run's model card (README.md) from its outputs.",
        description="Write the model card of a training run from its config.json, "
        "results.json, metrics.jsonl, curves and its data's SOURCE.md.",
    )
    sub.add_argument("run_dir", help="The output_dir of a training run.")
    sub.add_argument("--repo-id", help="Where the model will live on the Hub (used in the usage examples).")
    sub.add_argument("--license", default="apache-2.0", help="The model's license (default: apache-2.0).")
    sub.add_argument("--language", nargs="*", help="An encoder's languages, e.g. en (translation: from the run).")
    sub.add_argument("--output", help="Where to write the card (default: RUN_DIR/README.md).")
    sub.add_argument("--base-model", help=BASE_MODEL_HELP)
    sub.set_defaults(handler=card_command)


def add_push_command(commands: argparse._SubParsersAction) -> None:
    sub = commands.add_parser(
        "push",
        help="Push a run's model, tokenizer, code, card and results to the Hub in one commit.",
        description="Push a training run to the Hub as one commit: config, safetensors weights, tokenizer, "
        "generation config, modeling code (auto_map), the card (RUN_DIR/README.md if present, else "
        "generated) and the run's results. The Hub is HF_ENDPOINT (default https://huggingface.co).",
    )
    sub.add_argument("run_dir", help="The output_dir of a training run.")
    sub.add_argument("repo_id", help="The repository, e.g. my-org/hf-seq2seq-multi30k-de-en.")
    sub.add_argument("--private", action="store_true", help="Create the repository private.")
    sub.add_argument("--token", help="A Hub token (default: HF_TOKEN or the saved login).")
    sub.add_argument("--revision", help="Commit to this branch (created if needed) instead of main.")
    sub.add_argument("--create-pr", action="store_true", help="Open a pull request instead of committing.")
    sub.add_argument("--commit-message", help="The commit message.")
    sub.add_argument("--license", default="apache-2.0", help="The model's license, for a generated card.")
    sub.add_argument("--language", nargs="*", help="An encoder's languages, for a generated card.")
    sub.add_argument("--dry-run", action="store_true", help="List what would be uploaded; upload nothing.")
    sub.add_argument("--base-model", help=BASE_MODEL_HELP)
    sub.set_defaults(handler=push_command)


def merge_lora_command(args: argparse.Namespace) -> None:
    check_model_location(args.adapter)
    output = fresh_output(args.output, args.force)
    from .adapters import merge_lora

    options = {"trust_remote_code": True} if args.trust_remote_code else {}
    run_results = Path(args.adapter).parent / "results.json"  # a fine-tuning run's best/ or final/: its labels
    run = json.loads(run_results.read_text()) if run_results.is_file() else {}
    if labels := args.labels or run.get("labels"):
        from .tasks.classification.finetune import label_settings

        task = run.get("task", "single_label")  # the run's (multi-label, regression), else one class per text
        options.update(label_settings(task, labels, {name: i for i, name in enumerate(labels)}))
    merged = merge_lora(args.adapter, output, **options)
    print(f"wrote {type(merged).__name__} ({args.adapter} merged, the adapted outputs checked) to {output}")


def add_merge_lora_command(commands: argparse._SubParsersAction) -> None:
    sub = commands.add_parser(
        "merge-lora",
        help="Merge a LoRA adapter into its base model's weights: a whole model that needs no PEFT.",
        description="Load a LoRA adapter (a folder or Hub id) onto the base model its config names, merge it into "
        "the weights, check that the merged model gives the adapted one's outputs, and save it with the "
        "adapter's tokenizer.",
    )
    sub.add_argument("adapter", help="The adapter's folder or Hub id (a fine-tuning run's best/ or final/).")
    sub.add_argument("output", help="The folder to write the merged model to.")
    sub.add_argument("--labels", nargs="+", help="A classifier's label names in id order (else the run's).")
    sub.add_argument("--trust-remote-code", action="store_true", help="Run the base model's own code.")
    sub.add_argument("--force", action="store_true", help="Write into a folder that is not empty.")
    sub.set_defaults(handler=merge_lora_command)


def build_parser() -> argparse.ArgumentParser:
    tasks = "\n".join(f"  {name} ({', '.join(task.commands)}): {task.summary}" for name, task in TASKS.items())
    parser = Parser(
        prog="hf-encoders",
        description=__doc__,
        epilog=f"training tasks (hf_encoders.tasks):\n{tasks}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--debug", action="store_true", help="Show the full traceback of an error.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_demo_command(commands)
    add_train_tokenizer_command(commands)
    add_task_commands(commands)
    add_translate_command(commands)
    add_export_command(commands)
    add_convert_command(commands)
    add_card_command(commands)
    add_push_command(commands)
    add_merge_lora_command(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    name = "hf-encoders"
    try:
        args, rest = build_parser().parse_known_args(argv)
        name = f"hf-encoders {args.command}"
        if rest and not getattr(args, "passthrough", False):
            raise CommandError(f"unrecognized arguments: {' '.join(rest)}")
        args.script_args = args.training_args = rest  # the scripts' own arguments
        logging_for(args.command)
        args.handler(args)
    except Exception as error:  # every failure is one line, unless --debug
        if "--debug" in argv:
            raise
        print(f"{name}: error: {error}", file=sys.stderr)
        return 2 if isinstance(error, CommandError) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
