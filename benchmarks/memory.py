r"""Memory of DeSTSeg on CPU: peak resident memory (RSS) of training and inference, and RSS over a long run.

Every measurement runs in a fresh process of its own, so that each peak (``resource.getrusage(...).ru_maxrss``) is
that case's alone:

- ``train``: anomalib's Engine fits DeSTSeg for ``--steps`` optimiser steps (half student, half segmentation
  network, so both stages' peaks are covered) on a generated MVTec-layout dataset at ``--image-size``, batch size
  B; validation is switched off so that the figure is training alone. Reported: RSS when training starts (imports,
  model, optimisers, data), peak RSS, and the difference.
- ``infer``: the torch model in eval mode under ``torch.inference_mode()``, ``--steps`` forward passes on random
  ``[B, 3, S, S]`` images (the model and its normalisation, as exported). Reported: RSS before the first pass, peak.
- ``growth``: a long training run at a small size (``--growth-size``, ``--growth-batch``, ``--growth-steps``; one
  fifth student steps, the rest segmentation steps, as in the reference's 1000 + 4000), RSS read from
  ``/proc/self/status`` every ``--every`` steps, and per stage the least-squares slope of RSS against the step,
  leaving out each stage's first sample (its warm-up: the first step allocates activations, gradients and momentum
  buffers once). A slope near 0 MiB per 100 steps means no growth. The texture cache (at most 256 resized textures:
  3 MiB at 64x64, 48 MiB at 256x256) is bounded.

Usage: the full run (on a quiet machine; the batch-32 training case needs several GiB and a few minutes)::

    .venv/bin/python benchmarks/memory.py --image-size 256 --batch-sizes 8 32 --steps 4 \
        --growth-size 64 --growth-batch 8 --growth-steps 400 --every 20 \
        --texture-dir /work/shared/data/dtd/images --output docs/benchmarks/memory.json

A quick check of the script itself::

    .venv/bin/python benchmarks/memory.py --batch-sizes 8 --steps 2 --growth-steps 100 --every 10

"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_TEACHER = REPO.parent / "shared" / "weights" / "resnet18_imagenet1k_layer1to3.pth"
MIB = 1024 * 1024


def current_rss_mib() -> float:
    """Resident memory of this process now (Linux ``/proc``; elsewhere the peak so far)."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return peak_rss_mib()


def peak_rss_mib() -> float:
    """Peak resident memory of this process (``ru_maxrss``: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / MIB if sys.platform == "darwin" else peak / 1024


def slope_per_100_steps(points: list[tuple[int, float]]) -> float:
    """Least-squares slope of RSS (MiB) against the step, in MiB per 100 steps (0 for fewer than 2 points)."""
    if len(points) < 2:
        return 0.0
    steps = [step for step, _ in points]
    values = [value for _, value in points]
    mean_step, mean_value = sum(steps) / len(steps), sum(values) / len(values)
    covariance = sum((s - mean_step) * (v - mean_value) for s, v in zip(steps, values, strict=True))
    variance = sum((s - mean_step) ** 2 for s in steps)
    return 100 * covariance / variance if variance else 0.0


# --- the cases, each in its own process ----------------------------------------------------------------------
def _train(
    args: argparse.Namespace, size: int, batch: int, steps: int, student_steps: int, every: int | None
) -> dict[str, Any]:
    import lightning
    from anomalib.data import MVTecAD
    from anomalib.engine import Engine
    from lightning.pytorch import Callback

    from anomalib_destseg.benchmark.models import build_model
    from anomalib_destseg.components import took_a_step
    from anomalib_destseg.data import make_synthetic_dataset

    class Probe(Callback):
        def __init__(self) -> None:
            self.start = 0.0
            self.points: list[tuple[int, float]] = []

        def on_train_start(self, trainer, pl_module) -> None:
            self.start = current_rss_mib()
            self.points.append((0, self.start))

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            step = trainer.global_step
            if every and took_a_step(outputs) and step % every == 0:
                self.points.append((step, current_rss_mib()))
                print(f"  step {step:5d}: RSS {self.points[-1][1]:8.1f} MiB", file=sys.stderr, flush=True)

    lightning.seed_everything(0)
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        make_synthetic_dataset(root / "data", image_size=size, num_train=2 * batch, num_test_good=2, num_test_defect=2)
        model = build_model(
            "DeSTSeg",
            size,
            teacher_weights=args.teacher_weights,
            texture_dir=args.texture_dir,
            student_steps=student_steps,
            segmentation_steps=steps - student_steps,
            evaluator=False,
        )
        datamodule = MVTecAD(
            root=root / "data", category="synthetic", train_batch_size=batch, eval_batch_size=batch, num_workers=0
        )
        probe = Probe()
        engine = Engine(
            default_root_dir=root / "results",
            accelerator="cpu",
            devices=1,
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            limit_val_batches=0,
            callbacks=[probe],
        )
        started = time.perf_counter()
        engine.fit(model, datamodule=datamodule)
        seconds = time.perf_counter() - started
    return {
        "steps_done": engine.trainer.global_step,
        "rss_at_train_start_mib": probe.start,
        "peak_rss_mib": peak_rss_mib(),
        "seconds": seconds,
        "student_steps": student_steps,
        "points": probe.points,
    }


def _infer(args: argparse.Namespace, size: int, batch: int, steps: int) -> dict[str, Any]:
    import torch

    from anomalib_destseg import DeSTSegModel

    torch.manual_seed(0)
    model = DeSTSegModel().eval()
    model.teacher.load_weights(args.teacher_weights)
    images = torch.rand(batch, 3, size, size)
    before = current_rss_mib()
    started = time.perf_counter()
    with torch.inference_mode():
        for _ in range(steps):
            model(images)
    return {"rss_before_mib": before, "peak_rss_mib": peak_rss_mib(), "seconds": time.perf_counter() - started}


def run_case(args: argparse.Namespace) -> None:
    """Run one case in this process and print its result as one JSON line."""
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.case == "infer":
        result = _infer(args, args.image_size, args.batch_size, args.steps)
    elif args.case == "train":
        result = _train(args, args.image_size, args.batch_size, args.steps, (args.steps + 1) // 2, every=None)
    else:
        steps = args.growth_steps
        result = _train(args, args.growth_size, args.growth_batch, steps, max(steps // 5, 1), every=args.every)
    print("RESULT " + json.dumps(result), flush=True)


# --- the driver --------------------------------------------------------------------------------------------------
def _spawn(args: argparse.Namespace, case: str, batch: int | None = None) -> dict[str, Any]:
    command = [sys.executable, str(Path(__file__).resolve()), "--case", case, *args.passthrough]
    if batch is not None:
        command += ["--batch-size", str(batch)]
    completed = subprocess.run(command, capture_output=True, text=True, check=False, env=os.environ.copy())
    for line in completed.stderr.splitlines():
        if line.startswith("  step "):
            print(line, flush=True)
    results = [line for line in completed.stdout.splitlines() if line.startswith("RESULT ")]
    if completed.returncode != 0 or not results:
        print(completed.stdout[-3000:], completed.stderr[-5000:], sep="\n", file=sys.stderr)
        msg = f"case {case} (batch {batch}) failed with exit code {completed.returncode}"
        raise RuntimeError(msg)
    return json.loads(results[-1].removeprefix("RESULT "))


def main(argv: list[str] | None = None) -> None:
    """Parse the arguments; run one case (``--case``) or all of them, each in a fresh process."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", choices=["train", "infer", "growth"], help=argparse.SUPPRESS)
    parser.add_argument("--batch-size", type=int, default=8, help=argparse.SUPPRESS)
    parser.add_argument("--image-size", type=int, default=256, help="side of the square images (multiple of 32)")
    parser.add_argument("--batch-sizes", type=int, nargs="*", default=[8, 32], help="batch sizes (none: skip)")
    parser.add_argument("--steps", type=int, default=4, help="training steps / inference passes per case")
    parser.add_argument("--growth-size", type=int, default=64, help="image side of the long run")
    parser.add_argument("--growth-batch", type=int, default=8, help="batch size of the long run")
    parser.add_argument("--growth-steps", type=int, default=300, help="steps of the long run (0: skip it)")
    parser.add_argument("--every", type=int, default=25, help="read the RSS every this many steps in the long run")
    parser.add_argument("--teacher-weights", default=str(DEFAULT_TEACHER) if DEFAULT_TEACHER.is_file() else "imagenet")
    parser.add_argument("--texture-dir", default=None, help="texture folder (default: procedural textures)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--output", type=Path, default=None, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    if args.case:
        run_case(args)
        return

    shared = ["--image-size", str(args.image_size), "--steps", str(args.steps), "--teacher-weights"]
    shared += [args.teacher_weights, "--threads", str(args.threads), "--growth-size", str(args.growth_size)]
    shared += ["--growth-batch", str(args.growth_batch), "--growth-steps", str(args.growth_steps)]
    shared += ["--every", str(args.every), *(["--texture-dir", args.texture_dir] if args.texture_dir else [])]
    args.passthrough = shared
    import torch

    report: dict[str, Any] = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{args.threads or torch.get_num_threads()} threads",
        "texture_dir": args.texture_dir,
        "image_size": args.image_size,
        "train": {},
        "infer": {},
    }
    print(f"# DeSTSeg memory on CPU ({report['machine']})")
    print(f"\n## Peak RSS at {args.image_size}x{args.image_size}, {args.steps} steps per case (a fresh process each)\n")
    print("| case | batch | RSS at start (MiB) | peak RSS (MiB) | peak - start (MiB) | seconds |")
    print("|---|---:|---:|---:|---:|---:|", flush=True)
    for batch in args.batch_sizes:
        train = _spawn(args, "train", batch)
        report["train"][batch] = train
        start = train["rss_at_train_start_mib"]
        print(
            f"| training | {batch} | {start:.0f} | {train['peak_rss_mib']:.0f} | {train['peak_rss_mib'] - start:.0f} "
            f"| {train['seconds']:.1f} |",
            flush=True,
        )
        infer = _spawn(args, "infer", batch)
        report["infer"][batch] = infer
        before = infer["rss_before_mib"]
        peak = infer["peak_rss_mib"]
        print(
            f"| inference | {batch} | {before:.0f} | {peak:.0f} | {peak - before:.0f} | {infer['seconds']:.1f} |",
            flush=True,
        )
    if args.growth_steps > 0:
        size, batch, steps = args.growth_size, args.growth_batch, args.growth_steps
        print(f"\n## RSS over {steps} training steps at {size}x{size}, batch {batch} (every {args.every} steps)\n")
        sys.stdout.flush()
        growth = _spawn(args, "growth")
        points = [tuple(point) for point in growth["points"]]
        boundary = growth["student_steps"]
        stages = {
            "student": [p for p in points if 0 < p[0] <= boundary],
            "segmentation": [p for p in points if p[0] > boundary],
        }
        print("| step | stage | RSS (MiB) |")
        print("|---:|---|---:|")
        for step, rss in points:
            stage = "(start)" if step == 0 else "student" if step <= boundary else "segmentation"
            print(f"| {step} | {stage} | {rss:.1f} |")
        print()
        for stage, samples in stages.items():
            settled = samples[1:]  # without the stage's first sample (warm-up)
            if len(settled) < 2:
                print(f"- {stage} stage: too few samples for a slope (use more steps or a smaller --every)")
                continue
            slope = slope_per_100_steps(settled)
            growth[f"slope_{stage}_mib_per_100_steps"] = slope
            span = f"steps {settled[0][0]}..{settled[-1][0]}, {len(settled)} samples"
            print(f"- {stage} stage: slope {slope:+.2f} MiB per 100 steps ({span})")
        print(f"- peak {growth['peak_rss_mib']:.0f} MiB; {growth['seconds']:.0f} s for {steps} steps")
        report["growth"] = growth
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
