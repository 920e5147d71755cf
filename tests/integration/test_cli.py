"""anomalib's CLI with both models as plugins: help, printed configs, config files, fit, test, predict, export.

Commands run in-process through ``anomalib.cli.AnomalibCLI`` (what ``anomalib ...`` runs), which is as faithful as a
subprocess and saves its start-up time; the README's own commands run as subprocesses in ``test_readme.py``.
"""

import contextlib
import inspect
import io
from pathlib import Path

import pytest
import torch
import yaml
from anomalib.cli import AnomalibCLI
from helpers import REPO, TINY_SIZE

from anomalib_destseg import DeSTSeg, PFADSeg
from anomalib_destseg.training import TwoStageTraining

CONFIGS = REPO / "configs"
SMALL = [
    "--model.pre_processor", "anomalib_destseg.data.AntialiasedPreProcessor",
    "--model.pre_processor.transform", "torchvision.transforms.v2.Resize",
    "--model.pre_processor.transform.size", f"[{TINY_SIZE}, {TINY_SIZE}]",
    "--trainer.accelerator", "cpu",
    "--trainer.enable_progress_bar", "false",
]  # fmt: skip


def _printed(args: list[str]) -> str:
    output = io.StringIO()
    with contextlib.redirect_stdout(output), pytest.raises(SystemExit) as exit_:
        AnomalibCLI(args)
    assert exit_.value.code in (0, None)
    return output.getvalue()


def _defaults(model_class: type) -> dict:
    parameters = [*inspect.signature(TwoStageTraining.__init__).parameters.values()]
    parameters += [*inspect.signature(model_class.__init__).parameters.values()]
    return {p.name: p.default for p in parameters if p.default is not inspect.Parameter.empty}


# --- help, printed configs, config files -----------------------------------------------------------------------------
@pytest.mark.parametrize("model_class", [DeSTSeg, PFADSeg], ids=lambda cls: cls.__name__)
def test_help_lists_every_argument_with_its_documentation(model_class: type) -> None:
    text = _printed(
        ["train", "--model", f"anomalib_destseg.{model_class.__name__}", "--model.help", model_class.__name__]
    )
    for name in _defaults(model_class):
        assert f"--model.init_args.{name}" in text or f"--model.{name}" in text, name
    assert "Optimiser steps of stage 1 (student)" in text


def test_print_config_shows_the_flags_given() -> None:
    args = ["train", "--model", "anomalib_destseg.PFADSeg", "--model.student_steps", "7", "--model.fusion", "concat"]
    config = yaml.safe_load(_printed([*args, "--print_config"]))
    init_args = config["model"]["init_args"]
    assert config["model"]["class_path"] == "anomalib_destseg.PFADSeg"
    assert (init_args["student_steps"], init_args["fusion"], init_args["segmentation_steps"]) == (7, "concat", 4000)


@pytest.mark.parametrize("name", ["destseg_mvtec.yaml", "pfadseg_mvtec.yaml"])
def test_config_files_list_only_what_differs_from_the_reference_recipe(name: str) -> None:
    from anomalib.data import MVTecAD

    config = yaml.safe_load((CONFIGS / name).read_text())
    model_class = {"anomalib_destseg.DeSTSeg": DeSTSeg, "anomalib_destseg.PFADSeg": PFADSeg}[
        config["model"]["class_path"]
    ]
    defaults = _defaults(model_class)
    assert all(value != defaults[key] for key, value in config["model"]["init_args"].items())
    cli = AnomalibCLI(["train", "--config", str(CONFIGS / name)], run=False)
    model, datamodule = cli.model, cli.datamodule
    assert isinstance(model, model_class) and isinstance(datamodule, MVTecAD)
    hp = model.hparams
    assert (hp.student_steps, hp.segmentation_steps, hp.student_lr, hp.residual_lr, hp.head_lr) == (
        1000,
        4000,
        0.4,
        0.1,
        0.01,
    )
    assert model.trainer_arguments["max_steps"] == 5000
    assert (datamodule.category, datamodule.train_batch_size) == ("bottle", 32)


# --- fit, test, predict (folder and single image), export ------------------------------------------------------------
@pytest.fixture(scope="module", params=["DeSTSeg", "PFADSeg"])
def fitted(request, tiny_dataset: Path, teacher_weights: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp(f"cli_{request.param}")
    data = ["--data", "anomalib.data.MVTecAD", "--data.root", str(tiny_dataset), "--data.category", "synthetic"]
    data += ["--data.train_batch_size", "4", "--data.eval_batch_size", "4", "--data.num_workers", "0"]
    model = ["--model", f"anomalib_destseg.{request.param}", "--model.teacher_weights", str(teacher_weights)]
    model += ["--model.student_steps", "1", "--model.segmentation_steps", "1", "--model.visualizer", "false"]
    AnomalibCLI(["fit", *model, *data, *SMALL, "--default_root_dir", str(root)])
    (checkpoint,) = root.rglob("model.ckpt")
    return checkpoint


def test_cli_validate_test_predict_and_export_a_fitted_checkpoint(
    fitted: Path, tiny_dataset: Path, tmp_path: Path
) -> None:
    name = "PFADSeg" if "PFADSeg" in fitted.parts else "DeSTSeg"
    model = ["--model", f"anomalib_destseg.{name}", "--model.visualizer", "false", "--ckpt_path", str(fitted)]
    common = [*model, "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false"]
    data = ["--data", "anomalib.data.MVTecAD", "--data.root", str(tiny_dataset), "--data.category", "synthetic"]
    for subcommand in ("validate", "test"):
        cli = AnomalibCLI([subcommand, *common, *data, "--data.num_workers", "0", "--default_root_dir", str(tmp_path)])
    assert 0 <= cli.engine.trainer.callback_metrics["image_AUROC"] <= 1
    folder = tiny_dataset / "synthetic" / "test" / "defect"
    for path, count in ((folder, len(list(folder.glob("*.png")))), (next(folder.glob("*.png")), 1)):
        cli = AnomalibCLI(["predict", *common, "--data", str(path), "--default_root_dir", str(tmp_path)])
        predictions = cli.engine.trainer.predict_loop.predictions
        assert sum(len(batch.pred_score) for batch in predictions) == count
        assert predictions[0].anomaly_map.shape[-2:] == (TINY_SIZE, TINY_SIZE)
    AnomalibCLI(["export", *model, "--export_type", "torch", "--default_root_dir", str(tmp_path)])
    (exported,) = tmp_path.rglob("weights/torch/model.pt")
    loaded = torch.load(exported, map_location="cpu", weights_only=False)["model"]
    assert not any(parameter.requires_grad for parameter in loaded.parameters())


def test_cli_output_map_from_a_flag_and_a_config_file(
    fitted: Path, tiny_dataset: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``--model.output_map dest`` swaps the maps of the same checkpoint in test (thresholds: a warning)."""
    name = "PFADSeg" if "PFADSeg" in fitted.parts else "DeSTSeg"
    model = ["--model", f"anomalib_destseg.{name}", "--model.visualizer", "false", "--ckpt_path", str(fitted)]
    common = ["--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false", "--trainer.logger", "false"]
    data = ["--data", "anomalib.data.MVTecAD", "--data.root", str(tiny_dataset), "--data.category", "synthetic"]
    data += ["--data.num_workers", "0", "--default_root_dir", str(tmp_path)]
    default = AnomalibCLI(["test", *model, *common, *data]).engine.trainer.callback_metrics
    with caplog.at_level("WARNING"):
        cli = AnomalibCLI(["test", *model, "--model.output_map", "dest", *common, *data])
    assert cli.model.hparams.output_map == "dest" and cli.model.model.output_map == "dest"
    assert "set on the 'segmentation' map, but this model outputs the 'dest' map" in caplog.text
    swapped = cli.engine.trainer.callback_metrics
    assert {"Seg_pixel_AUPRO", "Seg_pixel_IAP90"} <= swapped.keys() and "DeST_image_AUROC" not in swapped
    for metric in ("image_AUROC", "pixel_AUROC", "pixel_AUPR", "pixel_AUPRO", "pixel_IAP"):
        assert float(swapped[metric]) == pytest.approx(float(default[f"DeST_{metric}"]), abs=1e-6), metric
        assert float(swapped[f"Seg_{metric}"]) == pytest.approx(float(default[metric]), abs=1e-6), metric


def test_cli_output_map_from_a_config_file_reaches_the_checkpoint_and_the_export(
    tiny_dataset: Path, teacher_weights: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A config file's ``output_map: dest`` trains, is saved in the checkpoint, and ``anomalib export`` keeps it.

    (``anomalib export --ckpt_path`` rebuilds the model from the checkpoint's own arguments, as anomalib's
    ``Engine.export`` does: the map is the one the checkpoint was trained or validated with.)
    """
    init_args = {"output_map": "dest", "teacher_weights": str(teacher_weights), "visualizer": False}
    init_args |= {"student_steps": 1, "segmentation_steps": 1}
    (tmp_path / "dest.yaml").write_text(
        yaml.safe_dump({"model": {"class_path": "anomalib_destseg.DeSTSeg", "init_args": init_args}})
    )
    data = ["--data", "anomalib.data.MVTecAD", "--data.root", str(tiny_dataset), "--data.category", "synthetic"]
    data += ["--data.train_batch_size", "4", "--data.eval_batch_size", "4", "--data.num_workers", "0"]
    cli = AnomalibCLI(
        ["fit", "--config", str(tmp_path / "dest.yaml"), *data, *SMALL, "--default_root_dir", str(tmp_path)]
    )
    assert cli.model.model.output_map == "dest"
    (checkpoint,) = tmp_path.rglob("model.ckpt")
    assert DeSTSeg.load_from_checkpoint(checkpoint).model.output_map == "dest"
    # test (like validate and predict) builds the model from the command line and loads the weights into it
    test = ["test", "--model", "anomalib_destseg.DeSTSeg", "--model.output_map", "dest", "--ckpt_path", str(checkpoint)]
    test += [*data[:6], "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false"]
    test += ["--data.num_workers", "0", "--default_root_dir", str(tmp_path / "test")]
    with caplog.at_level("WARNING"):
        metrics = AnomalibCLI(test).engine.trainer.callback_metrics
    assert {"image_AUROC", "Seg_image_AUROC", "Seg_pixel_IAP90"} <= metrics.keys()
    assert "thresholds and score normalisation were set on" not in caplog.text  # the same map as the checkpoint's
    export = ["export", "--model", "anomalib_destseg.DeSTSeg", "--export_type", "torch", "--ckpt_path", str(checkpoint)]
    AnomalibCLI([*export, "--default_root_dir", str(tmp_path / "export")])
    (exported,) = (tmp_path / "export").rglob("weights/torch/model.pt")
    loaded = torch.load(exported, map_location="cpu", weights_only=False)["model"]
    assert loaded.model.output_map == "dest"


def test_cli_trains_on_a_training_set_smaller_than_the_batch(
    teacher_weights: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """anomalib's small test datasets (5 images) with the default batch of 32 train, with a warning."""
    from anomalib_destseg.data import make_synthetic_dataset

    make_synthetic_dataset(tmp_path / "data", image_size=TINY_SIZE, num_train=5, num_test_good=1, num_test_defect=1)
    data = ["--data", "anomalib.data.MVTecAD", "--data.root", str(tmp_path / "data"), "--data.category", "synthetic"]
    model = ["--model", "anomalib_destseg.PFADSeg", "--model.teacher_weights", str(teacher_weights)]
    model += ["--model.student_steps", "1", "--model.segmentation_steps", "1", "--model.visualizer", "false"]
    with caplog.at_level("WARNING"):
        cli = AnomalibCLI(
            ["fit", *model, *data, "--data.num_workers", "0", *SMALL, "--default_root_dir", str(tmp_path)]
        )
    assert cli.engine.trainer.global_step == 2
    assert "has 5 images, fewer than train_batch_size=32" in caplog.text
