"""Read ``torch.save`` files without running code from them, failing with one line that names the file.

``torch.load(weights_only=True)`` refuses files that are not plain tensors, but its message (torch 2.6+) advises
re-running with ``weights_only=False``, "which will likely succeed", and filing an issue with PyTorch: advice to
execute an untrusted file. Other files fail with messages that name neither the file nor the problem (a text file:
``KeyError: '101'``). :func:`load_plain` says which file could not be read, what was expected and why, in one line,
and never passes that advice on.

Example:
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     path = Path(folder) / "notes.pth"
    ...     _ = path.write_text("not a checkpoint")
    ...     try:
    ...         load_plain(path, "a ResNet-18 state dict", ValueError)
    ...     except ValueError as error:
    ...         print(str(error).split(": ", 1)[1])
    not a torch.save file (it starts as neither a zip nor a pickle).

"""

from __future__ import annotations

import pickle
import re
import warnings
from pathlib import Path
from typing import Any

import torch

ZIP_START = b"PK\x03\x04"
"""How ``torch.save`` files start (a zip archive, torch >= 1.6)."""
PICKLE_START = b"\x80"
"""How older ``torch.save`` files (and pickles of protocol 2 or later) start."""
_INNER_ERROR = re.compile(r"WeightsUnpickler error:\s*(.+?)\s*(?:Check the documentation|$)", re.DOTALL)


def load_plain(path: str | Path, expected: str, error_type: type[Exception]) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)``, or ``error_type`` with a one-line message.

    Warnings torch gives while reading a file it then refuses (e.g. about the pickle protocol) are dropped with the
    failure they lead to; those of a file that loads are passed on.

    Args:
        path: The file.
        expected: What the file should hold, for the message (e.g. ``"a DeSTSeg reference state dict"``).
        error_type: The exception to raise, called with the message.

    Raises:
        error_type: ``"Could not read <path> as <expected>: <reason>."``

    """
    with Path(path).open("rb") as file:
        start = file.read(len(ZIP_START))
    if not start.startswith((ZIP_START, PICKLE_START)):
        msg = f"Could not read {path} as {expected}: not a torch.save file (it starts as neither a zip nor a pickle)."
        raise error_type(msg)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # any failure: corrupt, truncated, not plain tensors
            msg = f"Could not read {path} as {expected}: {failure_reason(error)}"
            # No chaining: torch's own message (in the chained traceback) recommends weights_only=False.
            raise error_type(msg) from None
    for warning in caught:
        warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    return loaded


def failure_reason(error: Exception) -> str:
    """A short reason for a failed ``torch.load(weights_only=True)``, without torch's advice.

    Example:
        >>> failure_reason(RuntimeError("PytorchStreamReader failed reading zip archive: failed finding central "
        ...     "directory. This is an internal miniz error."))
        'damaged or truncated (PytorchStreamReader failed reading zip archive: failed finding central directory).'

    """
    text = str(error)
    inner = _INNER_ERROR.search(text)
    if inner or "Weights only load failed" in text:
        detail = " ".join(inner.group(1).split()) if inner else "unsupported content"
        return (
            f"not a plain torch.save file of tensors (the safe reader stopped at: {detail}); files that would need "
            "code to load are not read."
        )
    if isinstance(error, (KeyError, pickle.UnpicklingError, EOFError)) or "invalid load key" in text:
        return "not a torch.save file (its content is not what torch.save writes)."
    if "PytorchStreamReader" in text or "zip archive" in text:
        return f"damaged or truncated ({text.split('.')[0]})."
    first = text.splitlines()[0] if text else type(error).__name__
    return f"{type(error).__name__}: {first}"
