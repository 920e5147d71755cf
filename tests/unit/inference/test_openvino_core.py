"""One OpenVINO ``Core`` per process: a process that dropped OpenVINO models still handles signals.

OpenVINO's CPU plugin gives each ``Core`` its own alternate signal stack and puts the previous one back when the
``Core`` goes; two dropped first-made-first would leave the process on an unmapped stack, and the next signal would
kill it (openvino_core.py). The check runs in a child process, so that a crash fails this test and not pytest.
"""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("openvino")

CHILD = textwrap.dedent(
    """
    import os, signal, sys
    import numpy as np
    import openvino as ov
    from openvino import opset13 as ops
    {define_make}

    pixels = ops.parameter([1, 3, 32, 32], np.float32, name="image")
    ov.save_model(ov.Model([ops.relu(pixels)], [pixels]), sys.argv[1])
    first, second = make(sys.argv[1]), make(sys.argv[1])
    del first  # the first one made goes first
    del second
    signal.signal(signal.SIGUSR1, lambda *_: print("handled SIGUSR1"))
    os.kill(os.getpid(), signal.SIGUSR1)
    print("still running")
    """
)


def _run(tmp_path: Path, define_make: str) -> subprocess.CompletedProcess:
    script = CHILD.format(define_make=define_make)
    return subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "relu.xml")], capture_output=True, text=True, timeout=300
    )


def test_models_dropped_first_made_first_leave_signals_working(tmp_path: Path) -> None:
    result = _run(tmp_path, "from anomalib_destseg.inference import OpenVINOModel as make")
    assert result.returncode == 0, f"the child died with {result.returncode}: {result.stderr[-2000:]}"
    assert result.stdout.split() == ["handled", "SIGUSR1", "still", "running"]


def test_a_core_each_would_crash_on_the_next_signal(tmp_path: Path) -> None:
    """The fault the shared ``Core`` avoids, shown with a compiled model and a ``Core`` each (skips if OpenVINO no
    longer has it, so that the workaround can then be dropped)."""
    result = _run(tmp_path, "make = lambda path: (core := ov.Core(), core.compile_model(path, 'CPU'))")
    if result.returncode == 0:
        pytest.skip("this OpenVINO no longer leaves an unmapped signal stack: openvino_core.py can go")
    assert result.returncode == -11, result.stderr[-2000:]  # SIGSEGV, the handler never ran
    assert "handled" not in result.stdout
