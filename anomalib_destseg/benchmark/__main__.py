"""``anomalib-destseg-benchmark``: DeSTSeg, PFADSeg, Patchcore and Stfpm on the same data, one command.

Every (category, model) pair is trained and tested through anomalib's ``Engine`` in its own process (so each peak
memory is that run's own), with

- the same ImageNet ResNet-18 weights: torchvision's IMAGENET1K_V1, which timm calls ``resnet18.tv_in1k``.
  DeSTSeg / PFADSeg load them as their teacher (``--teacher-weights``: ``imagenet`` = torchvision's cache, or a
  file); Patchcore (layer2 + layer3) and Stfpm (layer1-3) through timm. Before any run the command checks that
  both sources load and compares their conv1..layer3 tensors;
- the same image size (resize, no crop), seed and evaluator (:func:`anomalib_destseg.metrics.paper_evaluator`);
- no model selection on test data. MVTec AD has no validation images; the validation split is the test split, as
  in anomalib's default, and it is used only for what anomalib uses it for: the adaptive thresholds of the F1
  scores. Nothing is picked on it (no early stopping, no best checkpoint): every model is tested after its last
  training step. (A validation split carved from the training images would take images from training and hold no
  anomalies, so it could not set an F1 threshold at all.)
- evaluation as the paper: metrics on raw scores and maps (``--normalize-scores`` scores anomalib's post-processed
  outputs instead, as in anomalib's published numbers: ``(score - threshold) / (max - min) + 0.5`` clamped to
  [0, 1], which ties the highest or lowest scores and so changes AUROC, AP, AUPRO and IAP), and ground-truth masks
  resized bilinearly with antialiasing and thresholded at 0.5 for every model (anomalib: nearest-neighbour).

Outputs in ``--output-dir``: ``results.csv`` (columns: model, image_AUROC, pixel_AUROC, pixel_AP, AUPRO, IAP, fit_s,
infer_img_per_s, peak_rss_gb, category, IAP90, status, error), ``results.md``, ``results.json`` (everything,
including settings and versions), ``metrics.png``, ``costs.png``, ``anomaly_maps_<category>.png`` and ``runs/``
(per run: spec, result, log, saved anomaly maps). The tables are rewritten after every run, so a long benchmark
can be inspected while it runs and an interrupted one keeps what finished. Existing result files are never
overwritten unless ``--overwrite`` is given, and every file is written atomically.

A run that fails is reported in the table (status ``failed`` with the error's last line; the full traceback is in
``runs/<category>/<model>/run.log``) and the other runs go on; the exit status is then 1. Bad input (a missing root
or category, an unknown model, missing weights) stops the command before any run with exit status 2.

Example:
    anomalib-destseg-benchmark --root /data/mvtec_ad --categories bottle --protocol cpu \
        --texture-dir /data/dtd/images --output-dir results/benchmark_bottle

"""

import argparse
import importlib
import json
import math
import os
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from . import report
from .protocols import MODEL_NAMES, PROTOCOLS, TIMM_BACKBONE, TWO_STAGE_MODELS, Protocol, get_protocol, override
from .runner import PREDICTIONS_FILE, PREFLIGHT_FLAG, PREFLIGHT_MARKER, RESULT_FILE, error_line

PROG = "anomalib-destseg-benchmark"
IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
OUTPUT_FILES = ("results.csv", "results.md", "results.json", "metrics.png", "costs.png")
SIZE_MULTIPLE = 32  # DeSTSeg / PFADSeg need multiples of 32; every model gets the same size


# --- argument types ------------------------------------------------------------------------------------------------
def model_name(text: str) -> str:
    """Canonical model name, matched case-insensitively.

    Example:
        >>> model_name("patchcore")
        'Patchcore'

    """
    for name in MODEL_NAMES:
        if text.lower() == name.lower():
            return name
    msg = f"unknown model {text!r}; choose from {', '.join(MODEL_NAMES)}"
    raise argparse.ArgumentTypeError(msg)


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
        f"'{TIMM_BACKBONE}' in the Hugging Face cache (HF_HOME, HF_HUB_OFFLINE=1).",
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
        default="imagenet",
        help="DeSTSeg / PFADSeg teacher: 'imagenet' (torchvision cache) or a ResNet-18 state-dict file",
    )
    run.add_argument(
        "--texture-dir",
        type=Path,
        help="DeSTSeg / PFADSeg texture images (DTD); default: procedural textures (a deviation)",
    )
    run.add_argument("--accelerator", default="auto", choices=["auto", "cpu", "gpu"], help="Lightning accelerator")
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
    return folder.is_dir() and any(p.suffix.lower() in IMAGE_EXTENSIONS for p in folder.iterdir())


def _mvtec_jobs(args: argparse.Namespace, parser: argparse.ArgumentParser) -> list[tuple[str, dict, list[str]]]:
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


def _folder_jobs(args: argparse.Namespace, parser: argparse.ArgumentParser) -> list[tuple[str, dict, list[str]]]:
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


def _existing_outputs(output: Path) -> list[Path]:
    """Result files of an earlier benchmark in ``output``."""
    if not output.is_dir():
        return []
    existing = [output / name for name in OUTPUT_FILES if (output / name).exists()]
    existing += sorted(output.glob("anomaly_maps_*.png"))
    existing += [output / "runs"] if (output / "runs").exists() else []
    return existing


def _check_outputs(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    output = args.output_dir
    if output.exists() and not output.is_dir():
        parser.error(f"--output-dir {output} exists and is not a folder")
    existing = _existing_outputs(output)
    if existing and not args.overwrite:
        names = ", ".join(p.name + ("/" if p.is_dir() else "") for p in existing)
        parser.error(
            f"{output} already holds benchmark results ({names}); "
            "pass --overwrite to replace them or choose another --output-dir"
        )


def _remove_outputs(output: Path) -> None:
    """Delete this command's earlier result files (``--overwrite``), so no stale file survives."""
    for path in _existing_outputs(output):
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()


def _check_weights_arguments(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    if any(m in TWO_STAGE_MODELS for m in args.models):
        if args.teacher_weights != "imagenet" and not Path(args.teacher_weights).expanduser().is_file():
            parser.error(f"--teacher-weights {args.teacher_weights} is neither 'imagenet' nor an existing file")
        if args.texture_dir is not None and not args.texture_dir.expanduser().is_dir():
            parser.error(f"--texture-dir {args.texture_dir} does not exist")


def pfadseg_import_error() -> str | None:
    """``None`` if PFADSeg can be imported, else why not (it is being written alongside DeSTSeg)."""
    try:
        module = importlib.import_module("anomalib_destseg.pfadseg")
        module.PFADSeg  # noqa: B018 - the class must exist, not only the package
    except Exception as error:
        return f"PFADSeg is not importable yet ({error_line(error)}); skipped."
    return None


def run_preflight(models: list[str], teacher_weights: str) -> tuple[list[str], list[str], bool | None]:
    """Check, in a fresh process with the runs' environment, that the weights load (see ``runner.preflight``).

    A subprocess sees ``HF_HOME`` / ``TORCH_HOME`` exactly as the runs will (the Hugging Face hub reads them once,
    at import), so this check and the runs cannot disagree.

    Returns:
        Errors (the command stops), notes for the report, and whether the DeSTSeg teacher and timm's weights are
        identical (``None`` if not compared).

    """
    request = json.dumps({"models": models, "teacher_weights": teacher_weights})
    command = [sys.executable, "-m", "anomalib_destseg.benchmark.runner", PREFLIGHT_FLAG, request]
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    for line in reversed(completed.stdout.splitlines()):
        if line.startswith(PREFLIGHT_MARKER):
            answer = json.loads(line.removeprefix(PREFLIGHT_MARKER))
            return answer["errors"], answer["notes"], answer["same"]
    tail = "\n".join(completed.stderr.strip().splitlines()[-5:])
    return [f"the weight check crashed (exit code {completed.returncode}):\n{tail}"], [], None


# --- running -------------------------------------------------------------------------------------------------------
def _last_log_line(path: Path) -> str:
    if not path.is_file():
        return ""
    lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _wait(process: subprocess.Popen, timeout: int | None, tick) -> tuple[int, float | None, bool]:
    """Wait for ``process``; return (exit code, its peak RSS in GB or None, whether it timed out)."""
    start, timed_out = time.monotonic(), False
    if not hasattr(os, "wait4"):  # Windows: no per-child resource usage
        while process.poll() is None:
            if timeout and time.monotonic() - start > timeout:
                process.kill()
                timed_out = True
            tick()
            time.sleep(0.5)
        return process.returncode, None, timed_out
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            break
        if timeout and time.monotonic() - start > timeout and not timed_out:
            process.kill()
            timed_out = True
        tick()
        time.sleep(0.5)
    process.returncode = os.waitstatus_to_exitcode(status)
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return process.returncode, usage.ru_maxrss * scale / 1e9, timed_out


def run_one(spec: dict[str, Any], timeout: int | None, tick) -> dict[str, Any]:
    """Run one (category, model) in a subprocess and return its result row (never raises for a failed run)."""
    run_dir = Path(spec["run_dir"])
    if run_dir.exists():
        shutil.rmtree(run_dir)  # only reached with --overwrite (checked before any run)
    run_dir.mkdir(parents=True)
    spec_path = run_dir / "spec.json"
    spec_path.write_text(json.dumps(spec, indent=2))
    log_path = run_dir / "run.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "anomalib_destseg.benchmark.runner", str(spec_path)]
    with log_path.open("w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            code, peak_gb, timed_out = _wait(process, timeout, tick)
        except BaseException:  # Ctrl-C: do not leave the child running
            process.kill()
            process.wait()
            raise
    row = report.empty_row(spec["model"], spec["category"])
    result_path = run_dir / RESULT_FILE
    result = json.loads(result_path.read_text()) if result_path.is_file() else {}
    if timed_out:
        row.update(status="failed", error=f"timed out after {timeout} s (--timeout)")
    elif result.get("status") == "ok" and code == 0:
        row["status"] = "ok"
        metrics = result.get("metrics", {})
        for column, key in report.METRIC_KEYS.items():
            value = metrics.get(key)
            row[column] = float(value) if value is not None else math.nan
        row["fit_s"], row["infer_img_per_s"] = result["fit_s"], result["infer_img_per_s"]
    else:
        error = result.get("error") or _last_log_line(log_path) or "no output"
        row.update(status="failed", error=f"{error} (exit code {code})" if not result else error)
    peak_self = result.get("peak_rss_gb_self")
    row["peak_rss_gb"] = peak_gb if peak_gb is not None else (peak_self if peak_self is not None else math.nan)
    row["details"] = result
    return row


class _Outputs:
    """Writes the tables (after every run) and the plots (at the end)."""

    def __init__(self, args: argparse.Namespace, protocol: Protocol, config: dict[str, Any]) -> None:
        self.args, self.protocol, self.config = args, protocol, config
        self.output = args.output_dir
        self.notes: list[str] = []

    def header(self, rows: list[dict[str, Any]]) -> list[str]:
        p = self.protocol
        details = next((r["details"] for r in rows if r.get("details", {}).get("status") == "ok"), {})
        versions = details.get("versions", {})
        overrides = self.config["overrides"]
        changed = f", overridden by {', '.join(f'`{o}`' for o in overrides)}" if overrides else ""
        lines = [
            f"Protocol `{p.name}` ({p.summary}{changed}); image size {p.image_size}x{p.image_size} (resize, no crop) "
            f"and seed {p.seed} for every model; written {self.config['date']}.",
            f"Data: {self.config['data']}.",
        ]
        if details:
            lines.append(
                f"Device: {details.get('device', '?')}; torch {versions.get('torch', '?')}, anomalib "
                f"{versions.get('anomalib', '?')}, lightning {versions.get('lightning', '?')}."
            )
        lines.append("Command: `" + " ".join(self.config["command"]) + "`")
        return [f"{line}  " for line in lines[:-1]] + lines[-1:]

    def settings_rows(self, rows: list[dict[str, Any]]) -> list[tuple[str, str]]:
        result = []
        for model in self.args.models:
            text = self.protocol.models[model].describe()
            if model in TWO_STAGE_MODELS:
                textures = {r["details"].get("texture") for r in rows if r["model"] == model and r.get("details")}
                textures.discard(None)
                texture = ", ".join(sorted(textures)) or (str(self.args.texture_dir or "procedural"))
                text += f"; teacher {self.args.teacher_weights}; textures {texture}"
            elif model == "Patchcore":
                text += f"; timm {TIMM_BACKBONE} layer2+layer3"
            else:
                text += f"; timm {TIMM_BACKBONE} layer1-3, no early stopping"
            result.append((model, text))
        return result

    def write(self, rows: list[dict[str, Any]], images: list[str]) -> None:
        self.output.mkdir(parents=True, exist_ok=True)
        report.atomic_write_text(self.output / "results.csv", report.csv_text(rows))
        markdown = report.markdown_text(
            rows,
            "Benchmark: " + ", ".join(self.args.models),
            self.header(rows),
            self.settings_rows(rows),
            [*self.config["method_notes"], *self.notes],
            images,
        )
        report.atomic_write_text(self.output / "results.md", markdown)
        data = {**self.config, "protocol": self.protocol.to_dict(), "notes": self.notes, "runs": rows}
        report.atomic_write_text(self.output / "results.json", json.dumps(data, indent=2, default=str))

    def plots(self, rows: list[dict[str, Any]]) -> list[str]:
        """Draw the plots; a plot that fails becomes a note (the tables are already written)."""
        finished = [r for r in rows if r["status"] != "pending"]
        jobs = [
            ("metrics.png", lambda path: report.plot_metrics(finished, path) or True),
            ("costs.png", lambda path: report.plot_costs(finished, path) or True),
        ]
        for category in dict.fromkeys(r["category"] for r in rows):
            predictions = {
                r["model"]: self.output / "runs" / category / r["model"] / PREDICTIONS_FILE
                for r in rows
                if r["category"] == category and r["status"] == "ok"
            }
            title = f"{category}: anomaly maps, each model's scaled to its own test-set min..max"
            jobs.append(
                (
                    f"anomaly_maps_{category}.png",
                    lambda path, p=predictions, t=title: report.plot_anomaly_maps(p, path, t),
                )
            )
        images = []
        for name, draw in jobs:
            try:
                if draw(self.output / name):
                    images.append(name)
            except Exception as error:
                self.notes.append(f"Could not draw {name}: {error_line(error)}")
        return images


def _overrides(args: argparse.Namespace) -> list[str]:
    """The protocol settings replaced on the command line, as options (e.g. ``["--steps 1 1"]``)."""
    options = {
        "image_size": "--image-size",
        "seed": "--seed",
        "steps": "--steps",
        "epochs": "--epochs",
        "coreset_ratio": "--coreset-ratio",
        "batch_size": "--batch-size",
        "eval_batch_size": "--eval-batch-size",
        "num_workers": "--num-workers",
    }
    result = []
    for attribute, option in options.items():
        value = getattr(args, attribute)
        if value is not None:
            result.append(f"{option} {' '.join(map(str, value)) if isinstance(value, list) else value}")
    return result


def _method_notes(args: argparse.Namespace, same_weights: bool | None) -> list[str]:
    notes = [
        "Validation split = test split (anomalib's MVTec AD default). It only sets anomalib's adaptive F1 "
        "thresholds; no early stopping and no checkpoint selection: every model is tested after its last "
        "training step. AUROC, AP, AUPRO and IAP do not depend on a threshold.",
        "Metrics are computed on raw scores, as the paper does (anomalib's default evaluates its min-max normalised "
        "scores, clamped to [0, 1] around the threshold, which ties scores)."
        if not args.normalize_scores
        else "Metrics are computed on min-max normalised and clamped scores, as anomalib's default post-processing.",
        "Ground-truth masks are resized as the paper does (bilinear with antialiasing, threshold 0.5) for every "
        "model; anomalib's default resizes them nearest-neighbour.",
        "fit_s: Engine.fit wall time (training + one validation pass). infer_img_per_s: test images per second "
        "of the model's forward (resize, network, post-processing) at the evaluation batch size, after a warm-up "
        "batch, without image decoding or metrics. peak_rss_gb: peak resident memory of the run's process.",
        "pixel AP = paper_evaluator's pixel_AUPR; AUPRO at FPR limit 0.3; IAP and IAP@90 are instance AP.",
    ]
    if same_weights:
        notes.append(
            f"Teacher weights: DeSTSeg/PFADSeg ({args.teacher_weights}) and timm {TIMM_BACKBONE} (Patchcore, "
            "Stfpm) hold identical conv1..layer3 tensors (checked before the runs)."
        )
    return notes


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; return 0 if every run succeeded (or was skipped), 1 if one failed.

    Raises:
        SystemExit: With status 2 on bad input (argparse's message on stderr).

    """
    parser = build_parser()
    args = parser.parse_args(argv)
    args.models = [name for name in MODEL_NAMES if name in args.models]  # report order, no duplicates
    jobs = _mvtec_jobs(args, parser) if args.root is not None else _folder_jobs(args, parser)
    _check_weights_arguments(args, parser)
    _check_outputs(args, parser)
    protocol = override(
        get_protocol(args.protocol),
        image_size=args.image_size,
        seed=args.seed,
        num_workers=args.num_workers,
        train_batch_size=args.batch_size,
        eval_batch_size=args.eval_batch_size,
        steps=tuple(args.steps) if args.steps else None,
        epochs=args.epochs,
        coreset_sampling_ratio=args.coreset_ratio,
    )
    if protocol.image_size % SIZE_MULTIPLE:
        parser.error(f"--image-size must be a multiple of {SIZE_MULTIPLE}, got {protocol.image_size}")
    if args.steps and sum(args.steps) == 0:
        parser.error("--steps: STUDENT + SEGMENTATION must be at least 1")
    if args.accelerator == "gpu":
        import torch

        if not torch.cuda.is_available():
            parser.error("--accelerator gpu: no CUDA device is available (use auto or cpu)")

    skipped: dict[str, str] = {}
    if "PFADSeg" in args.models and (reason := pfadseg_import_error()):
        skipped["PFADSeg"] = reason
    plan = [(category, model) for category, _, _ in jobs for model in args.models]
    print(f"{PROG}: protocol {protocol.name}, {len(plan)} runs: " + ", ".join(f"{m}/{c}" for c, m in plan))
    for model in args.models:
        print(f"  {model}: {protocol.models[model].describe()}, image size {protocol.image_size}")
    if args.dry_run:
        return 0
    errors, weight_notes, same_weights = run_preflight(
        [m for m in args.models if m not in skipped], args.teacher_weights
    )
    if errors:
        parser.error("\n".join(errors))

    data = (
        f"MVTec AD layout at {args.root.expanduser().resolve()}"
        if args.root is not None
        else f"Folder dataset at {args.folder_root.expanduser().resolve()}"
    )
    config = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": [PROG, *(argv if argv is not None else sys.argv[1:])],
        "data": data,
        "models": args.models,
        "teacher_weights": args.teacher_weights,
        "texture_dir": str(args.texture_dir) if args.texture_dir else None,
        "same_teacher_weights": same_weights,
        "overrides": _overrides(args),
        "method_notes": _method_notes(args, same_weights),
    }
    notices = [n for _, _, dataset_notices in jobs for n in dataset_notices] + weight_notes + list(skipped.values())
    rows = [report.empty_row(model, category) for category, model in plan]
    if args.overwrite:
        _remove_outputs(args.output_dir)
    return _run_all(args, protocol, jobs, rows, skipped, notices, _Outputs(args, protocol, config))


def _run_all(
    args: argparse.Namespace,
    protocol: Protocol,
    jobs: list[tuple[str, dict, list[str]]],
    rows: list[dict[str, Any]],
    skipped: dict[str, str],
    notices: list[str],
    outputs: _Outputs,
) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    for notice in notices:
        console.print(f"[yellow]notice:[/yellow] {notice}")
    outputs.notes.extend(notices)
    outputs.write(rows, [])
    datasets = {category: dataset for category, dataset, _ in jobs}
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        overall = progress.add_task("benchmark", total=len(rows))
        for row in rows:
            model, category = row["model"], row["category"]
            progress.update(overall, description=f"{model} on {category}")
            if model in skipped:
                row.update(status="skipped", error=skipped[model])
            else:
                spec = {
                    "model": model,
                    "category": category,
                    "dataset": datasets[category],
                    "settings": protocol.models[model].to_dict(),
                    "image_size": protocol.image_size,
                    "seed": protocol.seed,
                    "num_workers": protocol.num_workers,
                    "accelerator": args.accelerator,
                    "teacher_weights": str(args.teacher_weights),
                    "texture_dir": str(args.texture_dir.expanduser().resolve()) if args.texture_dir else None,
                    "normalize_scores": args.normalize_scores,
                    "panel_images": args.panel_images,
                    "keep_checkpoints": args.keep_checkpoints,
                    "run_dir": str((args.output_dir / "runs" / category / model).resolve()),
                }
                row.update(run_one(spec, args.timeout, lambda: progress.refresh()))
                if row["status"] == "ok" and all(math.isnan(row[c]) for c in report.PIXEL_COLUMNS):
                    notice = f"{model} on {category}: no pixel metrics (the test set has no masks)."
                    if not any(category in n and "mask" in n for n in outputs.notes):
                        outputs.notes.append(notice)
            summary = (
                f"image AUROC {row['image_AUROC']:.3f}, fit {row['fit_s']:.0f} s"
                if row["status"] == "ok"
                else row["error"]
            )
            colour = "green" if row["status"] == "ok" else "yellow" if row["status"] == "skipped" else "red"
            progress.console.print(f"[{colour}]{row['status']}[/{colour}] {model} on {category}: {summary}")
            progress.advance(overall)
            outputs.write(rows, [])
    images = outputs.plots(rows)
    outputs.write(rows, images)
    console.print(f"results: {(args.output_dir / 'results.md').resolve()}")
    return 1 if any(row["status"] == "failed" for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
