"""The one base class of the problems a user can fix (a flag, a file, the data).

Scripts print such an error as one line and exit with status 2. Every other exception is
a bug in spermfuse or in code calling it, and keeps its traceback: a ``ValueError`` from
deep inside NumPy must not look like bad input.
"""

from __future__ import annotations


class SpermfuseError(Exception):
    """A problem with what the user gave; the message names the flag or file and the fix."""


class DataError(SpermfuseError):
    """Bad input data; the message is one line naming the file and the fix."""


class ConfigError(SpermfuseError):
    """A setting that cannot work; the message names the flag and the fix."""


class FusionError(SpermfuseError):
    """Logits files that cannot be fused or evaluated together; the message names them."""


def user_message(error: BaseException) -> str | None:
    """The one line to print for a user-facing error, or None for a bug (re-raise it).

    File-system errors count as the user's when they name a path (a missing folder, a
    file where a folder should be, no permission); one without a path is not explained.
    """
    if isinstance(error, SpermfuseError):
        return str(error)
    if isinstance(error, OSError) and error.filename is not None:
        return str(error)
    return None
