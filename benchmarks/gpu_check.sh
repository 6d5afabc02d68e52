#!/usr/bin/env bash
# The GPU check (issue 40, item 5): on a lent GPU, in one run, each step time-boxed:
#   tests        tests/test_cuda.py: bf16 and fp16 training steps; padded == unpadded == packed batches for sdpa, flex
#                attention and flash attention 2 (where installed); compiled training steps and compiled `generate`
#                with the static cache equal to eager
#   translation  a short bf16 translation run: the demo recipe (translation_demo: Multi30k en->de, 600 steps)
#   bench        benchmarks/bench_gpu.py at ModernBERT-base dimensions: EncoderForMaskedLM beside
#                ModernBertForMaskedLM (its best attention there) and BertForMaskedLM, eager and compiled: tokens/s,
#                peak memory, MFU
# It writes gpu_check.json (the device, the versions, the command, each step's status and seconds), log.txt,
# tests.xml, translation_results.json and bench_gpu.json into $OUT where it is set (the device machine), else into
# benchmarks/results/gpu/ (or --out DIR).
#
#   bash benchmarks/gpu_check.sh --prepare    # here, before: the wheels the GPU image lacks into .whl/, the Multi30k
#                                             # files into .gpu_check/ (both gitignored, both carried); prints the run
#   bash benchmarks/gpu_check.sh              # on the GPU: installs the carried wheels into /tmp/site, runs the steps
#   bash benchmarks/gpu_check.sh --dry-run    # every step, the preparation too, on this CPU with tiny models (CI)
#
# --steps tests,translation,bench runs some of them (a rerun); --budget SECONDS bounds all steps together (default
# 330: with its start, a `run` with timeout_s=360 ends on time; the dry run boxes each step and the budget twice as
# long); --out DIR. Exit status 0: every step passed.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
ARGUMENTS="$*"

MODE=gpu
STEPS=tests,translation,bench
BUDGET=
OUT_DIR=${OUT:-$ROOT/benchmarks/results/gpu}
INTO=$ROOT
while [ $# -gt 0 ]; do
    case $1 in
        --prepare) MODE=prepare ;;
        --dry-run) MODE=dry-run ;;
        --steps) STEPS=$2 && shift ;;
        --budget) BUDGET=$2 && shift ;;
        --out) OUT_DIR=$2 && shift ;;
        --into) INTO=$2 && shift ;;  # (--prepare: where .whl/ and .gpu_check/ go; the dry run's rehearsal)
        *) echo "gpu_check.sh: unknown argument $1 (--prepare, --dry-run, --steps, --budget, --out)" >&2 && exit 2 ;;
    esac
    shift
done

WHEELS=.whl         # carried: what the GPU image (KINDS.md's package list) lacks of hf_encoders' runtime imports
CARRIED=.gpu_check  # carried: the Multi30k files the translation step reads, and the commit they were prepared at
CARRIED_PACKAGES=(datasets evaluate torchdata dill multiprocess fsspec)  # at the lock's versions (constraints.txt)
RUN_TIMEOUT=360     # the run's timeout_s: two starts (a minute or two each), this run and a shorter rerun fit 15 min
RERUN_BUDGET=200
SCALE=1             # the dry run's boxes are twice the GPU's: a shared 2-core CI machine runs the tests' bodies

# --------------------------------------------------------------------------------------------------------------------
# Preparation (here): the wheels and the data to carry

download_wheels() {  # download_wheels DIR: the carried packages as wheels for the image's CPython 3.12
    local requirements=() name version
    for name in "${CARRIED_PACKAGES[@]}"; do
        version=$(grep -i "^$name==" constraints.txt | cut -d= -f3)
        [ -n "$version" ] || { echo "constraints.txt pins no $name" >&2 && return 1; }
        requirements+=("$name==$version")
    done
    rm -rf "$1" && mkdir -p "$1"
    "${PYTHON:-python3}" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d "$1" "${requirements[@]}"
}

copy_data() {  # copy_data DIR: the demo recipe's Multi30k en-de files (train, val, test) and their SOURCE.md
    local source=$ROOT/../shared/data/multi30k split language
    rm -rf "$1" && mkdir -p "$1/multi30k"
    cp "$source/SOURCE.md" "$1/multi30k/" || return 1
    for split in train val test_2016_flickr; do
        for language in en de; do cp "$source/$split.$language.gz" "$1/multi30k/" || return 1; done
    done
    { git rev-parse HEAD && git status --porcelain | wc -l; } >"$1/prepared_at" 2>/dev/null
}

prepare() {
    download_wheels "$INTO/$WHEELS" && copy_data "$INTO/$CARRIED" || exit 1
    local size
    size=$(du -scm "$INTO/$WHEELS" "$INTO/$CARRIED" | tail -1 | cut -f1)
    ls "$INTO/$WHEELS" "$INTO/$CARRIED/multi30k"
    echo "carried: $size MiB (the working tree travels too: 64 MiB in all)"
    [ "$size" -le 60 ] || { echo "over 60 MiB: carry less" >&2 && exit 1; }
    cat <<EOF

When a GPU is lent (status: can_start_another), one call, then give_back unless a rerun follows at once:
  run(command="bash benchmarks/gpu_check.sh", carry=["$WHEELS", "$CARRIED"], timeout_s=$RUN_TIMEOUT)
A rerun of what failed or ran out of time (name the steps):
  run(command="bash benchmarks/gpu_check.sh --steps bench --budget $RERUN_BUDGET", carry=["$WHEELS", "$CARRIED"], timeout_s=$((RERUN_BUDGET + 30)))
Then copy the files that come back (files_at) into benchmarks/results/gpu/ and commit them.
EOF
}

if [ "$MODE" = prepare ]; then
    prepare
    exit 0
fi

# --------------------------------------------------------------------------------------------------------------------
# The run: on the GPU, or rehearsed on this CPU (--dry-run)

WORK=$(mktemp -d -t gpu_check_work.XXXXXX)  # installed wheels, run folders, caches: none of it comes back
if [ "$MODE" = dry-run ]; then
    PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
    [ -x "$PYTHON" ] || PYTHON=python3
    export PYTHON
    OUT_DIR=$(mktemp -d -t gpu_check.XXXXXX)
    CARRIED_ROOT=$WORK
    SCALE=2
    export HF_ENCODERS_TEST_DEVICE=cpu
else
    PYTHON=python3
    CARRIED_ROOT=$ROOT
fi
BUDGET=${BUDGET:-$((330 * SCALE))}
mkdir -p "$OUT_DIR"
LOG=$OUT_DIR/log.txt
STATUS=$WORK/steps.tsv
: >"$LOG"
: >"$STATUS"
export PYTHONUNBUFFERED=1 HF_HOME=$WORK/hf HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
STARTED=$SECONDS

say() { echo "== gpu_check: $*" | tee -a "$LOG"; }

step() {  # step NAME LIMIT COMMAND...: COMMAND for at most LIMIT seconds (and what is left of the budget), recorded
    local name=$1 limit=$(($2 * SCALE)) left start rc status
    shift 2
    left=$((BUDGET - (SECONDS - STARTED)))
    [ "$limit" -le "$left" ] || limit=$left
    if [ "$limit" -lt 10 ]; then
        say "$name: skipped, ${left} s of the budget left"
        printf '%s\t%s\t\t0\t%s\t%s\n' "$name" skipped "$limit" "$*" >>"$STATUS"
        return 1
    fi
    say "$name (at most $limit s): $*"
    start=$SECONDS
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$LOG"
    rc=${PIPESTATUS[0]}
    case $rc in 0) status=passed ;; 124 | 137) status="timed out" ;; *) status=failed ;; esac
    say "$name: $status (exit $rc) in $((SECONDS - start)) s"
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$status" "$rc" "$((SECONDS - start))" "$limit" "$*" >>"$STATUS"
    return "$rc"
}

wanted() { [[ ",$STEPS," == *",$1,"* ]]; }

if [ "$MODE" = dry-run ]; then  # the preparation too, into $WORK; the wheels installed for CPython 3.12, not used
    step prepare 120 bash benchmarks/gpu_check.sh --prepare --into "$WORK"
    site=$WORK/site && platform=(--python-version 3.12 --implementation cp --only-binary=:all:)
else
    [ -d "$WHEELS" ] && [ -d "$CARRIED/multi30k" ] || {
        echo "No $WHEELS/ or $CARRIED/: run 'bash benchmarks/gpu_check.sh --prepare' first and carry both." >&2
        exit 2
    }
    site=/tmp/site && platform=()
fi
step install 60 "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$site" "${platform[@]}" "$CARRIED_ROOT/$WHEELS"/*.whl
[ "$MODE" = dry-run ] || export PYTHONPATH=$site:$PYTHONPATH

# The device, the versions, and whether the carried wheels' own requirements are met there
"$PYTHON" - "$WORK/environment.json" "${CARRIED_PACKAGES[@]}" <<'EOF' 2>&1 | tee -a "$LOG"
import importlib.metadata as metadata, json, platform, subprocess, sys
import torch, transformers
from packaging.requirements import Requirement
from benchmarks.common import device_name

try:
    import hf_encoders
    ours, ours_error = hf_encoders.__version__, None
except Exception as error:  # (recorded: every step will fail, and this says why)
    ours, ours_error = None, f"{type(error).__name__}: {error}"

def version(name):
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None

unmet = []
for name in sys.argv[2:]:
    for line in metadata.requires(name) or []:
        requirement = Requirement(line)
        if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
            found = version(requirement.name)
            if found is None or not requirement.specifier.contains(found, prereleases=True):
                unmet.append(f"{name} needs {requirement}, found {found}")
cuda = torch.cuda.is_available()
query = ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"]
environment = {
    "device": device_name(),
    "nvidia_smi": subprocess.run(query, capture_output=True, text=True, timeout=30).stdout.strip() if cuda else None,
    "versions": {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "transformers": transformers.__version__,
        "hf_encoders": ours,
        **{name: version(name) for name in ("accelerate", "tokenizers", "huggingface-hub", "pyarrow", "triton")},
        **{name: version(name) for name in ("flash-attn", *sys.argv[2:])},
    },
    "carried_requirements_unmet": unmet,
    "hf_encoders_import_error": ours_error,
}
json.dump(environment, open(sys.argv[1], "w"), indent=2)
print(json.dumps(environment, indent=2))
EOF

# --------------------------------------------------------------------------------------------------------------------
# The steps

if wanted tests; then
    # -v: each test's outcome in the log as it ends, for the record should the box cut the run short
    step tests 150 "$PYTHON" -m pytest tests/test_cuda.py -v -p no:cacheprovider --junitxml "$OUT_DIR/tests.xml"
fi

if wanted translation; then
    recipe=(--config translation_demo)  # 600 steps of 64 pairs, as the demo runs on a CPU
    if [ "$MODE" = dry-run ]; then
        recipe=(--config translation_tiny --max_train_examples 200 --vocab_size 300 --num_epochs 0 --max_steps 6
            --eval_every 3 --eval_max_examples 8 --test_max_examples 8 --test_num_beams 2 --max_new_tokens 12)
    fi
    step translation 75 "$PYTHON" training/train_translation.py "${recipe[@]}" --data "$CARRIED_ROOT/$CARRIED/multi30k" \
        --output_dir "$WORK/translation" --mixed_precision bf16 &&
        cp "$WORK/translation/results.json" "$OUT_DIR/translation_results.json"
fi

if wanted bench; then
    bench=(--only encoder --steps 8 --warmup 8 --rounds 2)  # warm-up: every batch once (all compilations)
    [ "$MODE" = dry-run ] && bench=(--dry-run --only encoder --compile-backend aot_eager)
    left=$((BUDGET - (SECONDS - STARTED)))
    step bench "$left" "$PYTHON" benchmarks/bench_gpu.py "${bench[@]}" --time-budget $((left > 40 ? left - 20 : 20)) \
        --output "$OUT_DIR/bench_gpu.json"
fi

# --------------------------------------------------------------------------------------------------------------------
# The record

"$PYTHON" - "$OUT_DIR" "$WORK" "$CARRIED_ROOT/$CARRIED" "$MODE" "$BUDGET" "$((SECONDS - STARTED))" "$ARGUMENTS" \
    <<'EOF' 2>&1 | tee -a "$LOG"
import hashlib, json, re, sys, time
import xml.etree.ElementTree as tree
from pathlib import Path

out, work, carried, mode, budget, seconds, arguments = sys.argv[1:]
out, work, prepared = Path(out), Path(work), Path(carried) / "prepared_at"
record = {
    "check": "benchmarks/gpu_check.sh",
    "mode": mode,
    "command": f"bash benchmarks/gpu_check.sh {arguments}".strip(),
    "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    "budget_seconds": int(budget),
    "seconds": int(seconds),
}
environment = work / "environment.json"
record.update(json.loads(environment.read_text()) if environment.exists() else {"environment": "not read: log.txt"})
record["prepared_at_commit"] = prepared.read_text().split()[0] if prepared.exists() else None
sources = sorted(Path("hf_encoders").rglob("*.py"))  # which code ran, beside the commit it was prepared at
record["hf_encoders_sources_sha256"] = hashlib.sha256(b"".join(path.read_bytes() for path in sources)).hexdigest()
record["steps"] = {}
for line in (work / "steps.tsv").read_text().splitlines():
    name, status, code, took, limit, command = line.split("\t")
    record["steps"][name] = {
        "status": status,
        "exit_code": int(code) if code else None,
        "seconds": int(took),
        "limit_seconds": int(limit),
        "command": command,
    }
if (out / "tests.xml").exists():
    suite = tree.parse(out / "tests.xml").getroot().find("testsuite")
    outcomes = {
        case.get("name"): next((kind for kind in ("failure", "error", "skipped") if case.find(kind) is not None), "passed")
        for case in suite.iter("testcase")
    }
    record["tests"] = {"complete": True, "outcomes": outcomes}
elif "tests" in record["steps"]:  # cut short: the outcomes pytest -v printed before
    found = re.findall(r"^tests/test_cuda\.py::(\S+) (PASSED|FAILED|ERROR|SKIPPED)", (out / "log.txt").read_text(), re.M)
    record["tests"] = {"complete": False, "outcomes": {name: outcome.lower() for name, outcome in found}}
if "tests" in record:
    outcomes = list(record["tests"]["outcomes"].values())
    record["tests"]["counts"] = {outcome: outcomes.count(outcome) for outcome in sorted(set(outcomes))}
record["files"] = sorted({path.name for path in out.iterdir()} | {"gpu_check.json"})
(out / "gpu_check.json").write_text(json.dumps(record, indent=2) + "\n")
print(json.dumps({name: step["status"] for name, step in record["steps"].items()}))
print(f"wrote {out / 'gpu_check.json'}")
EOF

say "done in $((SECONDS - STARTED)) s; results in $OUT_DIR"
failed=$(cut -f2 "$STATUS" | grep -cv '^passed$')
rm -rf "$WORK"
[ "$failed" -eq 0 ]
