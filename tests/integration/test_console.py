"""A normal fit, test, predict and export of either model, through the API and the CLI, warns about nothing of ours.

``console_run.py`` runs them in a fresh process (Python's default warning filters, as a user sees them) and records
every warning, every log record at WARNING or above, Lightning's line about callbacks overriding the trainer's, and
our progress lines. Everything recorded must be one of :data:`THIRD_PARTY`: the messages anomalib, Lightning, torch
and timm give for anomalib's own models too (checked with anomalib's Padim), each listed in docs/anomalib_tools.md.
Anything else, from whichever file or logger, fails the test: it is a message this package causes.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import REPO, TINY_SIZE

RUNNER = Path(__file__).with_name("console_run.py")

THIRD_PARTY = {
    "timm: importing anomalib imports timm.models.layers": r"Importing from timm\.models\.layers is deprecated",
    "anomalib: its Dinomaly model imports a deprecated package": r"anomalib\.models\.components\.dinov2 package is "
    r"deprecated",
    "Lightning 2.6 with torch 2.14": r"`isinstance\(treespec, LeafSpec\)` is deprecated",
    "anomalib: Engine.test/predict given a model without ckpt_path": r"^ckpt_path is not provided\. Model weights will "
    r"not be loaded\.$",
    "torch: anomalib's data loaders pin memory, on a machine without GPU": r"^'pin_memory' argument is set as true but "
    r"no accelerator is found",
    "Lightning: anomalib's ModelCheckpoint restored in another results folder (predict --ckpt_path)": r"^The dirpath "
    r"has changed from '.*' to '.*', therefore `best_model_score`",
}
"""What anomalib, Lightning, torch or timm report on these runs whatever the model: reason -> message pattern."""


def _run(model_name: str, tiny_dataset: Path, teacher_weights: Path, tmp_path: Path) -> tuple[list[dict], str]:
    textures = tmp_path / "textures"  # the faithful recipe names a texture folder (without one, a deviation is logged)
    textures.mkdir()
    from PIL import Image

    for seed in range(2):
        pixels = (np.random.default_rng(seed).random((TINY_SIZE, TINY_SIZE, 3)) * 255).astype(np.uint8)
        Image.fromarray(pixels).save(textures / f"texture_{seed}.png")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    arguments = [model_name, str(tiny_dataset), str(teacher_weights), str(textures), str(tmp_path)]
    completed = subprocess.run(
        [sys.executable, str(RUNNER), *arguments],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=900,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-5000:]
    last = completed.stdout.strip().splitlines()[-1]
    assert last.startswith("RECORDED "), completed.stdout[-2000:]
    return json.loads(last.removeprefix("RECORDED ")), completed.stdout + completed.stderr


@pytest.mark.slow
@pytest.mark.parametrize("model_name", ["DeSTSeg", "PFADSeg"])
def test_fit_test_predict_export_report_nothing_of_ours(
    model_name: str, tiny_dataset: Path, teacher_weights: Path, tmp_path: Path
) -> None:
    recorded, console = _run(model_name, tiny_dataset, teacher_weights, tmp_path)
    reported = [event for event in recorded if event["kind"] != "progress"]
    ours = [
        event for event in reported if not any(re.search(pattern, event["message"]) for pattern in THIRD_PARTY.values())
    ]
    assert not ours, json.dumps(ours, indent=1)
    for line in ("will override existing callbacks", "in eval mode at the start of training", "weights_only"):
        assert line not in console, line  # also as plain output, whatever its level
    # Progress, in both fits (API, CLI): every step's line, and the end of stage 1 after its last step's line.
    progress = [event["message"] for event in recorded if event["kind"] == "progress"]
    expected = ["step 1/4", "step 2/4", "Stage 1 (student) finished at step 2", "step 3/4", "step 4/4"]
    assert [next(e for e in expected if line.startswith(e)) for line in progress] == expected * 2, progress
