"""Train and test DeSTSeg on a small generated dataset, then draw its predictions: the README's first command.

The dataset (MVTec AD layout: a bright part seen from above, defects as dark or coloured blobs and scratches) is
generated under ``--data-root``; results (checkpoint, anomalib's result images) go to ``--output``, and one picture
of test images, their true masks and the anomaly maps to ``<output>/predictions.png``. No download is needed: the
teacher's ImageNet weights come from torchvision's cache/download unless ``--teacher-weights`` names a local file.

Training keeps ``resume.ckpt`` up to date (at the end of stage 1, then every 250 steps or 5 minutes); a run that was
killed continues from it with ``--resume``.

Example:
    python -m anomalib_destseg.demo --teacher-weights /path/to/resnet18.pth
    python -m anomalib_destseg.demo --teacher-weights /path/to/resnet18.pth --resume  # after a kill

"""

import argparse
import logging
import time
from pathlib import Path

import torch
from anomalib.data import MVTecAD
from anomalib.engine import Engine
from lightning.pytorch import seed_everything

from anomalib_destseg import DeSTSeg
from anomalib_destseg.data import DEFAULT_CATEGORY, make_synthetic_dataset
from anomalib_destseg.training import latest_resume_checkpoint

PICTURE = "predictions.png"


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
    parser.add_argument("--precision", default="32", help="Lightning precision, e.g. 32 or bf16-mixed")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--resume", action="store_true", help="continue the last run under --output from its resume.ckpt, if any"
    )
    return parser.parse_args(argv)


def save_predictions(predictions: list, path: Path, defects: int = 4, good: int = 2) -> Path:
    """Draw ``defects`` defective and ``good`` normal test images in three rows: image, true mask, anomaly map."""
    import matplotlib as mpl

    mpl.use("Agg")
    import matplotlib.pyplot as plt

    samples = [
        (image, mask, anomaly_map, float(score), bool(label))
        for batch in predictions
        for image, mask, anomaly_map, score, label in zip(
            batch.image, batch.gt_mask, batch.anomaly_map, batch.pred_score, batch.gt_label, strict=True
        )
    ]
    samples = [s for s in samples if s[4]][:defects] + [s for s in samples if not s[4]][:good]
    figure, axes = plt.subplots(3, len(samples), figsize=(1.8 * len(samples), 5.6), squeeze=False)
    for column, (image, mask, anomaly_map, score, label) in enumerate(samples):
        axes[0, column].imshow(image.permute(1, 2, 0).clamp(0, 1).numpy())
        axes[0, column].set_title(f"{'defect' if label else 'good'}\nscore {score:.2f}", fontsize=9)
        axes[1, column].imshow(mask.reshape(mask.shape[-2:]).numpy(), cmap="gray", vmin=0, vmax=1)
        axes[2, column].imshow(anomaly_map.reshape(anomaly_map.shape[-2:]).numpy(), cmap="jet", vmin=0, vmax=1)
    for row, name in enumerate(("image", "true mask", "anomaly map")):
        axes[row, 0].set_ylabel(name)
    for axis in axes.flat:
        axis.set_xticks([])
        axis.set_yticks([])
    figure.suptitle("DeSTSeg demo: test images, true defect masks, anomaly maps (normalised, 0.5 = threshold)")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Generate the data, train, test, draw; print and return the test metrics."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    seed_everything(args.seed)
    started = time.perf_counter()
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
    resume_from = None
    if args.resume:
        try:
            resume_from = latest_resume_checkpoint(args.output, model, datamodule)
        except FileNotFoundError as error:  # killed before its first save (the end of stage 1, 250 steps, 5 min)
            logging.getLogger(__name__).warning("%s Training from the start.", error)
    engine = Engine(default_root_dir=args.output, accelerator="cpu", devices=1, logger=False, precision=args.precision)
    engine.fit(model, datamodule=datamodule, ckpt_path=resume_from)
    metrics = engine.test(model, datamodule=datamodule)[0]
    with torch.no_grad():
        picture = save_predictions(engine.predict(model, datamodule=datamodule), args.output / PICTURE)
    seconds = time.perf_counter() - started
    print(f"\nDeSTSeg demo: trained {model.total_steps} steps; {seconds:.0f} s in all on {args.data_root}")
    for name, value in metrics.items():
        print(f"  {name:>14}: {value:.3f}")
    print(f"Predictions drawn in {picture} (test images, true masks, anomaly maps); checkpoint under {args.output}")
    return metrics


if __name__ == "__main__":
    main()
