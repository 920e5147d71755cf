r"""Training speed of DeSTSeg: seconds per optimiser step of each stage, fp32 against mixed precision and layouts.

Each case (image size x Lightning precision x memory layout) trains DeSTSeg through anomalib's Engine in a fresh
process on a generated dataset: ``--warmup`` untimed then ``--steps`` timed steps per stage, at ``--batch-size``.
The attainable convolution throughput in fp32 and bf16 (``cpu_speed.conv_limit``: one 3x3 conv 256->256 at 64x64,
batch 8, best of torch NCHW, torch channels-last and OpenVINO) is measured in the same run, so the ratios can be
read against what this machine's convolutions allow. Prints (and writes with ``--output``) a markdown table.

Usage (run alone on the machine: two torch processes on two cores do not share fairly)::

    .venv/bin/python benchmarks/training_speed.py --image-sizes 128 256 --precisions 32 bf16-mixed \
        --layouts nchw channels_last --output docs/benchmarks/training_speed.md

"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_TEACHER = REPO.parent / "shared" / "weights" / "resnet18_imagenet1k_layer1to3.pth"


def run_case(spec: dict[str, Any]) -> dict[str, Any]:
    """Train one case and return the median seconds per step of each stage (in this process)."""
    import torch
    from anomalib.data import MVTecAD
    from anomalib.engine import Engine
    from lightning.pytorch import Callback, seed_everything

    from anomalib_destseg.benchmark.models import build_model
    from anomalib_destseg.components import Stage, took_a_step
    from anomalib_destseg.data import make_synthetic_dataset
    from anomalib_destseg.training.callbacks import ChannelsLast

    class StepTimer(Callback):
        def __init__(self) -> None:
            self.times: dict[str, list[float]] = {stage.value: [] for stage in Stage}

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            self.start = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if took_a_step(outputs):
                stage = Stage.at(trainer.global_step - 1, pl_module.hparams.student_steps)
                self.times[stage.value].append(time.perf_counter() - self.start)

    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    seed_everything(0)
    per_stage = spec["warmup"] + spec["steps"]
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        size, batch = spec["image_size"], spec["batch_size"]
        make_synthetic_dataset(root / "data", image_size=size, num_train=2 * batch, num_test_good=1, num_test_defect=1)
        model = build_model(
            "DeSTSeg", size, teacher_weights=spec["teacher_weights"], student_steps=per_stage,
            segmentation_steps=per_stage, evaluator=False,
        )  # fmt: skip
        datamodule = MVTecAD(root=root / "data", category="synthetic", train_batch_size=batch, num_workers=0)
        timer = StepTimer()
        callbacks = [timer, ChannelsLast()] if spec["layout"] == "channels_last" else [timer]
        engine = Engine(
            default_root_dir=root / "results", accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
            enable_model_summary=False, limit_val_batches=0, precision=spec["precision"], callbacks=callbacks,
        )  # fmt: skip
        engine.fit(model, datamodule=datamodule)
    return {stage: statistics.median(times[spec["warmup"] :]) for stage, times in timer.times.items()} | {
        "threads": torch.get_num_threads()
    }


def _spawn(spec: dict[str, Any]) -> dict[str, Any]:
    command = [sys.executable, __file__, "--case", json.dumps(spec)]
    result = subprocess.run(command, capture_output=True, text=True, check=False, env={**os.environ})
    for line in reversed(result.stdout.splitlines()):
        if line.startswith("CASE "):
            return json.loads(line.removeprefix("CASE "))
    return {"error": (result.stderr.strip().splitlines() or ["no output"])[-1]}


def main(argv: list[str] | None = None) -> str:
    """Measure every case, then the conv limits; print (and optionally write) the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image-sizes", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--precisions", nargs="+", default=["32", "bf16-mixed"])
    parser.add_argument("--layouts", nargs="+", default=["nchw", "channels_last"], choices=["nchw", "channels_last"])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=4, help="timed steps per stage")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps at the start of each stage")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--teacher-weights", default=str(DEFAULT_TEACHER) if DEFAULT_TEACHER.is_file() else "imagenet")
    parser.add_argument("--conv-iterations", type=int, default=5)
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument("--case", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.case:
        print("CASE " + json.dumps(run_case(json.loads(args.case))), flush=True)
        return ""
    rows, baseline = [], {}
    header = "| image size | precision | layout | stage 1 s/step | stage 2 s/step | stage 2 speed-up vs fp32 NCHW |"
    lines = [header, "|---:|---|---|---:|---:|---:|"]
    for size in args.image_sizes:
        for precision in args.precisions:
            for layout in args.layouts:
                spec = {"image_size": size, "precision": precision, "layout": layout, "batch_size": args.batch_size,
                        "steps": args.steps, "warmup": args.warmup, "threads": args.threads,
                        "teacher_weights": args.teacher_weights}  # fmt: skip
                result = _spawn(spec)
                rows.append({**spec, **result})
                if "error" in result:
                    lines.append(f"| {size} | {precision} | {layout} | failed: {result['error']} | | |")
                    print(lines[-1], flush=True)
                    continue
                if precision == "32" and layout == "nchw":
                    baseline[size] = result["segmentation"]
                ratio = baseline.get(size, float("nan")) / result["segmentation"]
                lines.append(
                    f"| {size} | {precision} | {layout} | {result['student']:.3f} | {result['segmentation']:.3f} | "
                    f"{ratio:.2f}x |"
                )
                print(lines[-1], flush=True)
    sys.path.insert(0, str(Path(__file__).parent))
    from cpu_speed import conv_limit, machine_description

    limits = conv_limit(args.conv_iterations)
    machine = machine_description()
    notes = [
        "",
        f"Batch {args.batch_size}; median of {args.steps} timed steps per stage after {args.warmup} warm-up steps; "
        f"{rows[0].get('threads', '?')} torch threads; {machine['cpu']} ({machine['logical_cores']} logical cores, "
        f"{', '.join(machine['isa'])}), torch {machine['torch']}.",
        f"Convolution limit in the same run: fp32 {limits['fp32']['limit']:.1f} GMAC/s, bf16 "
        f"{limits['bf16']['limit']:.1f} GMAC/s (ratio {limits['bf16']['limit'] / limits['fp32']['limit']:.2f}).",
    ]
    table = "\n".join(lines + notes) + "\n"
    print("\n".join(notes))
    if args.output:
        args.output.write_text(table)
        args.output.with_suffix(".json").write_text(json.dumps({"rows": rows, "conv_limit": limits}, indent=2))
    return table


if __name__ == "__main__":
    main()
