"""int8 deployment (``fuse.py --export DIR --precision int8``): the exported ONNX model quantized
after training, then treated as the different model it is.

- **Quantization**: ONNX Runtime's static post-training quantization (``quantize_static``): QDQ
  format, the convolutions only, int8 weights per output channel, uint8 activations whose
  ranges are calibrated (min-max) on the run's own calibration cells (``cal_logits.npz``), else
  its validation cells; never test cells. Two kinds of convolution stay fp32
  (:func:`convolutions_kept_fp32`): each backbone's stem, whose input is the raw image, and the
  squeeze-and-excitation convolutions, which act on one pooled vector per image: they cost a
  few percent of the work, and quantized one at a time they moved the demo pair's probabilities
  most (its agreement with fp32 with and without them: docs/PREDICTION.md). Where the model so
  quantized agrees with fp32 on fewer than ``--min-agreement`` of the calibration cells, each seen
  in its 8 orientations (cells lie every way under a microscope: 8 times the inputs, from cells
  that are not test cells), more convolutions stay fp32: each is first quantized alone and ranked
  by how far that moves the fused probabilities of the first ``SENSITIVITY_CELLS`` calibration
  cells (mean KL divergence), then the 1, 2, 4, ... most sensitive are kept fp32 until the
  agreement is reached (:func:`quantize_int8`; each step is in model.json). The search asks the
  calibration cells for half the disagreement the guard allows on test cells
  (``SEARCH_DISAGREEMENT_SHARE``): the pair was chosen on held-out training cells, which lie further
  from a tie than test cells and flip less (the demo's fold-1 pair: 10.7 % of its test cells within
  0.01 of a tie, 6.6 % of its calibration cells' orientations; docs/PREDICTION.md). Weights use 7 bits
  (``reduce_range``): CPUs without AVX-512 VNNI multiply uint8 by int8 with 16-bit
  intermediate sums, which 8-bit weights saturate. In an exploration on the demo's fold-1 pair
  (onnxruntime 1.32, a 2-core AVX2 CPU), 8-bit weights, or quantizing the fully connected heads
  too, agreed with fp32 on fewer test cells; percentile, entropy or symmetric activation ranges,
  or calibrating on the validation cells as well, did no better (the last measured on a VNNI CPU).
- **Re-certification**: the referral threshold and the prediction sets that travel in model.json
  are fitted again, with the same settings, on the same calibration cells passed through the
  quantized model (``reduced_precision.recertify``); the fp32 model's rules do not carry over.
- **Accuracy guard**: top-1 agreement with the fp32 model and the accuracy of both on the folds'
  test cells (``reduced_precision.judged_on_test_cells``); ``fuse.py`` refuses an agreement below
  ``--min-agreement`` unless ``--force-precision``.
"""

from __future__ import annotations

import logging
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np

from ..core.transforms import Pipeline
from ..store.fusion_folder import FusionSettings
from .reduced_precision import calibration_cells, judged_on_test_cells, letterboxed_batch, recertify

if TYPE_CHECKING:  # imported where a session is made: ONNX Runtime is an optional extra
    import onnxruntime

log = logging.getLogger(__name__)

INT8_FILE = "model_int8.onnx"
# The cells the sensitivity of each convolution is measured on: the first of the calibration cells.
SENSITIVITY_CELLS = 32
# The share of --min-agreement's allowed disagreement that the search allows on the calibration
# cells: the pair's epochs, temperature and weight were chosen on held-out training cells, which
# sit further from a tie than test cells and flip less (module docstring).
SEARCH_DISAGREEMENT_SHARE = 0.5
# What --precision int8 quantizes; benchmark.py --suite int8-profile also times wider choices.
QUANTIZED_OPS = ("Conv",)
QUANTIZATION = (
    "ONNX Runtime quantize_static: QDQ, convolutions only (stems, squeeze-and-excitation and the most sensitive "
    "kept fp32), int8 weights per channel (7-bit range), uint8 activations calibrated (min-max) on the calibration cells"
)


def onnx_probabilities(session, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """Class probabilities of an ONNX Runtime session of an exported model, batch by batch."""
    name = session.get_inputs()[0].name
    return np.concatenate(
        [session.run(None, {name: images[i : i + batch_size]})[0] for i in range(0, len(images), batch_size)]
    ).astype(np.float64)


def cpu_session(path: Path) -> onnxruntime.InferenceSession:
    """An ONNX Runtime session on the CPU, with its default graph optimisations."""
    import onnxruntime

    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def convolutions_kept_fp32(model) -> list[str]:
    """The names of the convolutions :func:`quantize_int8` leaves in fp32 (module docstring) in an
    ONNX model: the stems (no convolution upstream of their input) and the squeeze-and-excitation
    pair (the convolution fed by a global average, and the one it feeds)."""
    nodes = list(model.graph.node)  # one set of node objects: they are compared by identity (names may be empty)
    producer = {output: node for node in nodes for output in node.output}

    def convolution_upstream(tensor: str):
        """The first convolution met walking up from ``tensor`` along every input, or None."""
        stack, seen = [tensor], set()
        while stack:
            node = producer.get(stack.pop())
            if node is None or id(node) in seen:
                continue
            if node.op_type == "Conv":
                return node
            seen.add(id(node))
            stack += list(node.input)
        return None

    pooled = ("ReduceMean", "GlobalAveragePool")
    convolutions = [node for node in nodes if node.op_type == "Conv"]
    squeeze = {id(node) for node in convolutions if getattr(producer.get(node.input[0]), "op_type", None) in pooled}
    kept = []
    for node in convolutions:
        upstream = convolution_upstream(node.input[0])
        if upstream is None or id(node) in squeeze or id(upstream) in squeeze:
            kept.append(node.name)
    return kept


def _quantize_static(
    prepared: Path,
    out: Path,
    calibration: np.ndarray,
    exclude: Sequence[str],
    only: Sequence[str] | None = None,
    op_types: Sequence[str] = QUANTIZED_OPS,
) -> None:
    """ONNX Runtime's static quantization of the ``op_types`` nodes of ``prepared`` (module
    docstring) but ``exclude`` (or of ``only``), activation ranges measured on ``calibration``."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Cells(CalibrationDataReader):
        def __init__(self, name: str, batch_size: int = 16):
            self.batches = iter(
                [{name: calibration[i : i + batch_size]} for i in range(0, len(calibration), batch_size)]
            )

        def get_next(self):
            return next(self.batches, None)

    name = cpu_session(prepared).get_inputs()[0].name
    with quiet_root_logger():  # the quantizer logs advice on the root logger
        quantize_static(
            str(prepared),
            str(out),
            Cells(name),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            reduce_range=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=list(op_types),
            nodes_to_exclude=list(exclude),
            **({"nodes_to_quantize": list(only)} if only is not None else {}),
        )


def orientations(images: np.ndarray) -> np.ndarray:
    """Each N x 3 x S x S image in its 8 orientations (4 quarter turns, each also mirrored): more
    inputs to measure agreement on from the same cells, which lie every way under a microscope."""
    turns = [np.rot90(images, k, axes=(2, 3)) for k in range(4)]
    return np.ascontiguousarray(np.concatenate(turns + [turn[..., ::-1] for turn in turns]))


def top1_agreement(session, images: np.ndarray, reference: np.ndarray) -> float:
    """The share of ``images`` whose top class under ``session`` is that of ``reference`` probabilities."""
    return float(np.mean(onnx_probabilities(session, images).argmax(axis=1) == reference.argmax(axis=1)))


def rank_by_sensitivity(prepared: Path, candidates: Sequence[str], cells: np.ndarray, scratch: Path) -> list[str]:
    """``candidates`` (convolution names), the one whose quantization alone moves the fused
    probabilities of ``cells`` most (mean KL divergence from fp32) first."""
    reference = onnx_probabilities(cpu_session(prepared), cells)
    divergence = {}
    for done, name in enumerate(candidates, 1):
        _quantize_static(prepared, scratch / "alone.onnx", cells, (), only=[name])
        divergence[name] = mean_kl_divergence(reference, onnx_probabilities(cpu_session(scratch / "alone.onnx"), cells))
        if done % 10 == 0 or done == len(candidates):
            log.info("int8: %d of %d convolutions quantized alone", done, len(candidates))
    return sorted(candidates, key=lambda name: -divergence[name])  # stable: ties keep the graph's order


@dataclass
class MixedPrecision:
    """Which convolutions an int8 model leaves in fp32, and how they were chosen (module docstring)."""

    convolutions: int
    kept_fp32: list[str]
    by_rule: int
    search: list[tuple[int, float]]  # (convolutions kept beyond the rule, top-1 agreement on the oriented cells)
    target: float | None

    def to_dict(self) -> dict:
        return {
            "convolutions": self.convolutions,
            "kept_fp32": self.kept_fp32,
            "kept_by_rule": self.by_rule,
            "search": [list(step) for step in self.search],
            "target_agreement": self.target,
        }


def quantize_int8(
    fp32_path: Path,
    int8_path: Path,
    calibration: np.ndarray,
    min_agreement: float | None = None,
    op_types: Sequence[str] = QUANTIZED_OPS,
) -> MixedPrecision:
    """Write ``int8_path``: ``fp32_path`` statically quantized (module docstring), its activation
    ranges measured on ``calibration`` (letterboxed uint8 cells). With ``min_agreement``, the most
    sensitive convolutions stay fp32 too (:func:`keep_sensitive_convolutions`). ``op_types``: the
    kinds of node quantized (the stems and squeeze-and-excitation convolutions stay fp32 whatever
    it names)."""
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(prefix=".quantize.", dir=int8_path.parent) as private:
        # Shapes inferred and the graph simplified first, as ONNX Runtime's quantizer asks.
        prepared = Path(private) / "prepared.onnx"
        with quiet_root_logger():
            quant_pre_process(str(fp32_path), str(prepared))
        model = onnx.load(str(prepared))
        kept = convolutions_kept_fp32(model)
        convolutions = [node.name for node in model.graph.node if node.op_type == "Conv"]
        _quantize_static(prepared, int8_path, calibration, kept, op_types=op_types)
        chosen = MixedPrecision(len(convolutions), kept, len(kept), [], None)
        if min_agreement is not None:
            chosen.target = 1.0 - SEARCH_DISAGREEMENT_SHARE * (1.0 - min_agreement)
            candidates = [name for name in convolutions if name not in kept]
            keep_sensitive_convolutions(prepared, int8_path, calibration, candidates, chosen, op_types)
        return chosen


def keep_sensitive_convolutions(
    prepared: Path,
    int8_path: Path,
    calibration: np.ndarray,
    candidates: Sequence[str],
    chosen: MixedPrecision,
    op_types: Sequence[str] = QUANTIZED_OPS,
) -> None:
    """Rewrite ``int8_path`` with the 1, 2, 4, ... convolutions of ``candidates`` that are most
    sensitive (:func:`rank_by_sensitivity`) kept fp32 too, until it agrees with fp32 on
    ``chosen.target`` of the calibration cells' 8 orientations (the last one tried stays when
    none does); each step is recorded in ``chosen``."""
    oriented = orientations(calibration)
    reference = onnx_probabilities(cpu_session(prepared), oriented)
    chosen.search.append((0, top1_agreement(cpu_session(int8_path), oriented, reference)))
    if chosen.search[-1][1] >= chosen.target:
        return
    by_rule = list(chosen.kept_fp32)
    ranking = rank_by_sensitivity(prepared, candidates, calibration[:SENSITIVITY_CELLS], prepared.parent)
    extra = 1
    while extra < len(ranking):  # doubling: a few quantizations, never one per count
        chosen.kept_fp32 = by_rule + ranking[:extra]
        _quantize_static(prepared, int8_path, calibration, chosen.kept_fp32, op_types=op_types)
        chosen.search.append((extra, top1_agreement(cpu_session(int8_path), oriented, reference)))
        log.info(
            "int8: %d more convolution(s) in fp32: agreement %.4f on the oriented calibration cells", *chosen.search[-1]
        )
        if chosen.search[-1][1] >= chosen.target:
            return
        extra *= 2


def mean_kl_divergence(reference: np.ndarray, other: np.ndarray) -> float:
    """Mean over rows of KL(reference || other), two arrays of class probabilities."""
    return float(np.mean(np.sum(reference * (np.log(reference + 1e-12) - np.log(other + 1e-12)), axis=1)))


@contextmanager
def quiet_root_logger() -> Iterator[None]:
    """Raise the root logger to ERROR for the block: third-party warnings logged there are not ours to show."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def int8_model(
    folder: Path,
    runs: Path,
    settings: FusionSettings,
    folds: Sequence[int],
    pipeline: Pipeline,
    decision: dict,
    min_agreement: float = 0.99,
    force: bool = False,
) -> dict:
    """Write ``folder/model_int8.onnx`` from ``folder/model.onnx`` and return model.json's
    ``int8`` block: how it was made, its comparison with fp32 on the folds' test cells, and
    ``decision`` re-certified on its own probabilities (module docstring)."""
    split, calibration_paths, calibration_labels = calibration_cells(runs, settings, folds)
    calibration_images = letterboxed_batch(pipeline, calibration_paths)
    log.info("quantizing to int8, activations calibrated on %d %s cells", len(calibration_paths), split)
    mixed = quantize_int8(folder / "model.onnx", folder / INT8_FILE, calibration_images, min_agreement)
    fp32, int8 = cpu_session(folder / "model.onnx"), cpu_session(folder / INT8_FILE)

    def both(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return onnx_probabilities(fp32, images), onnx_probabilities(int8, images)

    comparison = judged_on_test_cells("int8", both, runs, settings, folds, pipeline, min_agreement, force)
    block = {
        "file": INT8_FILE,
        "quantization": QUANTIZATION,
        "calibration": {"split": split, "cells": len(calibration_paths), "folds": list(folds)},
        "fp32_convolutions": mixed.to_dict(),
        "test": comparison.to_dict(),
    }
    if decision:
        block["decision"] = recertify(decision, onnx_probabilities(int8, calibration_images), calibration_labels)
    return block
