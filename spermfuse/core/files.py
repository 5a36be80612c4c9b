"""Atomic writes and safe loading: nothing half-written, nothing unpickled from strangers."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from .errors import SpermfuseError


class CheckpointError(SpermfuseError):
    """A checkpoint or output file that cannot be used; the message names the file."""


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over ``path``.

    A crash at any moment leaves either the old file or the new one, never a partial one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_current_umask())  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` as UTF-8, atomically (:func:`atomic_write_bytes`)."""
    atomic_write_bytes(path, text.encode("utf-8"))


# A cell starting with one of these runs as a formula in Excel and LibreOffice (CSV injection).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(cell: object) -> object:
    """A text cell that a spreadsheet would run as a formula, prefixed with ``'`` (numbers kept).

    A text cell that already starts with ``'`` gets one more, so :func:`read_csv` undoes
    exactly what was added."""
    if not isinstance(cell, str) or not cell.startswith(FORMULA_STARTS + ("'",)):
        return cell
    try:
        float(cell)
        return cell  # a negative number, not a formula
    except ValueError:
        return "'" + cell


def csv_text(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """CSV through the csv module, so a comma or quote inside a value (a file name) stays one
    field; spreadsheet-safe (:func:`spreadsheet_safe`)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([spreadsheet_safe(cell) for cell in header])
    writer.writerows([spreadsheet_safe(cell) for cell in row] for row in rows)
    return buffer.getvalue()


def read_csv(path: str | os.PathLike) -> list[dict[str, str]]:
    """The rows of a CSV that spermfuse wrote, the ``'`` of :func:`spreadsheet_safe` removed."""
    with open(path, newline="", encoding="utf-8-sig") as handle:
        return [{_unescape(key): _unescape(value) for key, value in row.items()} for row in csv.DictReader(handle)]


def _unescape(cell: str | None) -> str | None:
    return cell[1:] if isinstance(cell, str) and cell.startswith("'") else cell


def atomic_write_csv(path: str | os.PathLike, header: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    """Write a CSV file atomically, its cells guarded against formula injection (:func:`csv_text`)."""
    atomic_write_text(path, csv_text(header, rows))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_savez(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    """``np.savez`` of ``arrays`` that never leaves a half-written file (:func:`atomic_write_bytes`)."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue())


def safe_np_load(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """np.load with ``allow_pickle=False``, fully read into a dict."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    except FileNotFoundError:
        raise CheckpointError(f"{path}: file not found") from None
    except Exception as error:
        raise CheckpointError(f"{path}: not a readable .npz file ({error})") from None
