"""The measurement scripts of benchmarks/ run (at toy scale) and write their reports; their figures are in docs/."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO

SCRIPTS = REPO / "benchmarks"


def _run(arguments: list[str], cwd: Path) -> str:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, *arguments], cwd=cwd, env=env, capture_output=True, text=True, check=False)
    assert result.returncode == 0, (result.stdout + result.stderr)[-5000:]
    return result.stdout + result.stderr


@pytest.mark.slow
def test_cpu_speed_script_writes_its_table(teacher_weights: Path, tmp_path: Path) -> None:
    report = tmp_path / "cpu_speed.md"
    small = ["--models", "destseg", "--variants", "torch_fp32", "--image-size", "64", "--batch-size", "2"]
    small += ["--iterations", "1", "--warmup", "0", "--conv-iterations", "1", "--profile", "never"]
    _run(
        [str(SCRIPTS / "cpu_speed.py"), *small, "--teacher-weights", str(teacher_weights), "--output", str(report)],
        tmp_path,
    )
    assert "| destseg | torch_fp32 | f32 |" in report.read_text()


@pytest.mark.slow
def test_memory_script_writes_its_report(teacher_weights: Path, tmp_path: Path) -> None:
    report = tmp_path / "memory.json"
    small = ["--image-size", "64", "--batch-sizes", "2", "--steps", "1", "--growth-steps", "0"]
    _run(
        [str(SCRIPTS / "memory.py"), *small, "--teacher-weights", str(teacher_weights), "--output", str(report)],
        tmp_path,
    )
    cases = json.loads(report.read_text())
    assert "train" in json.dumps(cases) and "infer" in json.dumps(cases)


def test_metric_speed_script_prints_timings(tmp_path: Path) -> None:
    output = _run([str(SCRIPTS / "metric_speed.py"), "--images", "4", "--size", "64", "--repeats", "1"], tmp_path)
    assert " s" in output
