"""The `hf-encoders` command: the library's steps from a shell.

    hf-encoders card RUN_DIR [--repo-id ORG/NAME]        # write RUN_DIR/README.md from the run's outputs
    hf-encoders push RUN_DIR ORG/NAME [--private] [--create-pr] [--revision BRANCH] [--dry-run]

An error is one line on stderr and a non-zero exit status; `--debug` shows the traceback instead.
"""

import argparse
import logging
import sys
from pathlib import Path


def card(args: argparse.Namespace) -> None:
    from .hub import build_model_card, card_metadata_errors

    content = str(build_model_card(args.run_dir, repo_id=args.repo_id, license=args.license))
    if errors := card_metadata_errors(content):
        raise ValueError(f"The card fails the Hub's checks: {'; '.join(errors)}.")
    output = Path(args.output or Path(args.run_dir) / "README.md")
    output.write_text(content, encoding="utf-8")
    print(f"wrote {output}")


def push(args: argparse.Namespace) -> None:
    from .hub import push_to_hub

    result = push_to_hub(
        args.run_dir, args.repo_id, private=args.private, token=args.token, revision=args.revision,
        create_pr=args.create_pr, commit_message=args.commit_message, license=args.license, dry_run=args.dry_run,
    )  # fmt: skip
    width = max(map(len, result.files))
    for path, size in result.files.items():
        print(f"{path:<{width}}  {size:>12,} bytes")
    if args.dry_run:
        print(f"dry run: {len(result.files)} files would be committed to {args.repo_id}; nothing was uploaded")
    else:
        print(f"committed {len(result.files)} files: {result.pull_request_url or result.commit_url}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hf-encoders", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--debug", action="store_true", help="Show the full traceback of an error.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sub = commands.add_parser("card", help="Write a run's model card (README.md) from its outputs.",
                              description="Write the model card of a training run from its config.json, "
                                          "results.json, metrics.jsonl, curves and its data's SOURCE.md.")  # fmt: skip
    sub.add_argument("run_dir", help="The output_dir of a training run.")
    sub.add_argument("--repo-id", help="Where the model will live on the Hub (used in the usage examples).")
    sub.add_argument("--license", default="apache-2.0", help="The model's license (default: apache-2.0).")
    sub.add_argument("--output", help="Where to write the card (default: RUN_DIR/README.md).")
    sub.set_defaults(handler=card)

    sub = commands.add_parser(
        "push", help="Push a run's model, tokenizer, code, card and results to the Hub in one commit.",
        description="Push a training run to the Hub as one commit: config, safetensors weights, tokenizer, "
                    "generation config, modeling code (auto_map), the card (RUN_DIR/README.md if present, else "
                    "generated) and the run's results. The Hub is HF_ENDPOINT (default https://huggingface.co).",
    )  # fmt: skip
    sub.add_argument("run_dir", help="The output_dir of a training run.")
    sub.add_argument("repo_id", help="The repository, e.g. my-org/hf-seq2seq-multi30k-de-en.")
    sub.add_argument("--private", action="store_true", help="Create the repository private.")
    sub.add_argument("--token", help="A Hub token (default: HF_TOKEN or the saved login).")
    sub.add_argument("--revision", help="Commit to this branch (created if needed) instead of main.")
    sub.add_argument("--create-pr", action="store_true", help="Open a pull request instead of committing.")
    sub.add_argument("--commit-message", help="The commit message.")
    sub.add_argument("--license", default="apache-2.0", help="The model's license, for a generated card.")
    sub.add_argument("--dry-run", action="store_true", help="List what would be uploaded; upload nothing.")
    sub.set_defaults(handler=push)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    try:
        args.handler(args)
    except Exception as error:
        if args.debug:
            raise
        print(f"hf-encoders {args.command}: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
