"""Each benchmark run, and the weight check before them, in a process of its own (so each peak memory is its own)."""

import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from . import report
from .protocols import report_rows
from .runner import PREDICTIONS_FILE, PREFLIGHT_FLAG, PREFLIGHT_MARKER, RESULT_FILE


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


def run_one(spec: dict[str, Any], timeout: int | None, tick) -> list[dict[str, Any]]:
    """Run one (category, model) in a subprocess and return its result rows (never raises for a failed run).

    The rows are :func:`~.protocols.report_rows`: the model's, then for DeSTSeg and PFADSeg their DeST map's, whose
    metrics are the run's ``DeST_`` ones and whose fit time and peak memory are the shared run's.
    """
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
    row["run_model"], row["predictions_file"] = spec["model"], PREDICTIONS_FILE
    return [row, *(_second_map_row(name, row, result) for name in report_rows(spec["model"])[1:])]


def _second_map_row(name: str, row: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
    """The DeST map's row of a DeSTSeg / PFADSeg run: its metrics and inference speed, the run's other costs."""
    second = report.empty_row(name, row["category"])
    second.update(status=row["status"], error=row["error"], peak_rss_gb=row["peak_rss_gb"], run_model=row["model"])
    details = result.get("second_map") or {}
    second["predictions_file"] = details.get("predictions", "")
    second["details"] = {"status": row["status"], "same_run_as": row["model"], "second_map": details}
    if row["status"] != "ok":
        return second
    if not details:
        second.update(status="failed", error="the run reported no second map")
        return second
    metrics = result.get("metrics", {})
    for column, key in report.METRIC_KEYS.items():
        value = metrics.get(details["metric_prefix"] + key)
        second[column] = float(value) if value is not None else math.nan
    second["fit_s"], second["infer_img_per_s"] = row["fit_s"], details["infer_img_per_s"]
    return second
