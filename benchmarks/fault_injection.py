r"""Real faults on a real short training, then a resume: what survives what. Prints a markdown table.

Each case runs ``fault_worker.py`` (DeSTSeg, 64x64 generated images, 30 training images in batches of 8: three
optimiser steps and one skipped incomplete batch per epoch; 16 + 24 steps; ``checkpoint_every_n_steps=6``) in a
subprocess, strikes it (a signal at a chosen step, a full disk, a damaged checkpoint, an unreadable image, a NaN
batch), then resumes as the docs say and compares the final weights with those of an uninterrupted run. After every
case each checkpoint file in the case's folder is checked (zip structure and CRC-32 of every entry).

``--demo`` adds the README's demo itself: killed with SIGKILL at a random step, resumed with ``--resume``.

Usage (run alone on the machine; the disk-full cases mount a small tmpfs and need root)::

    .venv/bin/python benchmarks/fault_injection.py --seeds 0 1 2 --demo --output docs/benchmarks/fault_injection.md

"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).resolve().with_name("fault_worker.py")
DEFAULT_TEACHER = REPO.parent / "shared" / "weights" / "resnet18_imagenet1k_layer1to3.pth"
STUDENT_STEPS, SEGMENTATION_STEPS, TRAIN_IMAGES = 16, 24, 30
RUN_FOLDER = Path("DeSTSeg") / "MVTecAD" / "synthetic"
SAW_MARKERS = ("Error", "stopped", "Could not", "Nothing to resume", "not a complete", "Killed")


@dataclass
class Row:
    """One line of the table."""

    fault: str
    struck_at: str
    resumed_from: str
    finished: str
    final_weights: str
    steps_lost: str
    user_saw: str
    files_intact: str


@dataclass
class Run:
    """What one worker process did."""

    returncode: int
    lines: list[str]

    @property
    def last_step(self) -> int:
        """The last optimiser step it announced (0 if none)."""
        steps = [int(line.split()[1]) for line in self.lines if line.startswith("STEP ")]
        return steps[-1] if steps else 0

    @property
    def finished(self) -> bool:
        """Whether it trained to the planned step."""
        return any(line.startswith("FINISHED") for line in self.lines)

    def saw(self, scratch: Path) -> str:
        """The last line a user would read as the reason it stopped (or a note that it said nothing)."""
        if self.returncode < 0:
            return f"nothing (killed by {signal.Signals(-self.returncode).name})"
        said = [line.strip() for line in self.lines if any(marker in line for marker in SAW_MARKERS)]
        said = [line for line in said if not line.startswith(("Traceback", "File "))]
        return said[-1].replace(str(scratch), "<scratch>")[:400] if said else "nothing"


class Harness:
    """Runs the worker in a case folder and strikes it."""

    def __init__(self, work: Path, teacher: Path) -> None:
        self.work, self.teacher = work, teacher
        self.data = work / "data"
        self.baseline: dict | None = None

    def command(self, output: Path, *extra: str) -> list[str]:
        """The worker's command line."""
        steps = ["--student-steps", str(STUDENT_STEPS), "--segmentation-steps", str(SEGMENTATION_STEPS)]
        paths = ["--data", str(self.data), "--output", str(output), "--teacher-weights", str(self.teacher)]
        return [sys.executable, str(WORKER), *paths, *steps, *extra]

    def run(
        self, output: Path, *extra: str, strike: Callable[[str, subprocess.Popen], bool] | None = None, sig=None
    ) -> Run:
        """Run the worker; ``strike(line, process)`` is asked after every output line whether to send ``sig``."""
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}
        process = subprocess.Popen(
            self.command(output, *extra), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
        )
        lines, struck = [], False
        for line in process.stdout:
            lines.append(line.rstrip("\n"))
            if strike is not None and not struck and strike(line, process):
                process.send_signal(sig)
                struck = True
        return Run(process.wait(), lines)

    def kill_at_step(self, output: Path, step: int, sig: int, *extra: str) -> Run:
        """Send ``sig`` once the worker announces optimiser step ``step``."""
        return self.run(output, *extra, strike=lambda line, _: line.strip() == f"STEP {step}", sig=sig)

    def final_weights(self, output: Path) -> dict:
        """The model weights of the run's latest anomalib checkpoint."""
        import torch

        path = output / RUN_FOLDER / "latest" / "weights" / "lightning" / "model.ckpt"
        return torch.load(path, map_location="cpu", weights_only=False)["state_dict"]

    def compare(self, output: Path) -> str:
        """'identical' (every tensor bit for bit) or the largest absolute difference from the baseline."""
        weights = self.final_weights(output)
        differences = [
            (value.double() - self.baseline[name].double()).abs().max().item()
            for name, value in weights.items()
            if value.is_floating_point()
        ]
        if all(d == 0 for d in differences):
            return "identical"
        return f"differs (max abs {max(differences):.1e})"


def resume_file(output: Path, version: int = 0) -> Path:
    """A run's ``resume.ckpt``."""
    return output / RUN_FOLDER / f"v{version}" / "weights" / "lightning" / "resume.ckpt"


def checkpoint_step(path: Path) -> int:
    """The optimiser step a checkpoint holds."""
    import torch

    return int(torch.load(path, map_location="cpu", weights_only=False)["global_step"])


def files_intact(folder: Path) -> str:
    """Check every ``*.ckpt`` under ``folder`` (leftover ``.partial`` files are named, not checked)."""
    from anomalib_destseg.training.checkpoints import CheckpointFileError, check_checkpoint_file

    checked, bad = 0, []
    for path in sorted(folder.rglob("*.ckpt")):
        checked += 1
        try:
            check_checkpoint_file(path)
        except CheckpointFileError:
            bad.append(path.name)
    partial = sorted(p.name for p in folder.rglob("*.partial"))
    text = f"all {checked} intact" if not bad else f"DAMAGED: {', '.join(bad)}"
    return text + (f" (+ leftover {', '.join(partial)})" if partial else "")


def interrupted_then_resumed(harness: Harness, fault: str, case: Path, first: Run, resume_from: Path | None) -> Row:
    """Resume a struck run from ``resume_from`` (or start it again when there is none) and describe the outcome."""
    if resume_from is None or not resume_from.is_file():  # killed before the first save: the user starts again
        held, resumed = 0, "nothing: started again"
        second = harness.run(case)
    else:
        held = checkpoint_step(resume_from)
        resumed = f"{resume_from.name} (step {held})"
        second = harness.run(case, "--resume", str(resume_from))
    weights = harness.compare(case) if second.finished else "-"
    return Row(
        fault,
        f"step {first.last_step}",
        resumed,
        "yes" if second.finished else f"no: {second.saw(harness.work)}",
        weights,
        str(first.last_step - held),
        first.saw(harness.work),
        files_intact(case),
    )


def signal_case(harness: Harness, name: str, step: int, sig: int) -> Row:
    """Send ``sig`` at ``step``, resume from the run's ``resume.ckpt``."""
    case = harness.work / name
    first = harness.kill_at_step(case, step, sig)
    return interrupted_then_resumed(harness, name, case, first, resume_file(case))


def kill_during_write(harness: Harness) -> Row:
    """SIGKILL while the second ``resume.ckpt`` save is being written (its ``.partial`` file exists)."""
    case = harness.work / "sigkill-during-checkpoint-write"
    partial = resume_file(case).with_name("resume.ckpt.partial")
    saves = []

    def strike(line: str, _: subprocess.Popen) -> bool:
        if line.startswith("Saved"):
            saves.append(line)
        if len(saves) < 1:
            return False
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (partial.exists() and partial.stat().st_size > 0):
            time.sleep(0.001)
        return partial.exists()

    first = harness.run(case, strike=strike, sig=signal.SIGKILL)
    size = partial.stat().st_size if partial.exists() else 0
    row = interrupted_then_resumed(harness, "SIGKILL while resume.ckpt is written", case, first, resume_file(case))
    row.struck_at += f" ({size / 1e6:.0f} MB of the new file written)"
    return row


def disk_full(harness: Harness, freed: bool) -> Row:
    """Fill a small tmpfs holding the run after its first save; free it again once a save failed, or not."""
    name = "disk full during a save" + (", then freed" if freed else ", stays full")
    case = harness.work / ("disk-full-freed" if freed else "disk-full-stays")
    case.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1200m", "tmpfs", str(case)], check=False)
    if mounted.returncode != 0:
        return Row(name, "-", "-", "not run: mounting a tmpfs needs root", "-", "-", "-", "-")
    filler = case / "filler.bin"
    state = {"saves": 0, "failed": False}

    def strike(line: str, _: subprocess.Popen) -> bool:
        if line.startswith("Saved"):
            state["saves"] += 1
            if state["saves"] == 1:  # leave less than one checkpoint of space
                free = shutil.disk_usage(case).free
                with filler.open("wb") as handle:
                    handle.truncate(0)
                    handle.write(b"\0" * max(free - 100 * 2**20, 0))
        if line.startswith("Could not write") and freed and not state["failed"]:
            state["failed"] = True
            filler.unlink()
        return False

    try:
        first = harness.run(case, strike=strike)
        if first.finished:
            return Row(
                name,
                "a save",
                "-",
                "yes, without a restart",
                harness.compare(case),
                "0",
                next((x for x in first.lines if x.startswith("Could not write")), "nothing").replace(
                    str(harness.work), "<scratch>"
                )[:400],
                files_intact(case),
            )
        elsewhere = harness.work / (case.name + "-resumed")
        shutil.copytree(case / "DeSTSeg", elsewhere / "DeSTSeg", symlinks=True)
        row = interrupted_then_resumed(harness, name, elsewhere, first, resume_file(elsewhere))
        row.files_intact = files_intact(case)
        return row
    finally:
        subprocess.run(["umount", str(case)], check=False)


def damaged_checkpoint(harness: Harness, source: Path, how: str) -> Row:
    """Resume from a truncated or bit-flipped copy of a good ``resume.ckpt``; the copy must stay as it was."""
    case = harness.work / f"{how}-checkpoint"
    case.mkdir(parents=True, exist_ok=True)
    damaged = case / "resume.ckpt"
    data = bytearray(source.read_bytes())
    if how == "truncated":
        data = data[: len(data) // 2]
    else:
        data[len(data) // 2] ^= 0xFF
    damaged.write_bytes(bytes(data))
    run = harness.run(case / "run", "--resume", str(damaged))
    unchanged = damaged.read_bytes() == bytes(data)
    return Row(
        f"{how} checkpoint given to resume",
        "before training",
        "-",
        "no (refused before training)" if not run.finished else "YES: trained from a damaged file",
        "-",
        "-",
        run.saw(harness.work),
        "the damaged file is unchanged" if unchanged else "THE FILE WAS CHANGED",
    )


def unreadable_image(harness: Harness, step: int) -> Row:
    """A training image is overwritten with garbage after ``step``; once it is restored, resume."""
    from fault_worker import training_images

    case = harness.work / "unreadable-image"
    image = training_images(harness.data)[0]
    original = image.read_bytes()
    try:
        first = harness.run(case, "--unreadable-at-step", str(step))
    finally:
        image.write_bytes(original)
    return interrupted_then_resumed(
        harness, "a training image becomes unreadable", case, first, resume_file(case) if not first.finished else None
    )


def nan_batch(harness: Harness, step: int) -> Row:
    """A batch of NaN images at ``step``: the guard stops with last_good.ckpt; resume from it without the NaN."""
    case = harness.work / "nan-batch"
    first = harness.run(case, "--nan-at-step", str(step))
    last_good = resume_file(case).with_name("last_good.ckpt")
    return interrupted_then_resumed(harness, "a non-finite batch", case, first, last_good)


def demo_case(teacher: Path, work: Path, rng: random.Random) -> Row:
    """The README's demo: uninterrupted, then SIGKILL at a random step and ``--resume``; compare the weights."""
    import torch

    demo = [sys.executable, "-m", "anomalib_destseg.demo", "--teacher-weights", str(teacher)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}
    folder = RUN_FOLDER / "latest" / "weights" / "lightning" / "model.ckpt"

    def weights(output: Path) -> dict:
        return torch.load(output / folder, map_location="cpu", weights_only=False)["state_dict"]

    subprocess.run([*demo, "--output", str(work / "demo-uninterrupted")], cwd=work, env=env, check=True)
    target = rng.randint(2, 179)
    killed = work / "demo-killed"
    process = subprocess.Popen(
        [*demo, "--output", str(killed)], cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    last = 0
    for line in process.stdout:
        if line.startswith("step "):
            last = int(line.split()[1].split("/")[0])
            if last >= target:
                process.kill()
                break
    process.wait()
    saved = resume_file(killed)
    held = checkpoint_step(saved) if saved.is_file() else 0  # killed before the first save: --resume starts over
    resumed = subprocess.run(
        [*demo, "--output", str(killed), "--resume"], cwd=work, env=env, capture_output=True, text=True, check=False
    )
    finished = "trained 180 steps" in resumed.stdout
    a, b = weights(work / "demo-uninterrupted"), weights(killed)
    same = finished and all(torch.equal(a[k], b[k]) for k in a)
    return Row(
        "the demo (README), SIGKILL",
        f"step {last} (aimed at {target})",
        f"resume.ckpt (step {held})" if held else "nothing (started over)",
        "yes (180 steps)" if finished else f"no: {resumed.stderr[-300:]}",
        "identical" if same else "differs",
        str(last - held),
        "nothing (killed by SIGKILL)",
        files_intact(killed),
    )


def table(rows: list[Row]) -> str:
    """Markdown table."""
    header = "| fault | struck at | resumed from | finished after resuming | final weights vs uninterrupted |"
    header += " steps lost | what the user saw | checkpoint files afterwards |"
    lines = [header, "|" + "---|" * 8]
    for row in rows:
        cells = [str(value).replace("|", "/") for value in vars(row).values()]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    """Run the cases and print (and write) the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher-weights", type=Path, default=DEFAULT_TEACHER)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds of the random SIGKILL steps")
    parser.add_argument("--cases", nargs="+", default=["all"], help="all, or: sigkill write signals disk damaged")
    parser.add_argument("--demo", action="store_true", help="also kill and resume the README's demo (~5 minutes)")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--output", type=Path, default=None, help="also write the table here")
    args = parser.parse_args(argv)
    cases = {"sigkill", "write", "signals", "disk", "damaged", "data"} if "all" in args.cases else set(args.cases)
    sys.path.insert(0, str(WORKER.parent))
    work = args.work or Path(tempfile.mkdtemp(prefix="faults-"))
    harness = Harness(work, args.teacher_weights)
    started = time.perf_counter()

    baseline = harness.run(work / "uninterrupted")
    if not baseline.finished:
        raise SystemExit("the uninterrupted run failed:\n" + "\n".join(baseline.lines[-30:]))
    harness.baseline = harness.final_weights(work / "uninterrupted")
    save_seconds = [float(line.rsplit(" in ", 1)[1].split()[0]) for line in baseline.lines if line.startswith("Saved")]
    step_seconds = [float(line.split("s/step")[0].rsplit(", ", 1)[1]) for line in baseline.lines if "s/step" in line]
    costs = (
        f"uninterrupted run: {len(save_seconds)} saves of resume.ckpt, median {statistics.median(save_seconds):.2f} s"
        f" (max {max(save_seconds):.2f} s) for {resume_file(work / 'uninterrupted').stat().st_size / 1e6:.0f} MB;"
        f" a training step here took {statistics.median(step_seconds):.2f} s (median of the progress lines)"
    )
    print(costs, flush=True)
    total = STUDENT_STEPS + SEGMENTATION_STEPS
    rows = []
    if "sigkill" in cases:
        for seed in args.seeds:
            rng = random.Random(seed)
            for stage, (low, high) in (("1", (2, STUDENT_STEPS - 1)), ("2", (STUDENT_STEPS + 1, total - 1))):
                name = f"SIGKILL in stage {stage} (seed {seed})"
                rows.append(signal_case(harness, name, rng.randint(low, high), signal.SIGKILL))
                print(table(rows[-1:]).splitlines()[-1], flush=True)
    if "write" in cases:
        rows.append(kill_during_write(harness))
    if "signals" in cases:
        rows.append(signal_case(harness, "SIGTERM", STUDENT_STEPS + 5, signal.SIGTERM))
        rows.append(signal_case(harness, "KeyboardInterrupt (SIGINT)", STUDENT_STEPS + 5, signal.SIGINT))
    if "disk" in cases:
        rows += [disk_full(harness, freed=True), disk_full(harness, freed=False)]
    if "damaged" in cases:
        good = resume_file(work / "uninterrupted")
        rows += [damaged_checkpoint(harness, good, "truncated"), damaged_checkpoint(harness, good, "corrupted")]
    if "data" in cases:
        rows += [unreadable_image(harness, STUDENT_STEPS + 4), nan_batch(harness, STUDENT_STEPS + 4)]
    if args.demo:
        rows.append(demo_case(args.teacher_weights, work, random.Random(args.seeds[0])))
    report = table(rows) + "\n\n" + costs
    print(f"\n{report}\n\n{len(rows)} cases in {time.perf_counter() - started:.0f} s; scratch folder {work}")
    if args.output:
        args.output.write_text(report + "\n")
    return report


if __name__ == "__main__":
    main()
