"""Train and test DeSTSeg on a small generated dataset: the README's first command, no download needed.

The dataset (MVTec AD layout) is generated under ``--data-root``; results (checkpoint, test images with anomaly
maps) go to ``--output``. The teacher's ImageNet weights come from torchvision's cache/download unless
``--teacher-weights`` names a local file (air-gapped machines).

Example:
    python -m anomalib_destseg.demo --teacher-weights /path/to/resnet18.pth

"""

import argparse
import logging
import time
from pathlib import Path

from anomalib.data import MVTecAD
from anomalib.engine import Engine
from lightning.pytorch import seed_everything

from anomalib_destseg import DeSTSeg
from anomalib_destseg.data import DEFAULT_CATEGORY, make_synthetic_dataset


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options of the demo."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", type=Path, default=Path("datasets/demo"), help="where the dataset is written")
    parser.add_argument("--output", type=Path, default=Path("results/demo"), help="anomalib results folder")
    parser.add_argument("--teacher-weights", default="imagenet", help="'imagenet' or a local ResNet-18 state dict")
    parser.add_argument("--texture-dir", type=Path, default=None, help="texture images (DTD); default procedural")
    parser.add_argument("--image-size", type=int, default=64, help="image side (a multiple of 32)")
    parser.add_argument("--student-steps", type=int, default=60)
    parser.add_argument("--segmentation-steps", type=int, default=120)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Generate the data, train, test; print and return the test metrics."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    seed_everything(args.seed)
    make_synthetic_dataset(args.data_root, image_size=args.image_size, num_train=32, seed=args.seed)
    model = DeSTSeg(
        student_steps=args.student_steps,
        segmentation_steps=args.segmentation_steps,
        texture_dir=args.texture_dir,
        teacher_weights=args.teacher_weights,
        pre_processor=DeSTSeg.configure_pre_processor((args.image_size, args.image_size)),
    )
    datamodule = MVTecAD(
        root=args.data_root,
        category=DEFAULT_CATEGORY,
        train_batch_size=args.batch_size,
        eval_batch_size=16,
        num_workers=0,
    )
    engine = Engine(default_root_dir=args.output, accelerator="cpu", devices=1, logger=False)
    start = time.perf_counter()
    engine.fit(model, datamodule=datamodule)
    fit_seconds = time.perf_counter() - start
    metrics = engine.test(model, datamodule=datamodule)[0]
    print(f"\nDeSTSeg demo: trained {model.total_steps} steps in {fit_seconds:.0f} s on {args.data_root}")
    for name, value in metrics.items():
        print(f"  {name:>14}: {value:.3f}")
    print(f"Checkpoint and result images under {args.output}")
    return metrics


if __name__ == "__main__":
    main()
