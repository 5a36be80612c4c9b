"""What a benchmark suite measures with, and where it reports (benchmark.py's flags as data)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from ..runtime import device_description

log = logging.getLogger(__name__)


@dataclass
class Benchmark:
    """A suite's settings (one field per ``benchmark.py`` flag), its device, and its outputs:
    ``write`` receives every table and line a suite reports (``benchmark.py`` prints them; the
    library only logs), ``progress(done, rounds)`` the timing rounds, and :meth:`table` keeps
    the suite's main table with its provenance for ``--markdown``."""

    suite: str = "models"
    models: list[str] = field(default_factory=lambda: ["efficientnetv2_s", "resnet50v2"])
    num_classes: int = 18
    img_size: int = 240
    batch_size: int = 1
    iters: int = 20
    warmup: int = 5
    amp: str = "off"
    channels_last: bool = False
    half: bool = False
    cuda_graph: bool = False
    compile: bool = False
    throughput: list[int] | None = None
    train: bool = False
    train_steps: int = 20
    data: Path | None = None
    rounds: int = 5
    logits_from: Path = Path("runs/demo/fusion")
    simulated_samples: int = 200
    boot: int = 300
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    scripts: Path = Path(".")  # the folder of train.py, fuse.py and evaluate.py: the command suites run them
    write: Callable[[str], None] = log.info
    progress: Callable[[int, int], None] | None = None
    markdown: str | None = field(default=None, init=False)

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
        self.markdown = (
            f"<!-- written by {command}; {device_description(self.device)}; torch {torch.__version__} -->\n\n" + text
        )
