"""Training across several processes with Lightning's DDP: two CPU processes (gloo) on the tiny dataset.

``ddp_worker.py`` runs anomalib's Engine with ``strategy="ddp", devices=2`` for DeSTSeg and then PFADSeg (fit, then
test) in a subprocess, because Lightning's ``ddp`` launcher starts the second process by running the script again.
Each process writes a JSON report; these tests compare them. One launch serves every test (module fixture); a second
runs DeSTSeg with ``strategy="ddp_spawn"`` and is compared with the first. ``sync_batchnorm`` is not tested: torch's
``SyncBatchNorm`` only runs on GPUs.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

WORKER = Path(__file__).with_name("ddp_worker.py")
MODELS = ("DeSTSeg", "PFADSeg")
SEED = 0
STEPS, BATCH, SIZE = 2, 4, 64  # as in ddp_worker.py
LAUNCH_VARIABLES = ("LOCAL_RANK", "NODE_RANK", "GLOBAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")

needs_ddp = pytest.mark.skipif(
    not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
    reason="torch.distributed with the gloo backend is not available",
)


def _launch(out: Path, dataset: Path, weights: Path, models: tuple[str, ...], *options: str) -> dict:
    """Run the worker; return its reports per model and rank, its output and its folder."""
    env = {key: value for key, value in os.environ.items() if key not in LAUNCH_VARIABLES}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    command = [sys.executable, str(WORKER), "--data", str(dataset), "--weights", str(weights)]
    command += ["--out", str(out), "--seed", str(SEED), "--models", *models, *options]
    result = subprocess.run(command, cwd=out, env=env, capture_output=True, text=True, timeout=900, check=False)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"DDP run failed ({result.returncode}):\n{output[-6000:]}"
    reports = {name: [json.loads((out / f"{name}_rank{rank}.json").read_text()) for rank in (0, 1)] for name in models}
    return {"reports": reports, "stdout": result.stdout, "out": out}


@pytest.fixture(scope="module")
def ddp_run(tiny_dataset: Path, teacher_weights: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Launch the worker once with ``strategy="ddp"`` for both models."""
    return _launch(tmp_path_factory.mktemp("ddp"), tiny_dataset, teacher_weights, MODELS)


@pytest.fixture(scope="module")
def spawn_run(tiny_dataset: Path, teacher_weights: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """DeSTSeg with ``strategy="ddp_spawn"`` (docs/multi_gpu.md says it works)."""
    out = tmp_path_factory.mktemp("ddp_spawn")
    return _launch(out, tiny_dataset, teacher_weights, ("DeSTSeg",), "--strategy", "ddp_spawn")


@pytest.mark.slow
@needs_ddp
@pytest.mark.parametrize("name", MODELS)
def test_both_processes_take_the_same_optimiser_steps(ddp_run: dict, name: str) -> None:
    for report in ddp_run["reports"][name]:
        assert report["world_size"] == 2
        # The schedule counts optimiser steps: 2 + 2, not multiplied by the number of processes.
        assert report["global_step"] == 2 * STEPS


@pytest.mark.slow
@needs_ddp
@pytest.mark.parametrize("name", MODELS)
def test_processes_hold_identical_weights_after_each_stage(ddp_run: dict, name: str) -> None:
    rank0, rank1 = (report["weights"] for report in ddp_run["reports"][name])
    for moment in ("start", "stage1", "end"):
        for part in ("student", "segmentation", "buffers"):
            assert rank0[moment][part] == rank1[moment][part], f"{part} differs between processes at {moment}"
    # Each stage trained its own part and left the other alone, so the equality above is not trivial: the processes
    # saw different images and anomalies, and only synchronised gradients keep their weights equal.
    assert rank0["stage1"]["student"] != rank0["start"]["student"]
    assert rank0["stage1"]["segmentation"] == rank0["start"]["segmentation"]
    assert rank0["end"]["segmentation"] != rank0["stage1"]["segmentation"]
    assert rank0["end"]["student"] == rank0["stage1"]["student"]


@pytest.mark.slow
@needs_ddp
@pytest.mark.parametrize("name", MODELS)
def test_anomalies_differ_per_process_and_follow_the_seed(ddp_run: dict, name: str) -> None:
    from ddp_worker import digest

    from anomalib_destseg.data import SyntheticAnomalyGenerator
    from anomalib_destseg.training.random_stream import RandomStream

    reports = ddp_run["reports"][name]
    masks = [report["masks"] for report in reports]
    assert len(masks[0]) == len(masks[1]) == 2 * STEPS
    assert all(first != second for first, second in zip(*masks, strict=True))
    for rank, report in enumerate(reports):
        assert report["initial_seed"] == SEED + rank
        # Process r draws what one process seeded with seed + r draws (the tiny dataset needs no rotation).
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(SEED + rank)
            stream = RandomStream.from_torch_seed()
        with stream.active():
            _, expected = SyntheticAnomalyGenerator()(torch.zeros(BATCH, 3, SIZE, SIZE))
        assert report["masks"][0] == digest([expected])


@pytest.mark.slow
@needs_ddp
@pytest.mark.parametrize("name", MODELS)
def test_checkpoint_images_and_metrics_are_produced_once(ddp_run: dict, tiny_dataset: Path, name: str) -> None:
    reports = ddp_run["reports"][name]
    results = ddp_run["out"] / "results" / name
    checkpoints = sorted(results.rglob("*.ckpt"))
    # rank 0 saves: anomalib's checkpoint, and the resumable one (end of stage 1: a collective save, one file)
    assert [path.name for path in checkpoints] == ["model.ckpt", "resume.ckpt"], checkpoints
    assert checkpoints[0].parent == checkpoints[1].parent
    assert torch.load(checkpoints[1], map_location="cpu", weights_only=False)["global_step"] == STEPS
    version = checkpoints[0].parents[2]  # <version>/weights/lightning/model.ckpt
    # Each process tested its own share of the test set, together all of it, once.
    seen = [set(report["test_images"]) for report in reports]
    assert not seen[0] & seen[1]
    test_images = {str(path) for path in (tiny_dataset / "synthetic" / "test").rglob("*.png")}
    assert seen[0] | seen[1] == test_images
    # Result images of both processes sit next to the checkpoint, one per test image.
    images = sorted(path.relative_to(results) for path in results.rglob("*.png"))
    assert len(images) == len(test_images)
    assert all((results / path).is_relative_to(version) for path in images)
    # The metrics are computed over the whole test set: the same values in both processes, printed once.
    assert reports[0]["metrics"] == reports[1]["metrics"]
    assert 0.0 <= reports[0]["metrics"][0]["image_AUROC"] <= 1.0
    assert ddp_run["stdout"].count("Test metric") == len(MODELS)


@pytest.mark.slow
@needs_ddp
def test_ddp_spawn_trains_in_spawned_processes_exactly_as_ddp(spawn_run: dict, ddp_run: dict) -> None:
    """``ddp_spawn`` starts two fresh processes (for fitting, again for testing) and trains as ``ddp`` does.

    Same seeds, so each process draws the same images and anomalies as in the ``ddp`` run, and the synchronised
    weights after each stage are bitwise those of the ``ddp`` run.
    """
    spawned, plain = spawn_run["reports"]["DeSTSeg"], ddp_run["reports"]["DeSTSeg"]
    launcher = spawned[0]["launcher_pid"]
    assert len({report["pid"] for report in spawned} | {launcher}) == 3  # two spawned processes besides the launcher
    assert all(report["start_method"] == "spawn" for report in spawned)
    assert all(report["start_method"] == "popen" for report in plain)  # ddp runs the script again instead
    for spawned_report, plain_report in zip(spawned, plain, strict=True):
        assert spawned_report["world_size"] == 2 and spawned_report["global_step"] == 2 * STEPS
        assert spawned_report["train_images"] == plain_report["train_images"]
        assert spawned_report["masks"] == plain_report["masks"]
        assert spawned_report["weights"] == plain_report["weights"]  # start, after stage 1, end: all bitwise
    assert spawned[0]["weights"]["end"]["segmentation"] != spawned[0]["weights"]["start"]["segmentation"]
    # Testing spawns again: the two processes tested disjoint halves of the test set; the launcher got the metrics.
    seen = [set(report["test_images"]) for report in spawned]
    assert not seen[0] & seen[1] and len(seen[0] | seen[1]) == 8
    assert spawned[0]["metrics"] == plain[0]["metrics"]
    # One results folder: with ddp every process runs the script and anomalib's Engine makes one folder each.
    folders = [
        {path.name for path in (run["out"] / "results" / "DeSTSeg").glob("*/*/v*")} for run in (spawn_run, ddp_run)
    ]
    assert folders == [{"v0"}, {"v0", "v1"}]
