"""Shared fixtures: a tiny generated dataset, teacher weights and textures, all without downloads.

Tests are laid out by what they test: ``unit/`` mirrors the package, ``integration/`` runs anomalib's Engine and CLI,
export, resume, DDP and the README. Plain helpers (paths, sizes, a quiet Engine, and
``tiny_model``: the one way the integration tests build a model) are in ``helpers.py``.

The real ImageNet weights and DTD textures live in ../shared (never copied into the repository). Tests that need the
real files skip with a reason when they are absent; machinery tests fall back to a local random-weight file, which
exercises the same loading path as a user's ``teacher_weights`` file.
"""

import os
from pathlib import Path

if os.environ.get("PYTEST_XDIST_WORKER"):
    # The suite runs in pytest-xdist workers (pyproject.toml: -n 2): one thread each, inherited by the processes the
    # tests start. Two processes each spinning a thread per core on a two-core machine run several times slower.
    os.environ["OMP_NUM_THREADS"] = "1"

import gc

import pytest
import torch
from helpers import SHARED_DTD, SHARED_MVTEC, SHARED_WEIGHTS, TINY_SIZE
from signal_stack import repair_signal_stack

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never try the network from tests
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)  # as OMP_NUM_THREADS above (set before torch was imported)


@pytest.fixture(autouse=True, scope="module")
def _collect_openvino_cores():
    """After each module, drop its garbage (OpenVINO ``Core`` objects among it), so that a ``Core`` left in a cycle
    restores its signal stack now, before the next test's repair, rather than in the middle of a later test."""
    yield
    gc.collect()


@pytest.fixture(autouse=True)
def _signal_stack_mapped():
    """Before each test: a mapped alternate signal stack (signal_stack.py says why)."""
    repair_signal_stack()


@pytest.fixture(scope="session")
def teacher_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path of a ResNet-18 state dict: the real ImageNet file if present, else a random one (machinery only)."""
    if SHARED_WEIGHTS.is_file():
        return SHARED_WEIGHTS
    from torchvision.models import resnet18

    path = tmp_path_factory.mktemp("weights") / "random_resnet18.pth"
    torch.manual_seed(0)
    torch.save(resnet18(weights=None).state_dict(), path)
    return path


@pytest.fixture(scope="session")
def real_teacher_weights() -> Path:
    """The real ImageNet weights, or skip."""
    if not SHARED_WEIGHTS.is_file():
        pytest.skip(f"real ImageNet ResNet-18 weights not found at {SHARED_WEIGHTS}")
    return SHARED_WEIGHTS


@pytest.fixture(scope="session")
def texture_dir() -> Path:
    """The shared DTD textures, or skip."""
    if not SHARED_DTD.is_dir():
        pytest.skip(f"DTD textures not found at {SHARED_DTD}")
    return SHARED_DTD


@pytest.fixture(scope="session")
def mvtec_root() -> Path:
    """The shared MVTec AD root (bottle only), or skip."""
    if not (SHARED_MVTEC / "bottle").is_dir():
        pytest.skip(f"MVTec AD bottle not found under {SHARED_MVTEC}")
    return SHARED_MVTEC


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generated MVTec-layout dataset at 64x64: root/synthetic/{train,test,ground_truth}. Returns the root."""
    from anomalib_destseg.data import make_synthetic_dataset

    root = tmp_path_factory.mktemp("tiny_dataset")
    make_synthetic_dataset(root, image_size=TINY_SIZE, num_train=12, num_test_good=4, num_test_defect=4, seed=0)
    return root
