"""``anomalib train`` with DeSTSeg as a plugin model, and the shipped configuration files.

The README's own ``anomalib train`` commands (MVTecAD, Folder, PFADSeg, the MVTec AD config, several processes) run
as subprocesses in ``test_readme.py``. Here the configuration files are parsed in-process with anomalib's CLI (no run)
and compared with the reference recipe.
"""

import inspect
from pathlib import Path

import yaml

from anomalib_destseg import DeSTSeg

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"


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
