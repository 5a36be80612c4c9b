"""What a benchmark suite measures with, and where it reports (benchmark.py's flags as data)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from ..core.errors import ConfigError
from ..core.models import list_models
from ..core.transforms import PAPER_IMG_SIZE
from ..flags import setting
from ..runtime import environment_line

log = logging.getLogger(__name__)


@dataclass
class Benchmark:
    """A suite's settings (one field per ``benchmark.py`` flag), its device, and its outputs:
    ``write`` receives every table and line a suite reports (``benchmark.py`` prints them; the
    library only logs), ``progress(done, rounds)`` the timing rounds, and :meth:`table` keeps
    the suite's main table with its provenance for ``--markdown``."""

    suite: str = "models"
    models: tuple[str, ...] = setting(
        ("efficientnetv2_s", "resnet50v2"), "the models to measure (two for the fused pair)", "timing"
    )
    num_classes: int = setting(18, "classes of the models' heads", "timing")
    img_size: int = setting(PAPER_IMG_SIZE, "input size in px (the paper's)", "timing")
    batch_size: int = setting(1, "batch of the latency runs (the paper's)", "timing")
    # The paper's 100 + 200 rounds take minutes per model on a CPU: a shorter default there.
    iters: int | None = setting(None, "timed rounds (default 200 on a GPU, as the paper; 20 on the CPU)", "timing")
    warmup: int | None = setting(
        None, "untimed rounds first (default 100 on a GPU, as the paper; 5 on the CPU)", "timing"
    )
    amp: str = setting("off", "autocast (fp16 on CUDA, bf16 on the CPU)", "timing", choices=["on", "off"])
    channels_last: bool = setting(False, "channels-last memory format", "timing")
    half: bool = setting(False, "weights and input in fp16 (CUDA): no autocast casts at run time", "timing")
    cuda_graph: bool = setting(False, "capture each model once as a CUDA graph and time its replays", "timing")
    compile: bool = setting(False, "torch.compile the models first", "timing")
    throughput: tuple[int, ...] | None = setting(
        None, "also images/s at these batch sizes", "timing", nargs="*", metavar="BATCH"
    )
    train: bool = setting(False, "training steps (batch 8): fp32 vs AMP", "timing")
    train_steps: int = setting(20, "--train: timed training steps", "suites")
    data: Path | None = setting(
        None, "--suite transforms/loader: image folder (default: the synthetic sperm18 set)", "suites"
    )
    rounds: int = setting(
        5, "the command suites (guarantees, sample-report, scale-out, ...): interleaved rounds", "suites"
    )
    logits_from: Path = setting(
        Path("runs/demo/fusion"),
        "--suite samples: a fusion (or model) folder whose fold*/test_logits.npz are the held-out cells",
        "suites",
    )
    simulated_samples: int = setting(200, "--suite samples: patients per row", "suites")
    boot: int = setting(300, "--suite samples: bootstrap replicates per interval", "suites")
    referral_repeats: int = setting(2000, "--suite referral: calibration draws per method and setting", "suites")
    duplicates: str = setting(
        "error", "--suite baseline: --duplicates as train.py", "suites", choices=["error", "drop-conflicts", "keep"]
    )
    folds_csv: Path | None = setting(
        None, "--suite baseline: the networks' folds.csv (default: train.py's split)", "suites"
    )
    epoch_from: Path | None = setting(
        None, "--suite duplicates: a run folder whose history.csv times an epoch", "suites"
    )
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    scripts: Path = Path(".")  # the folder of train.py, fuse.py and evaluate.py: the command suites run them
    write: Callable[[str], None] = log.info
    progress: Callable[[int, int], None] | None = None
    markdown: str | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.models = tuple(self.models)
        unknown = [name for name in self.models if name not in list_models()]
        if unknown:
            raise ConfigError(f"--models {unknown[0]}: unknown; see train.py --list-models")
        counts = {
            "--num-classes": (self.num_classes, 2),
            "--img-size": (self.img_size, 16),
            "--batch-size": (self.batch_size, 1),
            "--iters": (self.iters, 1),
            "--warmup": (self.warmup, 0),
            "--train-steps": (self.train_steps, 1),
            "--rounds": (self.rounds, 1),
            "--simulated-samples": (self.simulated_samples, 1),
            "--boot": (self.boot, 1),
            "--referral-repeats": (self.referral_repeats, 1),
            "--throughput": (min(self.throughput or (), default=None), 1),
        }
        for flag, (value, least) in counts.items():
            if value is not None and value < least:
                raise ConfigError(f"{flag} {value}: give {least} or more")
        on_gpu = self.device.type == "cuda"
        self.iters = self.iters if self.iters is not None else (200 if on_gpu else 20)
        self.warmup = self.warmup if self.warmup is not None else (100 if on_gpu else 5)

    def say(self, text: str) -> None:
        """Report a table or a line."""
        self.write(text)

    def table(self, text: str, flags: str | None = None) -> None:
        """Report the suite's main table and keep it, headed by the command and the machine that
        made it, for ``--markdown`` (``flags``: the suite's own, when the timing flags do not apply)."""
        self.write(text)
        command = f"benchmark.py --suite {self.suite} " + (
            flags
            or f"--models {' '.join(self.models)} --img-size {self.img_size} --batch-size {self.batch_size} "
            f"--warmup {self.warmup} --iters {self.iters}"
        )
        self.markdown = f"<!-- written by {command}; {environment_line(self.device)} -->\n\n" + text
