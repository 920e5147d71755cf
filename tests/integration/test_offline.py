"""The offline route of docs/offline.md: fill the caches, then ``teacher_weights="imagenet"`` loads with no network."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from helpers import SHARED


def test_offline_caches_let_imagenet_weights_load_without_a_network(real_teacher_weights: Path, tmp_path: Path) -> None:
    script = SHARED / "weights" / "offline_cache.py"
    if not script.is_file():
        pytest.skip(f"{script} not found")
    caches = {"HF_HOME": str(tmp_path / "hf"), "TORCH_HOME": str(tmp_path / "torch"), "HF_HUB_OFFLINE": "1"}
    subprocess.run(
        [sys.executable, str(script), "--hf-home", caches["HF_HOME"], "--torch-home", caches["TORCH_HOME"]], check=True
    )
    check = textwrap.dedent(
        """
        from anomalib_destseg import DeSTSeg
        model = DeSTSeg()
        model.model.teacher.load_weights("imagenet")
        print("pretrained", bool(model.model.teacher.pretrained))
        """
    )
    env = {**os.environ, **caches}
    result = subprocess.run([sys.executable, "-c", check], env=env, capture_output=True, text=True, check=False)
    assert "pretrained True" in result.stdout, result.stderr[-3000:]
