"""Every image of a data set decoded once when it is read: an unusable file is named before
training starts, and each image is fingerprinted for the duplicate check (``duplicates.py``).

A large set is read in several processes, so that decoding and the check spread over the
machine's cores: each process decodes and fingerprints a stretch of the files, and the
images whose fingerprint repeats one of another stretch are decoded again for their pixel
digests, also in the processes. The result does not depend on how many processes read the set
(tests/test_duplicates.py compares one process with two).

The processes are forked, as PyTorch's DataLoader forks its workers; where forking is not the
default (macOS, Windows) the set is read in this process.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Sequence

from .duplicates import Fingerprinter, pixel_digest
from .images import read_image

# Below this many images, starting the processes costs about what they save (docs/REAL_DATA.md
# measures SMIDS's 3,005 images).
PARALLEL_FROM = 1000
MOST_PROCESSES = 8
# Stretches per process: decoding times differ by format and size, and smaller stretches keep
# every process busy to the end (16: 0.49 s on SMIDS in 2 processes, 4: 0.60 s, 1: 0.68 s).
STRETCHES_PER_PROCESS = 16


def reading_processes(count: int) -> int:
    """How many processes read ``count`` images: one per CPU this process may run on (at most
    ``MOST_PROCESSES``) for a set of ``PARALLEL_FROM`` images or more on Linux, else one (and one
    in a daemonic process, such as a multiprocessing pool's worker: it may not start processes)."""
    if count < PARALLEL_FROM or not sys.platform.startswith("linux") or multiprocessing.current_process().daemon:
        return 1
    return max(1, min(len(os.sched_getaffinity(0)), MOST_PROCESSES))


def forked_pool(processes: int) -> ProcessPoolExecutor:
    """``processes`` forked worker processes (module docstring)."""
    return ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("fork"))


def stretches(items: Sequence, processes: int, per_process: int = STRETCHES_PER_PROCESS) -> list[Sequence]:
    """``items`` cut into consecutive stretches, ``per_process`` per process."""
    size = max(1, -(-len(items) // (processes * per_process)))
    return [items[start : start + size] for start in range(0, len(items), size)]


def read_stretch(paths: Sequence[Path]) -> tuple[list[str | None], Fingerprinter]:
    """Decode each file: why each is unusable (None when it is fine), and the fingerprints of the
    usable ones, in order."""
    reasons, fingerprints = [], Fingerprinter()
    for path in paths:
        image, reason = read_image(path)
        reasons.append(reason)
        if image is not None:
            fingerprints.add(image)
    return reasons, fingerprints


def digest_files(paths: Sequence[Path]) -> list[bytes]:
    """The pixel digest of each file, decoded again."""
    return [pixel_digest(read_image(path)[0]) for path in paths]


def read_every_image(paths: Sequence[Path], processes: int | None = None) -> tuple[list[str | None], Fingerprinter]:
    """:func:`read_stretch` of all ``paths`` in ``processes`` processes (default:
    :func:`reading_processes`); with more than one, the digests its groups need are taken too."""
    processes = reading_processes(len(paths)) if processes is None else processes
    if processes <= 1:
        return read_stretch(paths)
    reasons, fingerprints = [], Fingerprinter()
    with forked_pool(processes) as pool:
        for stretch_reasons, stretch_fingerprints in pool.map(read_stretch, stretches(paths, processes)):
            reasons += stretch_reasons
            fingerprints.extend(stretch_fingerprints)
        usable = [path for path, reason in zip(paths, reasons) if reason is None]
        missing = fingerprints.undigested()
        # A few dozen files: one stretch each, as more would cost more in dispatch than they even out.
        digests = pool.map(digest_files, stretches([usable[i] for i in missing], processes, per_process=1))
        fingerprints.digests.update(zip(missing, (digest for stretch in digests for digest in stretch)))
    return reasons, fingerprints
