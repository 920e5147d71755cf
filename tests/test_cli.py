"""``anomalib train`` with DeSTSeg as a plugin model, and the shipped configuration files.

One real command-line run (a subprocess, about 30 s, mostly imports) with the model-only ``--config
configs/destseg.yaml``; the README's own ``anomalib train`` commands (MVTecAD, Folder, PFADSeg, the MVTec AD config,
several processes) run in ``test_readme.py``. The configuration files are also parsed in-process with anomalib's CLI
(no run) and compared with the reference recipe.
"""

import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from anomalib_destseg import DeSTSeg

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
ANOMALIB = Path(sys.executable).with_name("anomalib")

# 64x64 through the model's pre-processor (a PreProcessor with a Resize), one step per stage, CPU, small batches.
FAST = {
    "--model.student_steps": 1,
    "--model.segmentation_steps": 1,
    "--model.pre_processor": "anomalib.pre_processing.PreProcessor",
    "--model.pre_processor.transform": "torchvision.transforms.v2.Resize",
    "--model.pre_processor.transform.size": "[64, 64]",
    "--data.train_batch_size": 4,
    "--data.eval_batch_size": 4,
    "--data.num_workers": 0,
    "--trainer.accelerator": "cpu",
    "--trainer.devices": 1,
    "--trainer.enable_progress_bar": "false",
    "--seed_everything": 0,
}


def _flags(arguments: dict[str, object]) -> list[str]:
    """``{"--a": 1, "--b": "x"}`` -> ``["--a", "1", "--b", "x"]`` (insertion order)."""
    return [str(item) for pair in arguments.items() for item in pair]


def _anomalib_train(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    if ANOMALIB.is_file():
        command = [str(ANOMALIB), "train", *args]
    else:  # the console script of an environment without a bin/ folder next to python: call its entry point
        command = [sys.executable, "-c", "from anomalib.cli.cli import main; main()", "train", *args]
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, f"anomalib train failed:\n{result.stdout[-4000:]}\n{result.stderr[-6000:]}"
    return result


def _check_results(root: Path, dataset: str, category: str | None) -> DeSTSeg:
    version = root / "DeSTSeg" / dataset / (category or "") / "v0"
    checkpoint = version / "weights" / "lightning" / "model.ckpt"
    assert checkpoint.is_file(), sorted(str(p.relative_to(root)) for p in root.rglob("*"))
    assert (version / "config.yaml").is_file()
    assert len(list((version / "images").rglob("*.png"))) >= 8  # the visualizer's test images
    model = DeSTSeg.load_from_checkpoint(checkpoint, weights_only=True)
    assert bool(model.model.teacher.pretrained)
    assert model.hparams.student_steps == 1 and model.hparams.segmentation_steps == 1
    assert list(model.pre_processor.transform.size) == [64, 64]
    return model


@pytest.mark.slow
def test_cli_train_with_the_model_config(tiny_dataset: Path, teacher_weights: Path, tmp_path: Path) -> None:
    _anomalib_train(
        _flags(
            {
                "--config": str(CONFIGS / "destseg.yaml"),
                "--model.teacher_weights": str(teacher_weights),
                "--data": "anomalib.data.MVTecAD",
                "--data.root": str(tiny_dataset),
                "--data.category": "synthetic",
                "--default_root_dir": str(tmp_path / "results"),
                **FAST,
            }
        ),
        cwd=tmp_path,
    )
    model = _check_results(tmp_path / "results", "MVTecAD", "synthetic")
    assert model.hparams.top_k == 100 and model.hparams.rotation == "auto"


# --- the configuration files, parsed in-process ---------------------------------------------------------------------
def _reference_defaults() -> dict:
    skip = {"self", "pre_processor", "post_processor", "evaluator", "visualizer"}
    parameters = inspect.signature(DeSTSeg.__init__).parameters.values()
    return {p.name: p.default for p in parameters if p.name not in skip}


def _normalise(value: object) -> object:
    return list(value) if isinstance(value, tuple) else value


def test_model_config_is_the_reference_recipe() -> None:
    config = yaml.safe_load((CONFIGS / "destseg.yaml").read_text())
    assert set(config) == {"model"}  # model-only
    assert config["model"]["class_path"] == "anomalib_destseg.DeSTSeg"
    init_args = config["model"]["init_args"]
    defaults = _reference_defaults()
    assert set(init_args) == set(defaults)
    for name, value in init_args.items():
        assert _normalise(value) == _normalise(defaults[name]), name
    assert init_args["student_steps"] + init_args["segmentation_steps"] == 5000


def test_mvtec_config_parses_with_anomalib_cli() -> None:
    from anomalib.cli import AnomalibCLI
    from anomalib.data import MVTecAD

    cli = AnomalibCLI(["train", "--config", str(CONFIGS / "destseg_mvtec.yaml")], run=False)
    model, datamodule = cli.model, cli.datamodule
    assert isinstance(model, DeSTSeg) and isinstance(datamodule, MVTecAD)
    assert cli.config["train"]["seed_everything"] == 42
    # the reference recipe
    hp = model.hparams
    assert (hp.student_steps, hp.segmentation_steps) == (1000, 4000)
    assert (hp.student_lr, hp.residual_lr, hp.head_lr, hp.momentum, hp.weight_decay) == (0.4, 0.1, 0.01, 0.9, 1e-4)
    assert (hp.top_k, hp.focal_gamma, hp.anomaly_probability) == (100, 4.0, 1.0)
    assert list(hp.beta_range) == [0.0, 0.8]
    assert hp.rotation == "auto" and hp.denoising is True and hp.teacher_weights == "imagenet"
    assert Path(hp.texture_dir).parts[-2:] == ("dtd", "images")  # a placeholder for the DTD images folder
    assert model.trainer_arguments["max_steps"] == 5000
    assert datamodule.category == "bottle"
    assert (datamodule.train_batch_size, datamodule.eval_batch_size) == (32, 32)
    assert 0 < datamodule.num_workers <= 8
    # the config's model section agrees with the model-only config, apart from the texture folder
    full = yaml.safe_load((CONFIGS / "destseg_mvtec.yaml").read_text())["model"]["init_args"]
    model_only = yaml.safe_load((CONFIGS / "destseg.yaml").read_text())["model"]["init_args"]
    assert {k: v for k, v in full.items() if k != "texture_dir"} == {
        k: v for k, v in model_only.items() if k != "texture_dir"
    }
