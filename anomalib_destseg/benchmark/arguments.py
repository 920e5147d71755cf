"""The benchmark's command line: options, and the checks that turn them into jobs before anything runs."""

import argparse
import shutil
from pathlib import Path

from anomalib_destseg.components.input_size import SIZE_MULTIPLE
from anomalib_destseg.components.teacher import IMAGENET, TIMM_NAME
from anomalib_destseg.data.anomaly_generator import IMAGE_SUFFIXES

from .models import canonical_name
from .protocols import MODEL_NAMES, PROTOCOLS, TWO_STAGE_MODELS

PROG = "anomalib-destseg-benchmark"
OUTPUT_FILES = ("results.csv", "results.md", "results.json", "metrics.png", "costs.png")


# --- argument types ------------------------------------------------------------------------------------------------
def model_name(text: str) -> str:
    """Canonical model name, matched case-insensitively.

    Example:
        >>> model_name("patchcore")
        'Patchcore'

    """
    try:
        return canonical_name(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _integer(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            msg = f"expected an integer, got {text!r}"
            raise argparse.ArgumentTypeError(msg) from None
        if value < minimum:
            msg = f"expected an integer >= {minimum}, got {value}"
            raise argparse.ArgumentTypeError(msg)
        return value

    return parse


def _ratio(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        msg = f"expected a number in (0, 1], got {text!r}"
        raise argparse.ArgumentTypeError(msg) from None
    if not 0 < value <= 1:
        msg = f"expected a number in (0, 1], got {value}"
        raise argparse.ArgumentTypeError(msg)
    return value


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Train and test DeSTSeg, PFADSeg, Patchcore and Stfpm with the same data, weights, image size, "
        "seed and metrics; write a CSV, a markdown table, plots and an anomaly-map panel.",
        epilog="Protocols: "
        + "; ".join(f"{p.name} = {p.summary}" for p in PROTOCOLS.values())
        + ". Details: anomalib_destseg/benchmark/protocols.py. Offline Patchcore/Stfpm need timm's "
        f"'{TIMM_NAME}' in the Hugging Face cache (HF_HOME, HF_HUB_OFFLINE=1).",
    )
    data = parser.add_argument_group("data (choose --root or --folder-root)")
    source = data.add_mutually_exclusive_group(required=True)
    source.add_argument("--root", type=Path, help="MVTec AD layout root (ROOT/<category>/train/good, ...)")
    source.add_argument("--folder-root", type=Path, help="root of an anomalib Folder dataset")
    data.add_argument("--categories", nargs="+", metavar="CATEGORY", help="categories under --root (required)")
    data.add_argument("--normal-dir", help="Folder: normal (training) images, relative to --folder-root")
    data.add_argument("--abnormal-dir", nargs="+", help="Folder: anomalous test images (one or more folders)")
    data.add_argument("--mask-dir", nargs="+", help="Folder: masks, one folder per --abnormal-dir (optional)")
    data.add_argument("--normal-test-dir", help="Folder: normal test images (default: 20%% of --normal-dir)")
    data.add_argument("--name", help="Folder: dataset name in the report (default: the root's folder name)")

    run = parser.add_argument_group("models and recipe")
    run.add_argument(
        "--models",
        nargs="+",
        type=model_name,
        default=list(MODEL_NAMES),
        metavar="MODEL",
        help=f"models to run (default: all of {', '.join(MODEL_NAMES)})",
    )
    run.add_argument("--protocol", choices=sorted(PROTOCOLS), default="cpu", help="training recipe (default: cpu)")
    run.add_argument("--image-size", type=_integer(SIZE_MULTIPLE), help="square image side for all models")
    run.add_argument(
        "--tile-size",
        type=_integer(SIZE_MULTIPLE),
        help="cut the resized images into square tiles of this side (anomalib's tiler, no overlap) for every model",
    )
    run.add_argument("--seed", type=_integer(0), help="seed of every run")
    run.add_argument(
        "--steps",
        nargs=2,
        type=_integer(0),
        metavar=("STUDENT", "SEGMENTATION"),
        help="DeSTSeg / PFADSeg steps of stage 1 and stage 2",
    )
    run.add_argument("--epochs", type=_integer(1), help="Stfpm training epochs")
    run.add_argument("--coreset-ratio", type=_ratio, help="Patchcore coreset sampling ratio")
    run.add_argument("--batch-size", type=_integer(1), help="training batch size of every model")
    run.add_argument("--eval-batch-size", type=_integer(1), help="evaluation batch size of every model")
    run.add_argument("--num-workers", type=_integer(0), help="data-loader workers")
    run.add_argument(
        "--teacher-weights",
        default=IMAGENET,
        help="DeSTSeg / PFADSeg teacher: 'imagenet' (torchvision cache) or a ResNet-18 state-dict file",
    )
    run.add_argument(
        "--texture-dir",
        type=Path,
        help="DeSTSeg / PFADSeg texture images (DTD); default: procedural textures (a deviation)",
    )
    run.add_argument("--accelerator", default="auto", choices=["auto", "cpu", "gpu"], help="Lightning accelerator")
    run.add_argument(
        "--precision",
        choices=["32", "bf16-mixed", "16-mixed"],
        help="Lightning precision of training and testing for every model (16-mixed needs a GPU)",
    )
    run.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="train every model in the channels-last memory layout (or not)",
    )
    run.add_argument(
        "--normalize-scores",
        action="store_true",
        help="compute the metrics on anomalib's normalised (clamped) scores instead of raw ones",
    )
    run.add_argument("--timeout", type=_integer(1), metavar="SECONDS", help="stop a run after this many seconds")

    out = parser.add_argument_group("output")
    out.add_argument("--output-dir", type=Path, default=Path("benchmark_results"), help="default: benchmark_results")
    out.add_argument("--overwrite", action="store_true", help="replace result files already in --output-dir")
    out.add_argument("--panel-images", type=_integer(0), default=4, help="test images in the panel (default 4)")
    out.add_argument("--keep-checkpoints", action="store_true", help="keep each run's Lightning checkpoint")
    out.add_argument("--dry-run", action="store_true", help="check the input, print the plan and stop")
    return parser


# --- input checks --------------------------------------------------------------------------------------------------
def _has_images(folder: Path) -> bool:
    return folder.is_dir() and any(p.suffix.lower() in IMAGE_SUFFIXES for p in folder.iterdir())


def mvtec_jobs(args: argparse.Namespace, parser: argparse.ArgumentParser) -> list[tuple[str, dict, list[str]]]:
    """Jobs of ``--root``: one per category, checked for images, tests and masks; exits with a message."""
    root: Path = args.root.expanduser().resolve()
    if not root.is_dir():
        parser.error(f"--root {args.root} does not exist or is not a folder")
    if not args.categories:
        available = sorted(p.name for p in root.iterdir() if (p / "train" / "good").is_dir())
        parser.error(f"--categories is required with --root (found under {root}: {', '.join(available) or 'none'})")
    if any(getattr(args, option) for option in ("normal_dir", "abnormal_dir", "mask_dir", "normal_test_dir", "name")):
        parser.error("--normal-dir, --abnormal-dir, --mask-dir, --normal-test-dir and --name go with --folder-root")
    missing = [c for c in args.categories if not _has_images(root / c / "train" / "good")]
    if missing:
        available = sorted(p.name for p in root.iterdir() if (p / "train" / "good").is_dir())
        parser.error(
            f"category {', '.join(repr(c) for c in missing)} not found under {root} (expected "
            f"<root>/<category>/train/good/ with images); available: {', '.join(available) or 'none'}"
        )
    jobs = []
    for category in dict.fromkeys(args.categories):
        folder = root / category
        if not (folder / "test").is_dir():
            parser.error(f"category {category!r} has no test folder ({folder / 'test'})")
        if (folder / "ground_truth").is_dir():
            jobs.append((category, {"kind": "mvtec", "root": str(root), "category": category}, []))
            continue
        # No masks: anomalib's MVTecAD reader needs them, so read the same folders as a Folder dataset.
        defects = sorted(p.name for p in (folder / "test").iterdir() if p.is_dir() and p.name != "good")
        dataset = {
            "kind": "folder",
            "name": category,
            "root": str(folder),
            "normal_dir": "train/good",
            "normal_test_dir": "test/good" if (folder / "test" / "good").is_dir() else None,
            "abnormal_dir": [f"test/{d}" for d in defects] or None,
            "mask_dir": None,
        }
        notice = f"{category}: no ground_truth masks in {folder}; pixel metrics are skipped (empty in the CSV)."
        jobs.append((category, dataset, [notice]))
    return jobs


def folder_jobs(args: argparse.Namespace, parser: argparse.ArgumentParser) -> list[tuple[str, dict, list[str]]]:
    """The job of ``--folder-root``: one Folder dataset, its folders checked; exits with a message."""
    root: Path = args.folder_root.expanduser().resolve()
    if not root.is_dir():
        parser.error(f"--folder-root {args.folder_root} does not exist or is not a folder")
    if args.categories:
        parser.error("--categories goes with --root; a Folder dataset is one category (use --name)")
    if not args.normal_dir:
        parser.error("--normal-dir is required with --folder-root")
    if not _has_images(root / args.normal_dir):
        parser.error(f"--normal-dir {root / args.normal_dir} has no images")
    for option in ("abnormal_dir", "mask_dir"):
        for folder in getattr(args, option) or []:
            if not (root / folder).is_dir():
                parser.error(f"--{option.replace('_', '-')} {root / folder} does not exist")
    if args.normal_test_dir and not (root / args.normal_test_dir).is_dir():
        parser.error(f"--normal-test-dir {root / args.normal_test_dir} does not exist")
    if not args.abnormal_dir:
        parser.error("--abnormal-dir is required with --folder-root: the metrics need anomalous test images")
    if args.mask_dir and len(args.mask_dir) != len(args.abnormal_dir):
        parser.error("give one --mask-dir per --abnormal-dir (in the same order)")
    name = args.name or root.name
    dataset = {
        "kind": "folder",
        "name": name,
        "root": str(root),
        "normal_dir": args.normal_dir,
        "abnormal_dir": args.abnormal_dir,
        "normal_test_dir": args.normal_test_dir,
        "mask_dir": args.mask_dir,
    }
    notices = [] if args.mask_dir else [f"{name}: no --mask-dir; pixel metrics are skipped (empty in the CSV)."]
    return [(name, dataset, notices)]


def existing_outputs(output: Path) -> list[Path]:
    """Result files of an earlier benchmark in ``output``."""
    if not output.is_dir():
        return []
    existing = [output / name for name in OUTPUT_FILES if (output / name).exists()]
    existing += sorted(output.glob("anomaly_maps_*.png"))
    existing += [output / "runs"] if (output / "runs").exists() else []
    return existing


def check_outputs(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Refuse to overwrite an earlier benchmark's results unless ``--overwrite``."""
    output = args.output_dir
    if output.exists() and not output.is_dir():
        parser.error(f"--output-dir {output} exists and is not a folder")
    existing = existing_outputs(output)
    if existing and not args.overwrite:
        names = ", ".join(p.name + ("/" if p.is_dir() else "") for p in existing)
        parser.error(
            f"{output} already holds benchmark results ({names}); "
            "pass --overwrite to replace them or choose another --output-dir"
        )


def remove_outputs(output: Path) -> None:
    """Delete this command's earlier result files (``--overwrite``), so no stale file survives."""
    for path in existing_outputs(output):
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()


def check_weights_arguments(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Refuse a teacher-weights file or texture folder that does not exist."""
    if any(m in TWO_STAGE_MODELS for m in args.models):
        if args.teacher_weights != IMAGENET and not Path(args.teacher_weights).expanduser().is_file():
            parser.error(f"--teacher-weights {args.teacher_weights} is neither 'imagenet' nor an existing file")
        if args.texture_dir is not None and not args.texture_dir.expanduser().is_dir():
            parser.error(f"--texture-dir {args.texture_dir} does not exist")
