r"""How much anomalib's default evaluation changes the paper's metrics, measured on trained checkpoints.

The paper (and this package's default) computes its metrics on raw scores and maps, with ground-truth masks resized
bilinearly with antialiasing and thresholded at 0.5. anomalib's defaults differ twice: its post-processor min-max
normalises scores and maps around the adaptive threshold and clamps them to [0, 1] before the evaluator sees them
(clamping ties the highest or lowest values), and its pre-processor resizes masks nearest-neighbour. This script
tests each checkpoint four ways on the same test set (raw or clamped scores, paper or nearest-neighbour masks) and
prints one markdown table.

Usage (checkpoints kept by ``anomalib-destseg-benchmark ... --keep-checkpoints``)::

    .venv/bin/python benchmarks/evaluation_effects.py --data-root ../shared/data/mvtec_ad --category bottle \
        --checkpoint DeSTSeg=runs/bottle/DeSTSeg/engine/.../model.ckpt --checkpoint Stfpm=... \
        --output docs/benchmarks/evaluation_effects_bottle.md

"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path
from typing import Any

METRICS = ("image_AUROC", "pixel_AUROC", "pixel_AUPR", "pixel_AUPRO", "pixel_IAP")
WAYS = (
    ("paper (default here)", True, True),
    ("raw scores, nearest-neighbour masks", True, False),
    ("clamped scores, paper masks", False, True),
    ("anomalib's default: clamped scores, nearest-neighbour masks", False, False),
)


def _load(name: str, checkpoint: str) -> Any:
    from anomalib.models import Patchcore, Stfpm

    from anomalib_destseg import DeSTSeg, PFADSeg
    from anomalib_destseg.metrics import paper_evaluator

    classes = {"DeSTSeg": DeSTSeg, "PFADSeg": PFADSeg, "Patchcore": Patchcore, "Stfpm": Stfpm}
    # the benchmark trained every model with the paper evaluator, whose state the checkpoint holds
    return classes[name].load_from_checkpoint(
        checkpoint, map_location="cpu", weights_only=False, evaluator=paper_evaluator()
    )


def evaluate(model: Any, datamodule: Any, raw_scores: bool, paper_masks: bool) -> dict[str, float]:
    """Test ``model`` with the chosen score and mask handling; the trained weights and thresholds are unchanged."""
    from anomalib.engine import Engine
    from anomalib.pre_processing import PreProcessor

    from anomalib_destseg.data import AntialiasedPreProcessor
    from anomalib_destseg.data.resize import with_plain_resizes
    from anomalib_destseg.metrics import RawScorePostProcessor, paper_evaluator

    # anomalib's datamodules resize each test image and mask with the pre-processor's Resize: the reference's
    # (masks bilinear with antialiasing, then >= 0.5) or torchvision's (masks nearest-neighbour)
    transform = with_plain_resizes(model.pre_processor.transform)
    model.pre_processor = AntialiasedPreProcessor(transform) if paper_masks else PreProcessor(transform=transform)
    post = RawScorePostProcessor()
    post.load_state_dict(model.post_processor.state_dict())  # the thresholds and ranges validation set
    model.post_processor = post
    model.evaluator = paper_evaluator(raw_scores=raw_scores)
    model.visualizer = None
    with tempfile.TemporaryDirectory() as root:
        engine = Engine(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, default_root_dir=root)
        results = engine.test(model, datamodule=datamodule, verbose=False)[0]
    return {name: float(results[name]) for name in METRICS}


def main(argv: list[str] | None = None) -> str:
    """Evaluate every checkpoint four ways; print (and optionally write) the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", type=Path, required=True, help="MVTec AD root")
    parser.add_argument("--category", default="bottle")
    parser.add_argument("--checkpoint", action="append", required=True, help="MODEL=PATH (repeatable)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--output", type=Path, default=None, help="markdown file to write")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from anomalib.data import MVTecAD

    datamodule = MVTecAD(root=args.data_root, category=args.category, eval_batch_size=args.batch_size, num_workers=0)
    header = "| model | evaluation | " + " | ".join(METRICS) + " |"
    lines = [header, "|---|---|" + "---:|" * len(METRICS)]
    for item in args.checkpoint:
        name, path = item.split("=", 1)
        reference = None
        for label, raw_scores, paper_masks in WAYS:
            values = evaluate(_load(name, path), datamodule, raw_scores, paper_masks)
            reference = reference or values
            cells = [
                f"{value:.4f}" if values is reference else f"{value:.4f} ({value - reference[metric]:+.4f})"
                for metric, value in values.items()
            ]
            lines.append(f"| {name} | {label} | " + " | ".join(cells) + " |")
            print(lines[-1], flush=True)
    table = "\n".join(lines) + "\n"
    if args.output:
        args.output.write_text(table)
    return table


if __name__ == "__main__":
    main()
