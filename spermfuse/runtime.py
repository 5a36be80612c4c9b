"""Where a run happens: the device, the seeds, and one description of the environment.

Every output that records its environment (``config.json``, ``model.json``, the results
files, the benchmark tables) takes it from here.
"""

from __future__ import annotations

import os
import platform
import random
import subprocess
from pathlib import Path

import numpy as np
import torch

from . import distributed
from .core.errors import ConfigError

# Every program's --device: one default, one meaning.
DEVICE_HELP = "auto (a CUDA GPU when there is one, else the CPU), cpu, cuda or cuda:K"


def resolve_device(
    name: str, context: distributed.DistributedContext = distributed.DistributedContext()
) -> torch.device:
    """``--device auto|cpu|cuda[:k]`` as a device; a missing GPU is a ConfigError naming the flag."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"--device {name}: not a device; use auto, cpu or cuda") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("--device cuda: no CUDA device is available here; use --device cpu")
        if device.index is None and (context.enabled or context.local_rank):  # this process's GPU under torchrun
            device = torch.device("cuda", context.local_rank)
        torch.cuda.set_device(device)
    return device


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and PyTorch; deterministic cuDNN and algorithms.

    Bit-identical on the CPU. On CUDA the deterministic mode is warn-only: a kernel without
    a deterministic version still runs (with a warning), so GPU runs repeat only up to those.
    """
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(True, warn_only=True)


def git_commit(short: bool = False) -> str | None:
    """The commit of the spermfuse checkout that is running, or None outside git."""
    command = ["git", "rev-parse", "--short", "HEAD"] if short else ["git", "rev-parse", "HEAD"]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=5, cwd=Path(__file__).parent)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None


# The CPU features that decide how fast fp32, int8 and bf16 convolutions run (a results file names them).
MATRIX_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


def device_description(device: torch.device) -> str:
    """The machine line: GPU name, or the CPU model, thread count and matrix-arithmetic features."""
    if device.type == "cuda":
        return f"GPU {torch.cuda.get_device_name(device)}"
    model, flags = "unknown CPU", set()
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name") and model == "unknown CPU":
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    arithmetic = " ".join(flag for flag in MATRIX_FLAGS if flag in flags)
    return f"CPU {model} ({torch.get_num_threads()} threads{'; ' + arithmetic if arithmetic else ''})"


def environment(device: torch.device) -> dict:
    """The versions, the commit and the machine, as recorded in ``config.json``."""
    import torchvision

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or platform.machine())
    return {
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "git_commit": git_commit(),
        "device": str(device),
        "device_name": name,
    }


def environment_line(device: torch.device) -> str:
    """The commit, the machine and torch in one line, for a results file."""
    return f"commit {git_commit(short=True) or 'unknown'}; {device_description(device)}; torch {torch.__version__}"


def peak_memory_mb(device: torch.device) -> float:
    """Peak CUDA memory allocated, or peak resident memory of this process on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
