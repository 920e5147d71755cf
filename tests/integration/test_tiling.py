"""anomalib's tiling (``TilerConfigurationCallback``) with DeSTSeg and PFADSeg: train, test, predict, export, errors.

The tiled maps are checked against the untiled model run on each tile by hand: a tile's map depends on that tile
only (BatchNorm in eval mode), so where tiles do not overlap the tiled map is the tiles' maps side by side, and
where they overlap it is their mean. The Engine runs use 64x64 generated images cut into 32x32 tiles.
"""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path

import lightning
import pytest
import torch
import yaml
from anomalib.callbacks import TilerConfigurationCallback
from anomalib.data.utils.tiler import ImageUpscaleMode, Tiler
from anomalib.deploy import ExportType, OpenVINOInferencer
from helpers import crash_before, quiet_cpu_engine, tiny_datamodule, tiny_model

from anomalib_destseg import DeSTSeg, DeSTSegModel, PFADSeg, PFADSegModel
from anomalib_destseg.components.resnet_blocks import init_resnet_weights
from anomalib_destseg.components.tiling import TILER_CHECKPOINT_KEY
from anomalib_destseg.data.anomaly_generator import SyntheticAnomalyGenerator

IMAGE = 64  # the generated images; the Engine runs cut each into four tiles
TILE = 32  # the smallest side the networks take
MAP_TOLERANCE = 1e-4


def _by_hand(model: torch.nn.Module, images: torch.Tensor, tile: int, stride: int, output_map: str) -> torch.Tensor:
    """The untiled model on every tile, the tiles' maps summed into place and divided by how often a pixel was hit."""
    total = torch.zeros(images.shape[0], 1, *images.shape[-2:])
    hits = torch.zeros_like(total)
    for top in range(0, images.shape[-2] - tile + 1, stride):
        for left in range(0, images.shape[-1] - tile + 1, stride):
            crop = images[..., top : top + tile, left : left + tile]
            tile_map = model.predict_maps(crop, (output_map,))[output_map].anomaly_map
            total[..., top : top + tile, left : left + tile] += tile_map
            hits[..., top : top + tile, left : left + tile] += 1
    return total / hits


@pytest.mark.parametrize(
    ("model_class", "stride"),
    [(DeSTSegModel, TILE), (PFADSegModel, TILE // 2)],
    ids=["DeSTSeg-side-by-side", "PFADSeg-overlapping"],
)
def test_tiled_maps_are_the_tiles_maps_put_back_together(model_class: type, stride: int) -> None:
    torch.manual_seed(0)
    model = model_class().eval()
    init_resnet_weights(model.segmentation_network)  # outputs that differ from pixel to pixel
    images = torch.rand(2, 3, IMAGE, IMAGE)
    with torch.no_grad():
        expected = {name: _by_hand(model, images, TILE, stride, name) for name in ("segmentation", "dest")}
        untiled = model(images).anomaly_map
        model.tiler = Tiler(tile_size=TILE, stride=stride)
        tiled = model.predict_maps(images)
    for name, prediction in tiled.items():
        assert prediction.anomaly_map.shape == (2, 1, IMAGE, IMAGE)
        assert (prediction.anomaly_map - expected[name]).abs().max() <= 1e-5, name
        flat = expected[name].flatten(1)
        assert torch.allclose(prediction.pred_score, flat.topk(model.top_k, dim=1).values.mean(dim=1), atol=1e-6)
    assert (tiled["segmentation"].anomaly_map - untiled).abs().max() > 1e-3  # tiling changes the result


def test_an_image_the_tiles_do_not_fit_is_padded_or_stretched_and_cropped_back() -> None:
    torch.manual_seed(0)
    model = DeSTSegModel().eval()
    images = torch.rand(1, 3, 96, 160)
    for mode in (ImageUpscaleMode.PADDING, ImageUpscaleMode.INTERPOLATION):
        model.tiler = Tiler(tile_size=64, stride=64, mode=mode)
        with torch.no_grad():
            output = model(images)
        assert output.anomaly_map.shape == (1, 1, 96, 160)
        assert torch.isfinite(output.anomaly_map).all()


# --- the Engine: train, test, predict, checkpoint, export -------------------------------------------------------
@pytest.fixture(scope="module")
def large_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Generated images twice the tile side: 8 for training (2 steps an epoch at batch 4), 3 + 3 for testing."""
    from anomalib_destseg.data import make_synthetic_dataset

    root = tmp_path_factory.mktemp("tiling_dataset")
    make_synthetic_dataset(root, image_size=IMAGE, num_train=8, num_test_good=3, num_test_defect=3, seed=0)
    return root


@pytest.fixture(scope="module", params=[DeSTSeg, PFADSeg], ids=lambda model_class: model_class.__name__)
def tiled_run(request: pytest.FixtureRequest, large_dataset: Path, teacher_weights: Path, tmp_path_factory) -> dict:
    """One 2 + 2-step tiled fit, test and predict; the training tiles' shapes are recorded."""
    model_class = request.param
    root = tmp_path_factory.mktemp(f"tiling_{model_class.__name__}")
    torch.manual_seed(0)
    model = tiny_model(model_class, teacher_weights, size=IMAGE)
    init_resnet_weights(model.model.segmentation_network)  # scores that differ between images (thresholds)
    generated = []
    make_anomalies = SyntheticAnomalyGenerator.__call__

    def recording(generator: SyntheticAnomalyGenerator, clean: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        generated.append(tuple(clean.shape))
        return make_anomalies(generator, clean)

    # stride left out: anomalib's documented default (the tile size) must work
    engine = quiet_cpu_engine(root, callbacks=(TilerConfigurationCallback(enable=True, tile_size=TILE),))
    datamodule = tiny_datamodule(large_dataset, seed=0)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(SyntheticAnomalyGenerator, "__call__", recording)
        engine.fit(model=model, datamodule=datamodule)
    metrics = engine.test(model=model, datamodule=datamodule)[0]
    predictions = engine.predict(model=model, datamodule=datamodule)
    return {
        "model": model,
        "engine": engine,
        "root": root,
        "generated": generated,
        "metrics": metrics,
        "predictions": predictions,
        "checkpoint": Path(engine.trainer.checkpoint_callback.best_model_path),
        "datamodule": datamodule,
    }


def test_training_makes_anomalies_on_tiles(tiled_run: dict) -> None:
    # 4 images a batch, 4 tiles each: every step trains on 16 tiles
    assert tiled_run["generated"] == [(16, 3, TILE, TILE)] * 4
    assert tiled_run["model"].global_step == 4


def test_test_and_predict_give_full_size_maps_from_the_tiles(tiled_run: dict) -> None:
    model = tiled_run["model"]
    assert isinstance(model.model.tiler, Tiler)
    assert 0 <= tiled_run["metrics"]["image_AUROC"] <= 1
    assert "DeST_pixel_AUROC" in tiled_run["metrics"]
    batch = tiled_run["predictions"][0]
    assert batch.anomaly_map.shape[-2:] == (IMAGE, IMAGE)
    with torch.no_grad():
        expected = _by_hand(model.model.eval(), batch.image, TILE, TILE, "segmentation")
    raw_score = expected.flatten(1).topk(model.model.top_k, dim=1).values.mean(dim=1)
    assert torch.allclose(batch.raw_pred_score, raw_score, atol=1e-5)


def test_a_tiled_checkpoint_loads_tiled_and_exports_full_size_maps(tiled_run: dict, tmp_path: Path) -> None:
    checkpoint = torch.load(tiled_run["checkpoint"], map_location="cpu", weights_only=False)
    assert checkpoint[TILER_CHECKPOINT_KEY] == {
        "tile_size": [TILE, TILE],
        "stride": [TILE, TILE],
        "remove_border_count": 0,
        "mode": "padding",
    }
    model_class = type(tiled_run["model"])
    loaded = model_class.load_from_checkpoint(tiled_run["checkpoint"]).eval()
    assert loaded.model.tiler is not None and loaded.model.tiler.tile_size_h == TILE
    # the export takes any image size: its pre-processor resizes to IMAGE x IMAGE, which is then tiled
    images = torch.rand(2, 3, 150, 110)
    with torch.no_grad():
        expected = loaded.post_processor(loaded.model(loaded.pre_processor.transform(images)))
        untiled_model = model_class.load_from_checkpoint(tiled_run["checkpoint"]).eval()
        untiled_model.model.tiler = None
        untiled = untiled_model.post_processor(untiled_model.model(untiled_model.pre_processor.transform(images)))
    assert (untiled.anomaly_map - expected.anomaly_map).abs().max() > 1e-3
    engine = tiled_run["engine"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 2 + 2 steps is a complete run; nothing else is checked here
        onnx_path = engine.export(loaded, ExportType.ONNX, export_root=tmp_path / "onnx")
    onnxruntime = pytest.importorskip("onnxruntime")
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    outputs = dict(
        zip(
            [output.name for output in session.get_outputs()],
            session.run(None, {session.get_inputs()[0].name: images.numpy()}),
            strict=True,
        )
    )
    # the whole image's map at the pre-processor's size (as for every export), not a tile's
    assert outputs["anomaly_map"].shape[-2:] == (IMAGE, IMAGE)
    assert (
        abs(torch.as_tensor(outputs["anomaly_map"]).reshape(expected.anomaly_map.shape) - expected.anomaly_map).max()
        <= MAP_TOLERANCE
    )
    assert (
        torch.as_tensor(outputs["pred_score"]).reshape(-1) - expected.pred_score.reshape(-1)
    ).abs().max() <= MAP_TOLERANCE
    with contextlib.chdir(tmp_path):
        openvino = OpenVINOInferencer(path=onnx_path, device="CPU", config={"INFERENCE_PRECISION_HINT": "f32"})
        result = openvino.predict(images.numpy())
    assert (
        torch.as_tensor(result.anomaly_map).reshape(expected.anomaly_map.shape) - expected.anomaly_map
    ).abs().max() <= MAP_TOLERANCE


# --- settings that cannot work fail before training -----------------------------------------------------------
@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"tile_size": 100, "stride": 100}, "tile_size 100x100 cannot go through the networks"),
        ({"tile_size": 256, "stride": 256}, "tile_size 256x256 is larger than the images"),
        ({"tile_size": 64, "stride": 64, "remove_border_count": 4}, "remove_border_count=4 leaves pixels"),
    ],
    ids=["not-a-multiple-of-32", "larger-than-the-image", "border-removed"],
)
def test_settings_that_cannot_work_fail_before_training(
    settings: dict, message: str, large_dataset: Path, teacher_weights: Path, tmp_path: Path
) -> None:
    model = tiny_model(DeSTSeg, teacher_weights, size=IMAGE, student_steps=1, segmentation_steps=1)
    engine = quiet_cpu_engine(tmp_path, callbacks=(TilerConfigurationCallback(enable=True, **settings),))
    with pytest.raises(ValueError, match=message):
        engine.fit(model=model, datamodule=tiny_datamodule(large_dataset, seed=0))
    assert model.global_step == 0
    assert int(model.completed_steps) == 0


# --- the CLI and config files -----------------------------------------------------------------------------------
def test_a_config_file_tiles_training_and_anomalib_export_keeps_the_tiler(
    large_dataset: Path, teacher_weights: Path, tmp_path: Path
) -> None:
    """``trainer.callbacks`` in a config file (as ``--trainer.callbacks`` on the command line) tiles training; the
    checkpoint keeps the tiler, so ``anomalib export --ckpt_path`` exports a tiled model without the callback."""
    from anomalib.cli import AnomalibCLI

    config = {
        "model": {
            "class_path": "anomalib_destseg.DeSTSeg",
            "init_args": {
                "student_steps": 1,
                "segmentation_steps": 1,
                "teacher_weights": str(teacher_weights),
                "visualizer": False,
                "pre_processor": {
                    "class_path": "anomalib_destseg.data.AntialiasedPreProcessor",
                    "init_args": {
                        "transform": {
                            "class_path": "torchvision.transforms.v2.Resize",
                            "init_args": {"size": [IMAGE, IMAGE]},
                        }
                    },
                },
            },
        },
        "data": {
            "class_path": "anomalib.data.MVTecAD",
            "init_args": {"root": str(large_dataset), "category": "synthetic", "train_batch_size": 4, "num_workers": 0},
        },
        "trainer": {
            "accelerator": "cpu",
            "enable_progress_bar": False,
            "callbacks": [
                {
                    "class_path": "anomalib.callbacks.TilerConfigurationCallback",
                    "init_args": {"enable": True, "tile_size": TILE, "stride": TILE},
                }
            ],
        },
    }
    (tmp_path / "tiled.yaml").write_text(yaml.safe_dump(config))
    cli = AnomalibCLI(["fit", "--config", str(tmp_path / "tiled.yaml"), "--default_root_dir", str(tmp_path / "fit")])
    assert cli.model.model.tiler is not None and cli.engine.trainer.global_step == 2
    (checkpoint,) = (tmp_path / "fit").rglob("model.ckpt")
    export = ["export", "--model", "anomalib_destseg.DeSTSeg", "--export_type", "torch", "--ckpt_path", str(checkpoint)]
    AnomalibCLI([*export, "--default_root_dir", str(tmp_path / "export")])
    (exported,) = (tmp_path / "export").rglob("weights/torch/model.pt")
    loaded = torch.load(exported, map_location="cpu", weights_only=False)["model"].eval()
    assert loaded.model.tiler.tile_size_h == TILE
    with torch.no_grad():
        output = loaded(torch.rand(1, 3, 150, 110))
    assert output.anomaly_map.shape[-2:] == (IMAGE, IMAGE)


def test_tiled_training_in_bf16_resumes_exactly_from_its_periodic_checkpoint(
    large_dataset: Path, teacher_weights: Path, tmp_path: Path
) -> None:
    """bf16-mixed training on tiles, killed after stage 1, resumes from resume.ckpt to the uninterrupted weights."""
    from anomalib_destseg.training import RESUME_CHECKPOINT

    def fit(root: Path, callbacks: tuple = (), ckpt_path: Path | None = None) -> DeSTSeg:
        lightning.seed_everything(0)
        model = tiny_model(DeSTSeg, teacher_weights, size=IMAGE, evaluator=False)
        tiling = TilerConfigurationCallback(enable=True, tile_size=TILE, stride=TILE)
        engine = quiet_cpu_engine(root, callbacks=(tiling, *callbacks), precision="bf16-mixed")
        engine.fit(model=model, datamodule=tiny_datamodule(large_dataset, seed=0), ckpt_path=ckpt_path)
        return model

    uninterrupted = fit(tmp_path / "uninterrupted")
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(tmp_path / "crashed", callbacks=(crash_before(2),))
    (saved,) = (tmp_path / "crashed").rglob(RESUME_CHECKPOINT)
    checkpoint = torch.load(saved, map_location="cpu", weights_only=False)
    assert checkpoint["global_step"] == 2  # the end of stage 1 (8 images at batch 4: an epoch end)
    assert checkpoint[TILER_CHECKPOINT_KEY]["tile_size"] == [TILE, TILE]
    resumed = fit(tmp_path / "resumed", ckpt_path=saved)
    assert resumed.global_step == 4 and resumed.model.tiler is not None
    for name, value in uninterrupted.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[name]), name


def test_a_tiled_model_without_resizing_needs_an_export_size(teacher_weights: Path, tmp_path: Path) -> None:
    model = DeSTSeg(teacher_weights=str(teacher_weights), pre_processor=False, visualizer=False)
    model.model.tiler = Tiler(tile_size=TILE, stride=TILE)
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="exported at one image size: pass input_size"):
        model.to_onnx(tmp_path)
    assert not any(tmp_path.iterdir())
