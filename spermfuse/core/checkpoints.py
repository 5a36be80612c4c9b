"""PyTorch checkpoints on disk: written atomically, read without running code (``torch.load``
with ``weights_only=True``, and a safetensors reader of its own). Apart from ``files.py`` so
that the numpy-only code (logits files, fusion, metrics) does not load torch.
"""

from __future__ import annotations

import io
import json
import math
import os
import pickle
import struct
import zipfile
from pathlib import Path
from typing import Any

import torch

from .files import CheckpointError, atomic_write_bytes


def atomic_torch_save(path: str | os.PathLike, obj: Any) -> None:
    """``torch.save`` that never leaves a half-written file (:func:`atomic_write_bytes`)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def safe_torch_load(path: str | os.PathLike) -> Any:
    """torch.load with ``weights_only=True``: tensors and plain containers only, no code."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: file not found") from None
    except MemoryError:
        raise
    except Exception as error:  # unpickling refusal, corruption, truncation
        # A refused object names the global (class or function) it would import; bytes that are
        # no pickle at all fail the same way but on an opcode, and are reported as corrupt below.
        if isinstance(error, pickle.UnpicklingError) and "weights_only" in str(error) and "global" in str(error):
            # torch's own text advises weights_only=False, which would run the file's code
            raise CheckpointError(
                f"{path}: refused: it holds objects other than tensors, which loading would have to run as code"
            ) from None
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if not zipfile.is_zipfile(path):
            first_line = "not a zip archive, as torch.save writes"
        elif "weights_only" in first_line:  # never pass on torch's advice to load with weights_only=False
            first_line = type(error).__name__
        raise CheckpointError(f"{path}: not a loadable PyTorch checkpoint ({first_line})") from None


SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


SAFETENSORS_MAX_HEADER = 100_000_000  # bytes; the reference reader's limit


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _safetensors_entry(name: str, info: object, refuse) -> tuple[torch.dtype, list[int], int, int]:
    """(dtype, shape, begin, end) of one header entry; sizes and offsets must be integers >= 0."""
    if not isinstance(info, dict) or info.get("dtype") not in SAFETENSORS_DTYPES:
        raise refuse(f"entry {name!r} lacks a known dtype, a shape or its offsets")
    shape, offsets = info.get("shape"), info.get("data_offsets")
    if not isinstance(shape, list) or not isinstance(offsets, list) or len(offsets) != 2:
        raise refuse(f"entry {name!r} lacks a known dtype, a shape or its offsets")
    if not all(_is_count(size) for size in shape) or not all(_is_count(offset) for offset in offsets):
        raise refuse(f"entry {name!r}: sizes and offsets must be whole numbers >= 0 (shape {shape}, offsets {offsets})")
    return SAFETENSORS_DTYPES[info["dtype"]], shape, offsets[0], offsets[1]


def read_safetensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a ``.safetensors`` file, read as data: the format holds no code to run.

    Layout: an 8-byte little-endian header length, a JSON header mapping each name to its
    ``dtype``, ``shape`` and ``data_offsets`` (begin, end) in the byte buffer that follows.
    Every entry is checked against the buffer, so a truncated file is refused, not half-read.
    """
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{path}: file not found") from None

    def refuse(why: str) -> CheckpointError:
        return CheckpointError(f"{path}: not a readable .safetensors file ({why})")

    if len(data) < 8:
        raise refuse("shorter than its header")
    (header_length,) = struct.unpack("<Q", data[:8])
    if 8 + header_length > len(data) or header_length > SAFETENSORS_MAX_HEADER:
        raise refuse("the header runs past the end of the file")
    try:
        header = json.loads(data[8 : 8 + header_length])
    except (ValueError, RecursionError):
        raise refuse("the header is not JSON") from None
    if not isinstance(header, dict):
        raise refuse("the header is not a JSON object")
    buffer = memoryview(data)[8 + header_length :]
    spans = []
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype, shape, begin, end = _safetensors_entry(name, info, refuse)
        size = math.prod(shape) * torch.empty(0, dtype=dtype).element_size()
        if not 0 <= begin <= end <= len(buffer) or end - begin != size:
            raise refuse(f"the bytes of {name!r} do not fit its shape {shape} (a truncated file?)")
        spans.append((begin, end, name))
        flat = torch.frombuffer(bytearray(buffer[begin:end]), dtype=dtype) if size else torch.empty(0, dtype=dtype)
        tensors[name] = flat.reshape(shape)
    spans.sort()
    for (_, end, first), (begin, _, second) in zip(spans, spans[1:]):
        if begin < end:
            raise refuse(f"the bytes of {first!r} and {second!r} overlap")
    return tensors
