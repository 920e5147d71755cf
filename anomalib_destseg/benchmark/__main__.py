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
import json
import math
import sys
from datetime import datetime, timezone
from typing import Any

from anomalib_destseg.components.input_size import SIZE_MULTIPLE
from anomalib_destseg.components.teacher import TIMM_NAME

from . import report
from .arguments import (
    PROG,
    build_parser,
    check_outputs,
    check_weights_arguments,
    folder_jobs,
    mvtec_jobs,
    remove_outputs,
)
from .protocols import MODEL_NAMES, SECOND_MAP_ROWS, TWO_STAGE_MODELS, Protocol, get_protocol, override, report_rows
from .runner import PREDICTIONS_FILE, error_line
from .subprocesses import run_one, run_preflight


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
            f"Protocol `{p.name}` ({p.summary}{changed}); image size {p.image_size}x{p.image_size} (resize, no crop)"
            f"{_tiling(p)} and seed {p.seed} for every model; written {self.config['date']}.",
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
                text += f"; timm {TIMM_NAME} layer2+layer3"
            else:
                text += f"; timm {TIMM_NAME} layer1-3, no early stopping"
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
                r["model"]: self.output
                / "runs"
                / category
                / r.get("run_model", r["model"])
                / (r.get("predictions_file") or PREDICTIONS_FILE)
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


def _tiling(protocol: Protocol) -> str:
    """``", cut into 4 tiles of 128x128"`` for a tiled protocol, else nothing."""
    tile = protocol.tile_size
    if tile is None:
        return ""
    count = (-(-protocol.image_size // tile)) ** 2
    return f", cut into {count} tile{'s' if count > 1 else ''} of {tile}x{tile} (anomalib's tiler, no overlap)"


def _overrides(args: argparse.Namespace) -> list[str]:
    """The protocol settings replaced on the command line, as options (e.g. ``["--steps 1 1"]``)."""
    options = {
        "image_size": "--image-size",
        "tile_size": "--tile-size",
        "seed": "--seed",
        "steps": "--steps",
        "epochs": "--epochs",
        "coreset_ratio": "--coreset-ratio",
        "batch_size": "--batch-size",
        "eval_batch_size": "--eval-batch-size",
        "num_workers": "--num-workers",
        "precision": "--precision",
        "channels_last": "--channels-last",
    }
    result = []
    for attribute, option in options.items():
        value = getattr(args, attribute)
        if isinstance(value, bool):
            result.append(option if value else option.replace("--", "--no-", 1))
        elif value is not None:
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
        "Each model's Lightning precision and memory layout are in its settings (default: 32-bit, NCHW); the timed "
        "inference pass runs in float32.",
    ]
    second = [f"{SECOND_MAP_ROWS[model]}" for model in args.models if model in SECOND_MAP_ROWS]
    if second:
        notes.append(
            f"{' and '.join(second)}: the same trained model as the row above it (no retraining), scored with its "
            "second anomaly map, the reference's DeST map (per level 1 - cosine similarity of the L2-normalised "
            "student and teacher features, resized to the finest level and multiplied; image score the top-100 "
            "mean; PFADSeg's is inferred), in the same Engine.test. fit_s and peak_rss_gb are the shared run's; "
            "infer_img_per_s times the model switched to output that map."
        )
    if same_weights:
        notes.append(
            f"Teacher weights: DeSTSeg/PFADSeg ({args.teacher_weights}) and timm {TIMM_NAME} (Patchcore, "
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
    jobs = mvtec_jobs(args, parser) if args.root is not None else folder_jobs(args, parser)
    check_weights_arguments(args, parser)
    check_outputs(args, parser)
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
        precision=args.precision,
        channels_last=args.channels_last,
        tile_size=args.tile_size,
    )
    if protocol.image_size % SIZE_MULTIPLE:
        parser.error(f"--image-size must be a multiple of {SIZE_MULTIPLE}, got {protocol.image_size}")
    if protocol.tile_size is not None and protocol.tile_size > protocol.image_size:
        parser.error(f"--tile-size {protocol.tile_size} is larger than the image size {protocol.image_size}")
    if args.steps and sum(args.steps) == 0:
        parser.error("--steps: STUDENT + SEGMENTATION must be at least 1")
    wants_fp16 = any(protocol.models[model].precision == "16-mixed" for model in args.models)
    if args.accelerator == "gpu" or wants_fp16:
        import torch

        if args.accelerator == "gpu" and not torch.cuda.is_available():
            parser.error("--accelerator gpu: no CUDA device is available (use auto or cpu)")
        if wants_fp16 and (args.accelerator == "cpu" or not torch.cuda.is_available()):
            parser.error(
                "--precision 16-mixed (fp16 with gradient scaling) needs a CUDA GPU; use bf16-mixed or 32 on a CPU"
            )

    plan = [(category, model) for category, _, _ in jobs for model in args.models]
    print(f"{PROG}: protocol {protocol.name}, {len(plan)} runs: " + ", ".join(f"{m}/{c}" for c, m in plan))
    for model in args.models:
        print(f"  {model}: {protocol.models[model].describe()}, image size {protocol.image_size}{_tiling(protocol)}")
    if args.dry_run:
        return 0
    errors, weight_notes, same_weights = run_preflight(args.models, args.teacher_weights)
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
    notices = [n for _, _, dataset_notices in jobs for n in dataset_notices] + weight_notes
    rows = [report.empty_row(name, category) for category, model in plan for name in report_rows(model)]
    if args.overwrite:
        remove_outputs(args.output_dir)
    return _run_all(args, protocol, jobs, rows, notices, _Outputs(args, protocol, config))


def _run_all(
    args: argparse.Namespace,
    protocol: Protocol,
    jobs: list[tuple[str, dict, list[str]]],
    rows: list[dict[str, Any]],
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
    plan = [(row["model"], row["category"]) for row in rows if row["model"] in MODEL_NAMES]
    with Progress(*columns, console=console) as progress:
        overall = progress.add_task("benchmark", total=len(plan))
        for model, category in plan:
            progress.update(overall, description=f"{model} on {category}")
            spec = {
                "model": model,
                "category": category,
                "dataset": datasets[category],
                "settings": protocol.models[model].to_dict(),
                "image_size": protocol.image_size,
                "tile_size": protocol.tile_size,
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
            results = {result["model"]: result for result in run_one(spec, args.timeout, lambda: progress.refresh())}
            for filled in rows:
                if filled["category"] == category and filled["model"] in results:
                    filled.update(results[filled["model"]])
            row = results[model]
            if row["status"] == "ok" and all(math.isnan(row[c]) for c in report.PIXEL_COLUMNS):
                notice = f"{model} on {category}: no pixel metrics (the test set has no masks)."
                if not any(category in n and "mask" in n for n in outputs.notes):
                    outputs.notes.append(notice)
            summary = (
                f"image AUROC {row['image_AUROC']:.3f}, fit {row['fit_s']:.0f} s"
                if row["status"] == "ok"
                else row["error"]
            )
            colour = "green" if row["status"] == "ok" else "red"
            progress.console.print(f"[{colour}]{row['status']}[/{colour}] {model} on {category}: {summary}")
            progress.advance(overall)
            outputs.write(rows, [])
    images = outputs.plots(rows)
    outputs.write(rows, images)
    console.print(f"results: {(args.output_dir / 'results.md').resolve()}")
    return 1 if any(row["status"] == "failed" for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
