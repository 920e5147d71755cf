"""One OpenVINO ``Core`` for the whole process, shared by every OpenVINO model this package compiles.

Why not a ``Core`` each: OpenVINO's CPU plugin (seen with 2026.4.1 on Linux) gives the calling thread a new alternate
signal stack when a ``Core`` first compiles for the CPU, and when that ``Core`` is destroyed it unmaps its stack and
puts back the one it found. Two ``Core`` objects destroyed in the order they were made (the first one first) leave
the thread with the first one's stack, already unmapped; the next signal handled there (Ctrl+C, a SIGTERM to stop a
training run) then kills the process with a segmentation fault instead of running its handler. A single ``Core``
that lives as long as the process never puts a stack back. anomalib's ``OpenVINOInferencer`` and Model API make a
``Core`` each: docs/export.md says how to keep them safe.
"""

from functools import cache
from typing import Any


@cache
def shared_core() -> Any:
    """The process's ``openvino.Core``, made on first use.

    Example:
        >>> shared_core() is shared_core()
        True

    """
    import openvino as ov

    return ov.Core()
