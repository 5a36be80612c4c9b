"""The fused model as one deployable file: a ``torch.export`` program plus a JSON of its preprocessing.

The exported graph takes a batch of letterboxed uint8 RGB images (N, 3, S, S) and returns
the fused class probabilities (N, C). Everything after the letterbox happens inside it:
scaling to [0, 1], each member's own normalisation, test-time flips when the members were
evaluated with them, the weighted sum of each fold's members (weights already divided by
the temperatures when fusion was calibrated), the mean over folds and the softmax, which
is exactly what ``fuse.py --predict`` computes. What happens before it (the letterbox, and
for method B the Otsu segmentation) is described in ``model.json`` so that a client without
spermfuse can repeat it.
"""

from __future__ import annotations

import io
import json
import logging
import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import torch

from .. import __version__
from ..core.errors import FusionError, SpermfuseError
from ..core.files import atomic_write_bytes, atomic_write_json, atomic_write_text
from ..core.fused_model import Classifier, FusedModel, check_same_classes
from ..flags import setting
from ..runtime import git_commit
from ..store.fusion_folder import FusionSettings, fused_folds
from ..store.output_folder import write_folder
from ..store.run_folder import data_root_of_run, fold_folder, load_fold_members
from . import sample_report
from .bf16 import BF16_FILE, bf16_model
from .deployed import HELD_OUT_FILE, write_held_out
from .model_card import MODEL_CARD, model_card, reduced_precision_card_section
from .quantize import INT8_FILE, int8_model

log = logging.getLogger(__name__)


class ExportError(SpermfuseError):
    """Runs that cannot be exported together; the message names the file and the difference."""


def check_exportable(folds: Sequence[Sequence[Classifier]]) -> None:
    """One input size, one preprocessing per member across folds, one class list."""
    reference = folds[0]
    sizes = {c.spec.img_size for fold in folds for c in fold}
    if len(sizes) != 1:
        raise ExportError(f"the members test at different sizes {sorted(sizes)}; an exported pair takes one input size")
    fills = {tuple(c.pipeline.fill) for fold in folds for c in fold}
    if len(fills) != 1:
        raise ExportError(f"the members pad with different colours {sorted(fills)}; export them separately")
    check_same_classes(folds)  # every member of every fold, not only each member against its fold-1 self
    for fold in folds:
        for classifier, first in zip(fold, reference):
            if classifier.spec != first.spec or classifier.tta != first.tta:
                raise ExportError(
                    f"{classifier.source}: preprocessing differs from {first.source} (same model, other fold); retrain or export one fold"
                )


def _traced_input(img_size: int, max_batch: int) -> tuple[tuple[torch.Tensor], tuple[dict]]:
    """An example uint8 batch and the dynamic batch dimension both exporters trace with."""
    example = torch.zeros(2, 3, img_size, img_size, dtype=torch.uint8)
    return (example,), ({0: torch.export.Dim("batch", min=1, max=max_batch)},)


def export_program(module: FusedModel, img_size: int, max_batch: int = 1024, bf16: bool = False) -> bytes:
    """``torch.export`` of ``module`` with a dynamic batch, saved to bytes; with ``bf16`` traced
    under the CPU's bf16 autocast (bf16.py: the program then runs only under it)."""
    module.eval()
    example, dynamic = _traced_input(img_size, max_batch)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        program = torch.export.export(module, example, dynamic_shapes=dynamic)
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    return buffer.getvalue()


@contextmanager
def quiet_loggers(*names: str) -> Iterator[None]:
    """Raise the named libraries' loggers to WARNING inside the block."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def onnx_available(runtime: bool = False) -> bool:
    """The optional extra (``pip install .[export]``: onnx, onnxscript, onnxruntime) is installed:
    what writing model.onnx needs, and with ``runtime`` what running it needs too."""
    import importlib.util

    names = ("onnx", "onnxscript", "onnxruntime") if runtime else ("onnx", "onnxscript")
    return all(importlib.util.find_spec(name) is not None for name in names)


def export_onnx(module: FusedModel, img_size: int, path: Path, max_batch: int = 1024) -> None:
    """``module`` as ONNX (torch's dynamo exporter, dynamic batch), written atomically to ``path``."""
    module.eval()
    example, dynamic = _traced_input(img_size, max_batch)
    with torch.no_grad(), quiet_loggers("onnx_ir", "onnxscript"):  # they log every optimisation pass at INFO
        program = torch.onnx.export(module, example, dynamic_shapes=dynamic, dynamo=True, verbose=False)
    with tempfile.TemporaryDirectory(
        prefix=f".{path.name}.", dir=path.parent
    ) as private:  # never a fixed, plantable name
        partial = Path(private) / path.name
        program.save(str(partial))
        os.replace(partial, path)


def describe(
    folds: Sequence[Sequence[Classifier]],
    names: Sequence[str],
    fold_ids: Sequence[int],
    weights: Sequence[Sequence[float]],
) -> dict:
    """model.json: what the client must do before the graph, and what the graph does."""
    first = folds[0]
    pipeline = first[0].pipeline
    preprocess = [repr(step) for step in pipeline.preprocess]
    return {
        "format": "spermfuse fused model, torch.export program (model.pt2)",
        "input": {"dtype": "uint8", "layout": "N x 3 x S x S, RGB", "size": pipeline.img_size},
        "output": "N x C class probabilities (softmax of the fused logits, averaged over folds)",
        "classes": first[0].classes,
        "preprocessing": {
            "steps": ["resize_longer_side", *preprocess, "pad_to_square"],
            "resize": "bilinear, antialiased when shrinking (PIL Image.resize with BILINEAR), longer side to size, aspect kept, each side rounded",
            "pad": "centre on a size x size canvas at ((size - w) // 2, (size - h) // 2)",
            "fill": list(pipeline.fill),
            "otsu": preprocess[0] if preprocess else None,
        },
        # The letterbox as data (the first member's record; the graph normalises each member's
        # copy itself): what fuse.py --predict --deployed rebuilds.
        "pipeline": first[0].spec.to_dict(),
        "inside_graph": {
            "scale": "x / 255",
            "mean": [list(c.pipeline.normalize.mean) for c in first],
            "std": [list(c.pipeline.normalize.std) for c in first],
            "tta": [c.tta for c in first],
        },
        "models": list(names),
        "folds": list(fold_ids),
        "weights_per_fold": [list(w) for w in weights],
        "fusion": "p = softmax(mean over folds of sum_i w[fold][i] * z_i), w already divided by the member's temperature when calibrated",
        "spermfuse_version": __version__,
        "commit": git_commit(),
    }


def export_fused(
    folds: Sequence[Sequence[Classifier]],
    names: Sequence[str],
    fold_ids: Sequence[int],
    weights: Sequence[Sequence[float]],
    out: Path,
    decision: dict | None = None,
    bf16: bool = False,
) -> Path:
    """Write ``out/model.pt2``, ``out/model.onnx`` (with the ONNX extra), with ``bf16``
    ``out/model_bf16.pt2``, and ``out/model.json`` (which lists the model files); returns ``out``.
    fuse.py builds ``out`` as a unit (output_folder.py)."""
    check_exportable(folds)
    module = FusedModel(folds, weights)
    size = folds[0][0].pipeline.img_size
    atomic_write_bytes(out / "model.pt2", export_program(module, size))
    files = ["model.pt2"]
    if bf16:
        atomic_write_bytes(out / BF16_FILE, export_program(module, size, bf16=True))
        files.append(BF16_FILE)
    if onnx_available():
        export_onnx(module, size, out / "model.onnx")
        files.append("model.onnx")
    else:
        log.info("model.onnx not written: the ONNX extra is not installed (pip install .[export])")
    description = describe(folds, names, fold_ids, weights) | {"files": files}
    if decision:  # the certified referral threshold and conformal sets of a one-fold export, as data for the client
        description["decision"] = decision
    atomic_write_json(out / "model.json", description)
    return out


def exported_files(folder: Path) -> set[str]:
    """The files an export folder written before manifests held (what --overwrite may replace)."""
    return {"model.pt2", "model.json", "model.onnx", MODEL_CARD, INT8_FILE, BF16_FILE, HELD_OUT_FILE}


@dataclass
class Precision:
    """``fuse.py --export --precision``: the deployed model's arithmetic, and the guard of a reduced one."""

    precision: str = setting(
        "fp32",
        "--export: also write an int8 model (quantize.py; ONNX Runtime) or a bf16 one (bf16.py; PyTorch, fastest on "
        "CPUs with AMX); --predict --deployed DIR: run DIR's model of that precision",
        "export",
        choices=["fp32", "int8", "bf16"],
    )
    min_agreement: float = setting(
        0.99, "--precision int8/bf16: the least top-1 agreement with fp32 on the test cells", "export"
    )
    force_precision: bool = setting(False, "--precision int8/bf16: write it even below --min-agreement", "export")


def exported_held_out(
    runs: Path, settings: FusionSettings, folds: Sequence[int]
) -> sample_report.HeldOutConfusion | None:
    """The cells ``--predict --deployed --samples`` corrects with (deployed.py); None when the
    exported model has none (the average of folds without a shared calibration holdout)."""
    try:
        return sample_report.deployed_held_out(runs, settings, folds)
    except FusionError:
        return None


def write_export(
    runs: Path,
    settings: FusionSettings,
    folds: Sequence[int],
    out: Path,
    overwrite: bool,
    command: str,
    precision: Precision | None = None,
) -> None:
    """``fuse.py --export DIR``: the fused model of ``folds`` (model.pt2, model.json) with its model
    card, written as a unit. The certified rules travel with it when they hold for ``folds``: one
    fold's pair, or the folds' average certified on a shared calibration holdout. With
    ``--precision int8`` (or bf16) also model_int8.onnx (model_bf16.pt2), its comparison with fp32 and its own
    rules."""
    precision = precision or Precision()
    if not 0.0 < precision.min_agreement <= 1.0:
        raise ExportError(f"--min-agreement {precision.min_agreement}: give a share in (0, 1], e.g. 0.99")
    if precision.precision == "int8" and not onnx_available(runtime=True):
        raise ExportError("--precision int8 quantizes the ONNX model: install the export extra (pip install .[export])")
    settings.check_inputs(runs, folds)
    decision = settings.decision(folds) if settings.certified_for(folds) else {}
    if not settings.certified_for(folds):
        log.warning(
            "the referral threshold and prediction sets are certified per fold: export --fold K to carry them in model.json "
            "(or train with --cal-holdout F, for the average of the folds)"
        )
    members = load_fold_members(runs, settings.models, folds, "cpu")
    weights = settings.prediction_weights(folds)
    tested = fused_folds(runs, settings.models, folds, weights)  # for the model card
    size = members[0][0].pipeline.img_size
    card = model_card(runs, settings, folds, tested, size, decision or None, command)
    held_out = exported_held_out(runs, settings, folds)
    pipeline = members[0][0].pipeline
    with write_folder(out, "--export", overwrite, exported_files) as folder:
        export_fused(members, settings.models, folds, weights, folder, decision or None, precision.precision == "bf16")
        description = json.loads((folder / "model.json").read_text())
        if precision.precision != "fp32":
            make = int8_model if precision.precision == "int8" else bf16_model
            block = make(
                folder, runs, settings, folds, pipeline, decision, precision.min_agreement, precision.force_precision
            )
            # export_fused already listed the bf16 program (it traces it beside the fp32 one).
            if block["file"] not in description["files"]:
                description["files"].append(block["file"])
            description[precision.precision] = block
            card += reduced_precision_card_section(precision.precision, block)
        runnable = {"model.onnx", BF16_FILE} & set(description["files"])  # what --predict --deployed runs
        if held_out is not None and runnable:
            cells_root = data_root_of_run(fold_folder(runs / settings.models[0], folds[0]))
            tuned_on_test = settings.select == "test"
            description["held_out"] = write_held_out(folder, held_out, tuned_on_test, cells_root, pipeline)
            description["files"].append(HELD_OUT_FILE)
        atomic_write_json(folder / "model.json", description)
        atomic_write_text(folder / MODEL_CARD, card)
    log.info(
        "wrote %s: %s (input uint8 N x 3 x %d x %d, output probabilities), model.json and %s; models %s, folds %s",
        out,
        ", ".join(description["files"]),
        size,
        size,
        MODEL_CARD,
        settings.models,
        folds,
    )
