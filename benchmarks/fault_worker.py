"""One short DeSTSeg training on generated data, for fault_injection.py to interrupt, damage and resume.

It trains as the demo does (64x64 generated images, batch 8, anomalib's Engine) for a few dozen steps, prints
``STEP <k>`` after every optimiser step so that the harness can strike at a chosen step, and can inject faults
from inside: a batch of NaN images at a step, or a training image overwritten with garbage at a step. Its
``resume.ckpt`` saves are logged (``Saved ... at step <k>``).

Example:
    python benchmarks/fault_worker.py --data /tmp/faults/data --output /tmp/faults/run1 \
        --teacher-weights ../shared/weights/resnet18_imagenet1k_layer1to3.pth

"""

import argparse
import logging
import sys
from pathlib import Path

from anomalib.data import MVTecAD
from anomalib.engine import Engine
from lightning.pytorch import Callback, seed_everything

from anomalib_destseg import DeSTSeg
from anomalib_destseg.components import took_a_step
from anomalib_destseg.data import DEFAULT_CATEGORY, make_synthetic_dataset

IMAGE_SIZE = 64
TRAIN_IMAGES = 30  # three steps and one skipped incomplete batch per epoch at batch 8


class StepFaults(Callback):
    """Announce each optimiser step on stdout; inject a NaN batch or an unreadable image at chosen steps."""

    def __init__(self, nan_at: int | None, unreadable_at: int | None, image: Path) -> None:
        self.nan_at, self.unreadable_at, self.image = nan_at, unreadable_at, image

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        """Fill the batch with NaN at the chosen step."""
        del trainer, batch_idx
        if pl_module.global_step == self.nan_at:
            batch.image[0] = float("nan")  # e.g. a float image normalised by a zero maximum

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        """Announce the step; make the image unreadable at the chosen step."""
        del trainer, batch, batch_idx
        if not took_a_step(outputs):
            return
        print(f"STEP {pl_module.global_step}", flush=True)
        if pl_module.global_step == self.unreadable_at:
            self.image.write_bytes(b"\x00garbage, not a PNG\x00" * 8)


def training_images(data: Path) -> list[Path]:
    """The generated dataset's training images, sorted."""
    return sorted((data / DEFAULT_CATEGORY / "train" / "good").glob("*.png"))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="dataset root (generated when missing)")
    parser.add_argument("--output", type=Path, required=True, help="the Engine's results folder")
    parser.add_argument("--teacher-weights", required=True)
    parser.add_argument("--student-steps", type=int, default=16)
    parser.add_argument("--segmentation-steps", type=int, default=24)
    parser.add_argument("--every-n-steps", type=int, default=6, help="checkpoint_every_n_steps")
    parser.add_argument("--every-seconds", type=float, default=300.0, help="checkpoint_every_seconds")
    parser.add_argument("--resume", type=Path, default=None, help="ckpt_path to resume from")
    parser.add_argument("--nan-at-step", type=int, default=None)
    parser.add_argument("--unreadable-at-step", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Train (or resume) to the end."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    logging.getLogger("anomalib_destseg.training.callbacks.periodic_checkpoint").setLevel(logging.DEBUG)
    seed_everything(args.seed)
    if not training_images(args.data):
        make_synthetic_dataset(args.data, image_size=IMAGE_SIZE, num_train=TRAIN_IMAGES, seed=0)
    model = DeSTSeg(
        student_steps=args.student_steps,
        segmentation_steps=args.segmentation_steps,
        teacher_weights=args.teacher_weights,
        checkpoint_every_n_steps=args.every_n_steps,
        checkpoint_every_seconds=args.every_seconds,
        pre_processor=DeSTSeg.configure_pre_processor((IMAGE_SIZE, IMAGE_SIZE)),
    )
    datamodule = MVTecAD(
        root=args.data, category=DEFAULT_CATEGORY, train_batch_size=8, eval_batch_size=16, num_workers=0
    )
    faults = StepFaults(args.nan_at_step, args.unreadable_at_step, training_images(args.data)[0])
    engine = Engine(
        default_root_dir=args.output,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        callbacks=[faults],
    )
    engine.fit(model, datamodule=datamodule, ckpt_path=args.resume)
    print(f"FINISHED {model.global_step}", flush=True)


if __name__ == "__main__":
    main()
