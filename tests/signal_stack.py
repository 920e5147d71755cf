"""Keep the test process's alternate signal stack mapped after OpenVINO has unmapped it (Linux).

OpenVINO's CPU plugin swaps in a signal stack per ``Core`` and puts the previous one back when the ``Core`` goes;
anomalib's inferencers and Model API make a ``Core`` each, so after the export tests the process can be left on an
unmapped stack (anomalib_destseg/inference/openvino_core.py). The next signal handled in Python (a DataLoader
worker's SIGCHLD, Lightning's SIGTERM) would then kill the pytest process without a traceback. ``conftest.py``
calls :func:`repair_signal_stack` around every test.
"""

import ctypes
import mmap
import sys

SS_DISABLE = 2  # <signal.h>


class _Stack(ctypes.Structure):
    _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]


_ENABLED = sys.platform == "linux"
if _ENABLED:
    _LIBC = ctypes.CDLL(None, use_errno=True)
    _SPARE = mmap.mmap(-1, 1 << 16)  # a stack of the process's own, never unmapped
    _SPARE_ADDRESS = ctypes.addressof(ctypes.c_char.from_buffer(_SPARE))


def _is_mapped(address: int) -> bool:
    with open("/proc/self/maps") as maps:
        for line in maps:
            low, high = (int(bound, 16) for bound in line.split(maxsplit=1)[0].split("-"))
            if low <= address < high:
                return True
    return False


def repair_signal_stack() -> bool:
    """Put a mapped alternate signal stack in place of an unmapped one; returns whether one was unmapped."""
    if not _ENABLED:
        return False
    current = _Stack()
    _LIBC.sigaltstack(None, ctypes.byref(current))
    if current.ss_flags & SS_DISABLE or not current.ss_sp or _is_mapped(current.ss_sp):
        return False
    spare = _Stack(_SPARE_ADDRESS, 0, len(_SPARE))
    _LIBC.sigaltstack(ctypes.byref(spare), None)
    return True
