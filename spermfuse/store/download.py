"""Downloading catalogued checkpoints into a verified cache; the only code that uses the network.

Only ``--pretrained`` gets here. Only https is fetched (http only from this machine, or
with ``$SPERMFUSE_ALLOW_HTTP=1``), never a redirect from https to http, never more than
``MAX_DOWNLOAD_BYTES``. A file is streamed to a temporary name in the cache folder while its
SHA-256 is computed, and renamed into place only when it is complete and matches the
catalogue's digest; a failure at any point leaves nothing behind. Where the catalogue knows
no digest, the first file's is recorded beside it (``<file>.sha256``) once it has loaded as
the format its entry declares (:func:`record_first_use`), and every later use checks it: a
cached file that changed is an error, never a silent reload. Later runs read the cache and
work offline.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from ..cache import weights_cache
from ..core.errors import SpermfuseError
from ..core.files import atomic_write_text, file_sha256

if TYPE_CHECKING:
    from .catalogue import WeightsEntry

log = logging.getLogger(__name__)

CHUNK = 1 << 20
MAX_DOWNLOAD_BYTES = 4 << 30  # the largest catalogued checkpoint is well under 1 GB
ALLOW_HTTP_VARIABLE = "SPERMFUSE_ALLOW_HTTP"
LOOPBACK_HOSTS = ("localhost", "::1")
Progress = Callable[[int, "int | None"], None]  # (bytes so far, total bytes or None)


class DownloadError(SpermfuseError):
    """A download or cached file that cannot be used; the message names it and the way out."""


def check_url(url: str, context: str = "") -> None:
    """https, or http to this machine (a test mirror) or with ``$SPERMFUSE_ALLOW_HTTP=1``; nothing else."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    loopback = host in LOOPBACK_HOSTS or host.startswith("127.")
    if parts.scheme == "https" or (parts.scheme == "http" and (loopback or os.environ.get(ALLOW_HTTP_VARIABLE) == "1")):
        return
    if parts.scheme == "http":
        raise DownloadError(
            f"{url}{context}: plain http can be altered on the way; use an https mirror, or set ${ALLOW_HTTP_VARIABLE}=1 for a trusted network"
        )
    raise DownloadError(
        f"{url}{context}: only https (or http) URLs are downloaded; copy the file and pass --weights PATH"
    )


class _CheckedRedirects(urllib.request.HTTPRedirectHandler):
    """Follows a redirect only to a URL that :func:`check_url` allows, and never from https to http."""

    def redirect_request(self, request, fp, code, message, headers, new_url):
        check_url(new_url, f" (a redirect from {request.full_url})")
        if request.full_url.startswith("https:") and new_url.startswith("http:"):
            raise DownloadError(f"{request.full_url}: redirects from https to plain http ({new_url}); refused")
        return super().redirect_request(request, fp, code, message, headers, new_url)


def _record_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _expected_digest(path: Path, entry: WeightsEntry) -> tuple[str | None, str]:
    """(digest the file must have (or start with), where that digest comes from)."""
    if entry.sha256:
        return entry.sha256.lower(), "the catalogue's"
    record = _record_path(path)
    if record.exists():
        return record.read_text().split()[
            0
        ], f"the one recorded at its first download ({record}; delete it too to accept a new file)"
    return None, ""


def verify_cached(path: Path, entry: WeightsEntry) -> None:
    """Refuse a cached file whose SHA-256 differs from the catalogue's or the recorded one."""
    expected, origin = _expected_digest(path, entry)
    if expected is None:  # placed in the cache by hand: recorded once it loads (record_first_use)
        return
    actual = file_sha256(path)
    if not actual.startswith(expected):
        record = f" and {_record_path(path)}" if not entry.sha256 else ""
        raise DownloadError(
            f"{path}: SHA-256 {actual[:16]}... differs from {origin} {expected[:16]}...; "
            f"the cached file changed or is corrupt: delete {path}{record} to download it again"
        )


def has_digest(path: Path, entry: WeightsEntry) -> bool:
    """Whether the file at ``path`` was checked against a digest (the catalogue's or a recorded one)."""
    return _expected_digest(path, entry)[0] is not None


def record_first_use(path: Path, entry: WeightsEntry) -> None:
    """Trust on first use: once a file without a known digest has loaded as its declared format,
    record its SHA-256 so that every later use checks it. A read-only cache is used as it is."""
    if has_digest(path, entry):
        return
    actual = file_sha256(path)
    try:
        atomic_write_text(_record_path(path), f"{actual}  {entry.url}\n")
        log.info("%s: no digest known; recorded %s", path, actual)
    except OSError as error:
        log.warning(
            "%s: SHA-256 %s; could not record it (%s): later uses cannot check the file", path, actual, error.strerror
        )


def _stream(url: str, handle, progress: Progress | None) -> str:
    """Copy ``url`` into ``handle``; returns the SHA-256 of what arrived. Short reads are errors."""
    digest = hashlib.sha256()
    check_url(url)
    opener = urllib.request.build_opener(_CheckedRedirects)
    with opener.open(url, timeout=60) as response:
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        if total is not None and total > MAX_DOWNLOAD_BYTES:
            raise DownloadError(
                f"{url}: announces {total / 1e9:.1f} GB, more than any checkpoint ({MAX_DOWNLOAD_BYTES / 1e9:.1f} GB); refused"
            )
        done = 0
        try:
            while chunk := response.read(CHUNK):
                handle.write(chunk)
                digest.update(chunk)
                done += len(chunk)
                if done > MAX_DOWNLOAD_BYTES:
                    raise DownloadError(
                        f"{url}: sent more than {MAX_DOWNLOAD_BYTES / 1e9:.1f} GB; refused, nothing was kept"
                    )
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
    check_url(entry.url, f" ({entry.arch} --pretrained {entry.tag})")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(prefix=f".{entry.file_name}.", suffix=".part", dir=folder)
    except OSError as error:
        raise DownloadError(
            f"{folder}: the weights cache is not writable ({error.strerror}); set $SPERMFUSE_CACHE to move it"
        ) from None
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
        os.chmod(temporary, 0o644)  # a shared lab cache: readable by all, like every other file
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
    """The verified local file of ``entry``: from the cache, downloading it the first time.

    Without a known digest, call :func:`record_first_use` once the file has loaded."""
    folder = weights_cache() if folder is None else folder
    path = folder / entry.file_name
    if not path.resolve().is_relative_to(folder.resolve()):
        raise DownloadError(
            f"{entry.arch} --pretrained {entry.tag}: its cache file {path} would lie outside the cache {folder}; fix the tag"
        )
    if path.exists():
        verify_cached(path, entry)
        return path
    return download(entry, folder, progress)
