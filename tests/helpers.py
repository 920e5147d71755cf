"""Plain helpers shared by the tests (importable as ``helpers``: pytest puts ``tests/`` on the path)."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SHARED_WEIGHTS = SHARED / "weights" / "resnet18_imagenet1k_layer1to3.pth"
SHARED_DTD = SHARED / "data" / "dtd" / "images"
SHARED_MVTEC = SHARED / "data" / "mvtec_ad"

TINY_SIZE = 64  # smallest comfortable multiple of 32: every layer still has >= 2x2 pixels


def quiet_cpu_engine(root: Path, callbacks: tuple = (), precision: str = "32"):
    """anomalib Engine on one CPU device writing under ``root``, without logger, progress bar or model summary."""
    from anomalib.engine import Engine

    return Engine(
        default_root_dir=root,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=list(callbacks),
        precision=precision,
    )
