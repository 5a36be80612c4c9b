"""Downloading catalogued checkpoints into a verified cache; the only code that uses the network.

Only ``--pretrained`` gets here. A file is streamed to a temporary name in the cache folder
while its SHA-256 is computed, and renamed into place only when it is complete and matches
the catalogue's digest; a failure at any point leaves nothing behind. Where the catalogue
knows no digest, the first download's is recorded beside the file (``<file>.sha256``) and
every later use checks it: a cached file that changed is an error, never a silent reload.
Later runs read the cache and work offline.
"""
from __future__ import annotations

import hashlib
import http.client
import logging
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable

from .checkpoint import atomic_write_text
from .errors import SpermfuseError
from .models.catalogue import WeightsEntry

log = logging.getLogger(__name__)

CHUNK = 1 << 20
Progress = Callable[[int, "int | None"], None]  # (bytes so far, total bytes or None)


class DownloadError(SpermfuseError):
    """A download or cached file that cannot be used; the message names it and the way out."""


def cache_root() -> Path:
    """``$SPERMFUSE_CACHE`` or ``~/.cache/spermfuse``: the data sets and the weights live under it."""
    return Path(os.environ.get("SPERMFUSE_CACHE", Path.home() / ".cache" / "spermfuse"))


def weights_cache() -> Path:
    return cache_root() / "weights"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _record_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _expected_digest(path: Path, entry: WeightsEntry) -> tuple[str | None, str]:
    """(digest the file must have (or start with), where that digest comes from)."""
    if entry.sha256:
        return entry.sha256.lower(), "the catalogue's"
    record = _record_path(path)
    if record.exists():
        return record.read_text().split()[0], f"the one recorded at its first download ({record}; delete it too to accept a new file)"
    return None, ""


def verify_cached(path: Path, entry: WeightsEntry) -> None:
    """Refuse a cached file whose SHA-256 differs from the catalogue's or the recorded one."""
    expected, origin = _expected_digest(path, entry)
    actual = file_sha256(path)
    if expected is None:  # placed in the cache by hand: trust it from now on
        atomic_write_text(_record_path(path), f"{actual}  {entry.url}\n")
        log.info("%s: no digest known; recorded %s", path, actual)
    elif not actual.startswith(expected):
        raise DownloadError(
            f"{path}: SHA-256 {actual[:16]}... differs from {origin} {expected[:16]}...; "
            "the cached file changed or is corrupt: delete it to download it again"
        )


def _stream(url: str, handle, progress: Progress | None) -> str:
    """Copy ``url`` into ``handle``; returns the SHA-256 of what arrived. Short reads are errors."""
    digest = hashlib.sha256()
    with urllib.request.urlopen(url, timeout=60) as response:
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        done = 0
        try:
            while chunk := response.read(CHUNK):
                handle.write(chunk)
                digest.update(chunk)
                done += len(chunk)
                if progress is not None:
                    progress(done, total)
        except http.client.IncompleteRead as error:
            done += len(error.partial)
    if total is not None and done != total:
        raise DownloadError(f"{url}: the download ended after {done} of {total} bytes; nothing was kept, try again")
    return digest.hexdigest()


def download(entry: WeightsEntry, folder: Path, progress: Progress | None = None) -> Path:
    """Download ``entry`` into ``folder`` (verified, atomically); returns the file's path."""
    path = folder / entry.file_name
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(prefix=f".{entry.file_name}.", suffix=".part", dir=folder)
    except OSError as error:
        raise DownloadError(f"{folder}: the weights cache is not writable ({error.strerror}); set $SPERMFUSE_CACHE to move it") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            log.info("downloading %s %s from %s", entry.arch, entry.tag, entry.url)
            actual = _stream(entry.url, handle, progress)
            handle.flush()
            os.fsync(handle.fileno())
        expected, origin = _expected_digest(path, entry)
        if expected is not None and not actual.startswith(expected):
            raise DownloadError(
                f"{entry.url}: SHA-256 {actual[:16]}... differs from {origin} {expected[:16]}...; "
                "nothing was kept (a wrong mirror or a corrupted transfer)"
            )
        if expected is None:
            atomic_write_text(_record_path(path), f"{actual}  {entry.url}\n")
        os.replace(temporary, path)
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", None) or getattr(error, "strerror", None) or type(error).__name__
        raise DownloadError(
            f"{entry.arch} --pretrained {entry.tag}: could not download {entry.url} ({reason}); "
            "download it elsewhere and pass --weights PATH" + (" --padding same" if entry.padding == "same" else "")
        ) from None
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    log.info("saved %s (SHA-256 %s)", path, actual)
    return path


def fetch(entry: WeightsEntry, progress: Progress | None = None, folder: Path | None = None) -> Path:
    """The verified local file of ``entry``: from the cache, downloading it the first time."""
    folder = weights_cache() if folder is None else folder
    path = folder / entry.file_name
    if path.exists():
        verify_cached(path, entry)
        return path
    return download(entry, folder, progress)
