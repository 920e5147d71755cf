"""Plain helpers shared by the tests (importable as ``helpers``: pytest puts ``tests/`` on the path)."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SHARED_WEIGHTS = SHARED / "weights" / "resnet18_imagenet1k_layer1to3.pth"
SHARED_DTD = SHARED / "data" / "dtd" / "images"
SHARED_MVTEC = SHARED / "data" / "mvtec_ad"

TINY_SIZE = 64  # smallest comfortable multiple of 32: every layer still has >= 2x2 pixels
TINY_STEPS = 2  # student and segmentation steps of a model that only has to run through both stages


def tiny_model(
    model_class: type,
    teacher_weights: str | Path | None,
    size: int | tuple[int, int] | None = TINY_SIZE,
    student_steps: int = TINY_STEPS,
    segmentation_steps: int = TINY_STEPS,
    **kwargs: object,
):
    """The integration tests' DeSTSeg or PFADSeg: the package's defaults except where a test must differ.

    Every integration module builds its models here, so a default changed here (or in the package) changes for all
    of them. The evaluator is the package's default (the paper's metrics); the visualizer is off because writing
    images is slow and only ``test_models.py`` checks them (it passes ``visualizer=True``).

    Args:
        model_class: ``DeSTSeg`` or ``PFADSeg``.
        teacher_weights: ResNet-18 state dict file (``None``: the teacher keeps torchvision's random initialisation).
        size: Side (or ``(H, W)``) the pre-processor resizes to; ``None`` keeps the class's default pre-processor.
        student_steps: Stage-1 optimiser steps.
        segmentation_steps: Stage-2 optimiser steps.
        **kwargs: Any other constructor argument (``evaluator=False``, ``output_map="dest"``...).

    """
    arguments: dict = {
        "student_steps": student_steps,
        "segmentation_steps": segmentation_steps,
        "teacher_weights": None if teacher_weights is None else str(teacher_weights),
        "visualizer": False,
    }
    if size is not None:
        side = (size, size) if isinstance(size, int) else tuple(size)
        arguments["pre_processor"] = model_class.configure_pre_processor(side)
    arguments.update(kwargs)
    return model_class(**arguments)


def tiny_datamodule(root: Path, **kwargs: object):
    """anomalib's MVTecAD on the ``synthetic`` category of a generated dataset: batches of 4, no loader workers.

    Every integration module reads its generated data through this, so the loader settings change everywhere at
    once; ``kwargs`` (``seed``, ``train_batch_size``, ``num_workers``...) replace a default.
    """
    from anomalib.data import MVTecAD

    settings = {"train_batch_size": 4, "eval_batch_size": 4, "num_workers": 0, **kwargs}
    return MVTecAD(root=root, category="synthetic", **settings)


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


def crash_before(step: int):
    """A Lightning callback that raises before optimiser step ``step`` + 1 (the weights then hold ``step`` steps)."""
    from lightning.pytorch import Callback

    class CrashBefore(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            del trainer, batch, batch_idx
            if pl_module.global_step == step:
                raise RuntimeError(f"simulated crash after step {step}")

    return CrashBefore()
