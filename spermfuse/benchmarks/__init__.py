"""The benchmark suites behind ``benchmark.py``: each takes a :class:`Benchmark` (the flags as
data, the device, where to report) and returns its figures as a dict.

- ``speed.py``: the paper's Table 8 (parameters, FLOPs, latency), training steps, timm, export,
  EMA, padding, where int8 time goes, the cost of an explanation, CPU speed-ups;
- ``pipeline.py``: augmentation, the loader, the folds;
- ``protocol.py``: fusion and evaluation at the paper's size, the file guarantees, the promises,
  the per-sample fractions, one sample report, training folds in parallel;
- ``referral.py``: the certified referral's failure rate and accepted share, simulated;
- ``real_data.py``: a classical baseline on real folds, the duplicate check's cost.
- helpers only the suites use: ``flops.py``, ``ceiling.py`` (a runtime's arithmetic floor),
  ``profiling.py``, ``cuda_graph.py``, ``fused_pair.py``.
"""

from __future__ import annotations

from typing import Callable

from .context import Benchmark
from .pipeline import loader_suite, splits_suite, transforms_suite
from .protocol import (
    fusion_suite,
    guarantees_suite,
    promises_suite,
    sample_report_suite,
    samples_suite,
    scale_out_suite,
)
from .real_data import baseline_suite, duplicates_suite
from .referral import referral_suite
from .speed import (
    cpu_suite,
    ema_suite,
    explain_suite,
    export_suite,
    int8_profile_suite,
    models_suite,
    padding_suite,
    timm_suite,
)

SUITES: dict[str, Callable[[Benchmark], dict]] = {
    "models": models_suite,
    "transforms": transforms_suite,
    "loader": loader_suite,
    "timm": timm_suite,
    "fusion": fusion_suite,
    "splits": splits_suite,
    "ema": ema_suite,
    "export": export_suite,
    "int8-profile": int8_profile_suite,
    "padding": padding_suite,
    "explain": explain_suite,
    "cpu": cpu_suite,
    "guarantees": guarantees_suite,
    "promises": promises_suite,
    "referral": referral_suite,
    "samples": samples_suite,
    "sample-report": sample_report_suite,
    "scale-out": scale_out_suite,
    "baseline": baseline_suite,
    "duplicates": duplicates_suite,
}


def run_suite(bench: Benchmark) -> dict:
    """Run ``bench.suite``; its figures (its tables went to ``bench.write``, the main one is in
    ``bench.markdown``)."""
    return SUITES[bench.suite](bench)


__all__ = ["Benchmark", "SUITES", "run_suite"]
