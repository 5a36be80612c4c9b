"""Output folders written as a unit, and never into the inputs (docs/GUARANTEES.md, rules 1 and 2).

A fusion, report, explanation or export folder is built in a temporary sibling
(``.<name>.<pid>.<random>.partial``), given a ``manifest.json`` that lists every file with
its SHA-256, and renamed into place. An existing folder is first renamed aside and deleted
only once the new one is in place, so a kill at any moment leaves the old folder or the
new one, never a mix; a kill between the two renames leaves the old one aside, and the
next writer or reader puts it back. A refused command has written nothing.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Mapping

from ..core.errors import ConfigError
from ..core.files import CheckpointError, atomic_write_json, file_sha256
from .lock import process_alive

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "spermfuse output folder manifest"


def refuse_overlap(output: Path, flag: str, inputs: Mapping[str, Path]) -> None:
    """Refuse an output folder (or file) equal to, inside, or containing any input (rule 2)."""
    out = Path(output).resolve()
    for input_flag, path in inputs.items():
        source = Path(path).resolve()
        if out == source or out.is_relative_to(source) or source.is_relative_to(out):
            raise ConfigError(
                f"{flag} {output}: is, lies inside or contains {input_flag} {path}; write the outputs to a folder of their own"
            )


def check_plain_name(flag: str, name: str, example: str) -> None:
    """Refuse a folder name that is empty or leads elsewhere (``a/b``, ``..``): ``--name`` names
    a folder inside the one the command writes to."""
    if not name.strip() or Path(name).name != name or name in (".", ".."):
        raise ConfigError(f"{flag} {name!r}: give a plain folder name (no '/'), e.g. {example}")


def _files(folder: Path) -> list[str]:
    return sorted(
        p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST_NAME
    )


def write_manifest(folder: Path) -> None:
    """``folder/manifest.json``: every file below ``folder`` with its SHA-256; written last."""
    files = {name: file_sha256(folder / name) for name in _files(folder)}
    atomic_write_json(folder / MANIFEST_NAME, {"format": MANIFEST_FORMAT, "files": files})


def read_manifest(folder: Path) -> dict[str, str] | None:
    """The manifest's ``{file: sha256}``, or None when the folder has none (written before v0.3)."""
    path = folder / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
        files = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError):
        raise CheckpointError(f"{path}: not a readable manifest; the folder is damaged, write it again") from None
    if not isinstance(files, dict):
        raise CheckpointError(f"{path}: not a readable manifest; the folder is damaged, write it again")
    return files


def verify_folder(folder: Path) -> None:
    """Refuse a folder whose files differ from its manifest (edited, mixed or half-copied).

    A folder without one is refused too: deleting the manifest must not switch the check off."""
    recover(folder)
    files = read_manifest(folder)
    if files is None:
        raise CheckpointError(
            f"{folder}: has no {MANIFEST_NAME}, so its files cannot be checked (deleted, or written by a spermfuse "
            "older than v0.2); write the folder again with the command that made it"
        )
    present = set(_files(folder))
    extra, missing = present - set(files), set(files) - present
    changed = [name for name in sorted(present & set(files)) if file_sha256(folder / name) != files[name]]
    if extra or missing or changed:
        what = "; ".join(
            part
            for part in (
                f"not listed: {', '.join(sorted(extra))}" if extra else "",
                f"missing: {', '.join(sorted(missing))}" if missing else "",
                f"changed: {', '.join(changed)}" if changed else "",
            )
            if part
        )
        raise CheckpointError(
            f"{folder}: does not match its {MANIFEST_NAME} ({what}); write the folder again with the command that made it"
        )


def _siblings(final: Path, suffix: str) -> list[Path]:
    return sorted(final.parent.glob(f".{final.name}.*.{suffix}")) if final.parent.is_dir() else []


def _pid_of(sibling: Path) -> int | None:
    parts = sibling.name.split(".")
    return int(parts[-3]) if len(parts) >= 4 and parts[-3].isdigit() else None


def recover(final: Path) -> None:
    """Put back an old folder left aside by a kill between the two renames; drop dead writers' partial folders."""
    if not final.exists():
        aside = [p for p in _siblings(final, "old") if (p / final.name).is_dir()]
        if aside:
            os.rename(aside[-1] / final.name, final)
            log.warning("%s: put back the previous folder (an earlier write was interrupted)", final)
    for partial in _siblings(final, "partial"):
        pid = _pid_of(partial)
        if pid is not None and pid != os.getpid() and not process_alive(pid):
            shutil.rmtree(partial, ignore_errors=True)
    for old in _siblings(final, "old"):
        pid = _pid_of(old)
        if pid is not None and pid != os.getpid() and not process_alive(pid):
            shutil.rmtree(old, ignore_errors=True)


def check_not_a_file(folder: Path, flag: str) -> None:
    """Refuse an output folder that exists as a file."""
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{flag} {folder}: is a file, not a folder; choose a folder")


def check_replaceable(
    final: Path, flag: str, overwrite: bool, legacy_owned: Callable[[Path], set[str]] | None = None
) -> None:
    """Refuse to replace a non-empty folder without ``overwrite``, or one holding files this
    command did not write (not in its manifest, or for a folder without one, not in ``legacy_owned``)."""
    recover(final)
    if not final.exists():
        return
    check_not_a_file(final, flag)
    present = set(_files(final))
    if not present and not any(final.iterdir()):
        return
    if not overwrite:
        raise ConfigError(f"{flag} {final}: folder exists and is not empty; choose another or add --overwrite")
    owned = read_manifest(final)
    owned_names = set(owned) if owned is not None else (legacy_owned(final) if legacy_owned is not None else set())
    foreign = sorted(present - owned_names)
    if foreign:
        raise ConfigError(
            f"{flag} {final}: holds files spermfuse did not write there ({', '.join(foreign[:3])}{' ...' if len(foreign) > 3 else ''}); "
            "--overwrite replaces only its own outputs: move them or choose another folder"
        )


def check_writable(path: Path, flag: str) -> None:
    """Refuse, before any work, an output whose nearest existing folder cannot take a new file
    (read-only file system, no permission): the error would otherwise come after the work."""
    folder = Path(path).parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise ConfigError(
            f"{flag} {path}: {folder} is not writable ({error.strerror}); choose a writable place"
        ) from None


@contextmanager
def write_folder(
    final: Path, flag: str, overwrite: bool = False, legacy_owned: Callable[[Path], set[str]] | None = None
) -> Iterator[Path]:
    """``with write_folder(out, "--export", overwrite) as staging:`` write into ``staging``; on
    success it gets a manifest and replaces ``out`` as a unit; on any error nothing changes."""
    final = Path(final)
    check_replaceable(final, flag, overwrite, legacy_owned)
    check_writable(final, flag)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.{os.getpid()}.", suffix=".partial", dir=final.parent))
    try:
        yield staging
        write_manifest(staging)
        _swap(staging, final)
    except OSError as error:
        if error.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise ConfigError(
            f"{flag} {final}: the disk is full ({error.strerror}); nothing was written: free space or choose another place"
        ) from None
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _swap(staging: Path, final: Path) -> None:
    aside = None
    if final.exists():
        aside = Path(tempfile.mkdtemp(prefix=f".{final.name}.{os.getpid()}.", suffix=".old", dir=final.parent))
        os.rename(final, aside / final.name)
    os.rename(staging, final)
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)


def move_aside(folder: Path, keep: set[str]) -> Path | None:
    """Move the contents of ``folder`` (except the names in ``keep``) into a hidden sibling;
    :func:`discard` deletes it once the new contents are complete. None when there was nothing."""
    for old in _siblings(folder, "old"):  # left by a killed writer
        pid = _pid_of(old)
        if pid is not None and pid != os.getpid() and not process_alive(pid):
            shutil.rmtree(old, ignore_errors=True)
    children = [child for child in folder.iterdir() if child.name not in keep] if folder.is_dir() else []
    if not children:
        return None
    aside = Path(tempfile.mkdtemp(prefix=f".{folder.name}.{os.getpid()}.", suffix=".old", dir=folder.parent))
    for child in children:
        os.rename(child, aside / child.name)
    return aside


def discard(aside: Path | None) -> None:
    """Delete what :func:`move_aside` moved aside (nothing when it moved nothing)."""
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)
