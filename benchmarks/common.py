"""What every benchmark records beside its figures: the machine, the versions and the command."""

import json
import platform
import sys
from pathlib import Path

import torch
import transformers


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name() -> str:
    if torch.cuda.is_available():
        return f"GPU: {torch.cuda.get_device_name()}"
    return f"CPU: {cpu_name()}"


def write_result(path: Path, benchmark: str, settings: dict, figures: dict) -> None:
    result = {
        "benchmark": benchmark,
        "command": "python " + " ".join(sys.argv),
        "device": device_name(),
        "cpu_threads": torch.get_num_threads(),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        },
        "settings": settings,
        **figures,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")
