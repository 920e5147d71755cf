"""Export to torch, ONNX and OpenVINO with anomalib's Engine, parity of the exports, and fast CPU inference variants.

One tiny model per model class and map (64x64, 2 + 2 steps) is trained and exported once per module: torch
(pickled module), OpenVINO with a static 64x64 input (the default pre-processor, Resize, is part of the graph) and
ONNX of the same weights without a pre-processor, so that batch, height and width are all dynamic (height and width
multiples of 32). Exports are traced with batch 2 and checked at other batch sizes. Each class is exported with its
default map and with ``output_map="dest"`` (its DeST map as the output), with the same parity checks (torch,
OpenVINO f32, onnxruntime); the export with the resizing pre-processor (full-size images) is checked on each class's
default map. Tracing a 35M-parameter model costs about 15 s of CPU per export, so the step counter (shared Lightning
code), ``torch.compile`` (a minute of compiling) and the NNCF quantisation of this IR run on DeSTSeg only; the
accuracy of INT8, bf16 and OpenVINO bf16 against fp32 is checked for both classes on trained models in
``test_learning.py``.
"""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from anomalib.data.utils import read_image
from anomalib.deploy import CompressionType, ExportType, OpenVINOInferencer, TorchInferencer
from anomalib.engine import Engine
from helpers import TINY_SIZE, tiny_datamodule, tiny_model

from anomalib_destseg import DeSTSeg, PFADSeg
from anomalib_destseg.components.resnet_blocks import init_resnet_weights
from anomalib_destseg.export import UntrainedExportWarning
from anomalib_destseg.inference import VARIANTS, CPUInferenceModel, OpenVINOModel, build_variant, shared_core

MODEL_CLASSES = [DeSTSeg, PFADSeg]
# The DeST map's exports are checked on DeSTSeg: PFADSeg computes its DeST map with the same code (suite time).
EXPORTED = [(DeSTSeg, "segmentation"), (PFADSeg, "segmentation"), (DeSTSeg, "dest")]
F32 = {"INFERENCE_PRECISION_HINT": "f32"}
MAP_TOLERANCE = 1e-4
BF16_MAP_CHANGE = (0.05, 0.013)
"""Largest max and mean change of a normalised map in bf16 (torch channels-last, OpenVINO default) on these models.

Measured 2026-12-05 over the four exports: torch bf16 max 0.008-0.018, mean 0.0009-0.0013; OpenVINO bf16 max
0.018-0.026, mean 0.0009-0.0065; the bounds are about twice the largest. These barely trained models only show that
bf16 runs and changes the maps a little; the accuracy cost against docs/results.md's figures is checked on trained
models in ``test_learning.py``.
"""


def _engine(root: Path) -> Engine:
    return Engine(default_root_dir=root, logger=False, accelerator="cpu", devices=1, enable_progress_bar=False)


@pytest.fixture(scope="module", params=EXPORTED, ids=lambda param: f"{param[0].__name__}-{param[1]}")
def exported(request: pytest.FixtureRequest, tiny_dataset: Path, teacher_weights: Path, tmp_path_factory) -> dict:
    """Train one tiny model of the class and export it to torch, OpenVINO (static 64x64) and ONNX (dynamic)."""
    model_class, output_map = request.param
    root = tmp_path_factory.mktemp(f"export_{model_class.__name__}_{output_map}")
    torch.manual_seed(0)
    model = tiny_model(model_class, teacher_weights, output_map=output_map)
    engine = _engine(root)
    # Export parity does not depend on the weights, but it needs outputs that differ between images: after 2 + 2
    # steps from the reference initialisation every image scores almost alike, so thresholds would tie with the
    # scores and min-max normalisation would magnify float rounding. Kaiming everywhere spreads the outputs.
    init_resnet_weights(model.model.segmentation_network)
    engine.fit(model=model, datamodule=tiny_datamodule(tiny_dataset, seed=0))
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error", UntrainedExportWarning)  # a trained model exports without the warning
        torch_path = engine.export(model, ExportType.TORCH, export_root=root / "torch")
        openvino_path = engine.export(
            model, ExportType.OPENVINO, export_root=root / "openvino", input_size=(TINY_SIZE, TINY_SIZE)
        )
        # The same weights without a pre-processor: the model takes images as they are, sides multiples of 32.
        bare = tiny_model(model_class, teacher_weights, size=None, pre_processor=False, output_map=output_map).eval()
        bare.load_state_dict(model.state_dict())
        onnx_path = engine.export(bare, ExportType.ONNX, export_root=root / "onnx")
        # With the resizing pre-processor and free height and width: takes full-size images. The pre-processor does
        # not depend on the map, so this export is checked on the default map of each class.
        resizing_path = (
            engine.export(model, ExportType.ONNX, export_root=root / "resizing")
            if output_map == "segmentation"
            else None
        )
    return {
        "model": model,
        "output_map": output_map,
        "bare": bare,
        "torch": torch_path,
        "openvino": openvino_path,
        "onnx": onnx_path,
        "resizing_onnx": resizing_path,
        "root": root,
        "checkpoint": engine.trainer.checkpoint_callback.best_model_path,
    }


@pytest.fixture(scope="module")
def openvino_f32(exported: dict) -> OpenVINOInferencer:
    """anomalib's OpenVINOInferencer on the static export, in f32 (compiled once per class)."""
    with contextlib.chdir(exported["root"]):  # it writes an openvino_cache folder into the working directory
        return OpenVINOInferencer(path=exported["openvino"], device="CPU", config=F32)


@pytest.fixture(scope="module")
def images(tiny_dataset: Path) -> torch.Tensor:
    """The tiny test set (good and defective) as one [N, 3, 64, 64] batch in [0, 1]."""
    paths = sorted((tiny_dataset / "synthetic" / "test").glob("*/*.png"))
    return torch.stack([read_image(path, as_tensor=True) for path in paths])


def _reference(model: torch.nn.Module, images: torch.Tensor):
    with torch.no_grad():
        return model.eval()(images)


def _fields(batch: object) -> dict:
    """The prediction fields of an anomalib batch (dataclass or named tuple) or a dict of outputs."""
    if isinstance(batch, dict):
        return batch
    names = ("pred_score", "pred_label", "anomaly_map", "pred_mask")
    return {name: getattr(batch, name) for name in names if getattr(batch, name, None) is not None}


def _assert_same_predictions(actual: object, expected, batch: int) -> None:
    """Exported outputs (numpy or torch, by field name) match the Lightning model's InferenceBatch."""
    actual = _fields(actual)
    anomaly_map = torch.as_tensor(np.asarray(actual["anomaly_map"])).reshape(expected.anomaly_map.shape)
    assert anomaly_map.shape[0] == batch
    assert (anomaly_map - expected.anomaly_map).abs().max().item() <= MAP_TOLERANCE
    score = torch.as_tensor(np.asarray(actual["pred_score"])).reshape(expected.pred_score.shape)
    assert (score - expected.pred_score).abs().max().item() <= MAP_TOLERANCE
    label = torch.as_tensor(np.asarray(actual["pred_label"])).reshape(expected.pred_label.shape)
    # anomalib's adaptive threshold is one of the validation scores: an image scored exactly at the threshold
    # (normalised 0.5) may fall either side by rounding. Every other decision must be the same.
    decided = (expected.pred_score - 0.5).abs() > MAP_TOLERANCE
    assert torch.equal(label.bool()[decided], expected.pred_label.bool()[decided])


# --- anomalib's inferencers on the exports ----------------------------------------------------------------------
def test_torch_inferencer_predicts_with_the_torch_export(exported: dict, images: torch.Tensor, monkeypatch) -> None:
    """anomalib's documented path, without torch.no_grad: the export's parameters do not require gradients."""
    monkeypatch.setenv("TRUST_REMOTE_CODE", "1")  # our own file: anomalib refuses to unpickle without consent
    inferencer = TorchInferencer(path=exported["torch"], device="cpu")
    batch = images[:3]
    prediction = inferencer.predict(batch)
    assert not prediction.anomaly_map.requires_grad
    _assert_same_predictions(prediction, _reference(exported["model"], batch), batch=3)
    assert all(p.requires_grad for p in exported["model"].model.student_decoder.parameters())  # model untouched


def test_the_exports_output_the_chosen_map(exported: dict, openvino_f32: OpenVINOInferencer, images) -> None:
    """The exported map is the ``output_map`` one (the other differs), and the export's outputs are only anomalib's."""
    model = exported["model"]
    subset = images[:2]
    with torch.no_grad():
        both = model.model.predict_maps(subset)
        expected = model.post_processor(both[exported["output_map"]])
    other = "dest" if exported["output_map"] == "segmentation" else "segmentation"
    assert (both[other].anomaly_map - both[exported["output_map"]].anomaly_map).abs().max() > 1e-3
    _assert_same_predictions(openvino_f32.predict(subset.numpy()), expected, batch=2)
    loaded = torch.load(exported["torch"], map_location="cpu", weights_only=False)["model"]
    assert loaded.model.output_map == exported["output_map"]
    names = {output.get_any_name() for output in openvino_f32.model.outputs}
    assert names == {"pred_score", "pred_label", "anomaly_map", "pred_mask"}


@pytest.mark.parametrize("batch", [1, 3])
def test_the_openvino_export_matches_at_other_batch_sizes(
    exported: dict, openvino_f32: OpenVINOInferencer, images: torch.Tensor, batch: int
) -> None:
    subset = images[-batch:]  # traced with batch 2
    prediction = openvino_f32.predict(subset.numpy())
    _assert_same_predictions(prediction, _reference(exported["model"], subset), batch=batch)


def test_the_onnx_export_takes_any_batch_and_multiple_of_32_size(
    exported: dict, images: torch.Tensor, tmp_path: Path, monkeypatch
) -> None:
    """OpenVINO reads the dynamic ONNX file directly; 96x128 inputs give 96x128 maps like the torch model."""
    monkeypatch.chdir(tmp_path)
    inferencer = OpenVINOInferencer(path=exported["onnx"], device="CPU", config=F32)
    larger = torch.nn.functional.interpolate(images[:3], size=(96, 128), mode="bilinear", align_corners=False)
    prediction = inferencer.predict(larger.numpy())
    expected = _reference(exported["bare"], larger)
    assert tuple(expected.anomaly_map.shape) == (3, 1, 96, 128)
    _assert_same_predictions(prediction, expected, batch=3)


def test_the_onnx_export_matches_in_onnxruntime(exported: dict, images: torch.Tensor) -> None:
    path = exported["onnx"]
    onnxruntime = pytest.importorskip("onnxruntime", reason="onnxruntime is optional (not a project dependency)")
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    subset = images[:5]
    outputs = session.run(None, {session.get_inputs()[0].name: subset.numpy()})
    named = dict(zip([output.name for output in session.get_outputs()], outputs, strict=True))
    _assert_same_predictions(named, _reference(exported["bare"], subset), batch=5)


def test_full_size_images_give_the_lightning_models_predictions_in_onnxruntime_and_openvino(
    exported: dict, images: torch.Tensor, tmp_path: Path, monkeypatch
) -> None:
    """The export resizes with antialiasing as training and testing do (anomalib's own export drops it)."""
    if exported["resizing_onnx"] is None:
        pytest.skip("checked on each class's default map: the pre-processor does not depend on the map")
    onnxruntime = pytest.importorskip("onnxruntime")
    model = exported["model"]
    full_size = torch.nn.functional.interpolate(images[:3], size=(150, 110), mode="bicubic").clamp(0, 1)
    with torch.no_grad():  # the Lightning test path: the pre-processor's torchvision transform, model, post-processor
        expected = model.post_processor(model.model(model.pre_processor.transform(full_size)))
        plain = model.post_processor(
            model.model(torch.nn.functional.interpolate(full_size, size=(TINY_SIZE, TINY_SIZE), mode="bilinear"))
        )
    assert (plain.anomaly_map - expected.anomaly_map).abs().max() > 0  # antialiasing matters for these inputs
    session = onnxruntime.InferenceSession(str(exported["resizing_onnx"]), providers=["CPUExecutionProvider"])
    outputs = session.run(None, {session.get_inputs()[0].name: full_size.numpy()})
    named = dict(zip([output.name for output in session.get_outputs()], outputs, strict=True))
    _assert_same_predictions(named, expected, batch=3)
    monkeypatch.chdir(tmp_path)
    openvino = OpenVINOInferencer(path=exported["resizing_onnx"], device="CPU", config=F32)
    _assert_same_predictions(openvino.predict(full_size.numpy()), expected, batch=3)


# --- bad input ----------------------------------------------------------------------------------------------------
def test_a_static_export_refuses_another_image_size(
    exported: dict, openvino_f32: OpenVINOInferencer, images: torch.Tensor
) -> None:
    larger = torch.rand(2, 3, 96, 96)
    with pytest.raises(RuntimeError, match=r"input \(shape=\[\?,3,64,64\]\).*incompatible"):
        openvino_f32.predict(larger.numpy())
    model = OpenVINOModel(exported["openvino"], precision="f32")
    with pytest.raises(ValueError, match=r"takes images of shape \[any, 3, 64, 64\].*got \[2, 3, 96, 96\]"):
        model(larger)
    # Our wrapper takes the exported size and returns the Lightning model's InferenceBatch.
    assert model.inference_precision == "f32"
    _assert_same_predictions(model(images[:2]), _reference(exported["model"], images[:2]), batch=2)


def test_a_model_without_resizing_refuses_sizes_that_are_not_multiples_of_32(exported: dict, tmp_path: Path) -> None:
    engine = _engine(tmp_path)
    with pytest.raises(ValueError, match="multiples of 32"):
        engine.export(exported["bare"], ExportType.ONNX, export_root=tmp_path, input_size=(50, 64))
    with pytest.raises(ValueError, match="two positive integers"):
        engine.export(exported["bare"], ExportType.ONNX, export_root=tmp_path, input_size=(64, 0))
    assert not list(tmp_path.rglob("*.onnx"))


@pytest.mark.parametrize("model_class", MODEL_CLASSES, ids=lambda cls: cls.__name__)
def test_exporting_an_untrained_model_warns(model_class, teacher_weights: Path, tmp_path: Path) -> None:
    model = model_class(student_steps=2, segmentation_steps=3, visualizer=False)
    assert model.training_progress() == (0, 5)
    with pytest.warns(UntrainedExportWarning, match=r"completed 0 of its 5 planned.*teacher without ImageNet weights"):
        path = _engine(tmp_path).export(model, ExportType.TORCH, export_root=tmp_path)
    assert path.is_file()  # a warning, not a refusal
    model.model.teacher.load_weights(teacher_weights)
    model.completed_steps.fill_(4)
    with pytest.warns(UntrainedExportWarning, match=r"completed 4 of its 5") as record:
        model.warn_if_untrained()
    assert "teacher" not in str(record[0].message)


def test_the_step_count_survives_checkpoints(exported: dict) -> None:
    """Loaded from its checkpoint, the trained model exports silently; an older checkpoint uses its global_step."""
    model_class = type(exported["model"])
    if model_class is not DeSTSeg or exported["output_map"] != "segmentation":
        pytest.skip("the step counter lives in the shared Lightning module: checked once (DeSTSeg)")
    checkpoint_path = Path(exported["checkpoint"])
    loaded = model_class.load_from_checkpoint(checkpoint_path, weights_only=False)
    assert loaded.training_progress() == (4, 4)
    # A checkpoint from before the counter existed, loaded the way Lightning does (hook, then state dict).
    checkpoint = torch.load(checkpoint_path, weights_only=False)
    del checkpoint["state_dict"]["completed_steps"]
    checkpoint["global_step"] = 3
    plain_state = dict(checkpoint["state_dict"])
    older = model_class(student_steps=2, segmentation_steps=2)
    older.on_load_checkpoint(checkpoint)
    older.load_state_dict(checkpoint["state_dict"])
    assert older.training_progress() == (3, 4)
    plain = model_class(student_steps=2, segmentation_steps=2)
    plain.load_state_dict(plain_state)  # a plain state dict without the counter
    assert plain.training_progress() == (-1, 4)  # unknown: no warning is claimed either way
    with warnings.catch_warnings():
        warnings.simplefilter("error", UntrainedExportWarning)
        loaded.warn_if_untrained()
        plain.warn_if_untrained()
    with pytest.warns(UntrainedExportWarning, match="completed 3 of its 4"):
        older.warn_if_untrained()


# --- fast CPU inference variants ------------------------------------------------------------------------------
def test_channels_last_matches_and_bf16_stays_close(exported: dict, images: torch.Tensor) -> None:
    model = exported["model"]
    expected = _reference(model, images)
    channels_last = CPUInferenceModel(model, channels_last=True)
    actual = channels_last(images)
    _assert_same_predictions(actual, expected, batch=len(images))
    assert next(model.parameters()).is_contiguous()  # the wrapped model is a copy: the original is untouched
    bf16 = build_variant("channels_last_bf16", model)(images)
    assert bf16.anomaly_map.dtype == torch.float32
    assert bf16.anomaly_map.shape == expected.anomaly_map.shape
    difference = (bf16.anomaly_map - expected.anomaly_map).abs()
    assert difference.max() > 0  # bfloat16 changes the maps
    assert difference.max() < BF16_MAP_CHANGE[0] and difference.mean() < BF16_MAP_CHANGE[1]


@pytest.mark.slow
def test_torch_compile_matches_fp32_and_keeps_the_original(exported: dict, images: torch.Tensor) -> None:
    """Inductor folds BatchNorm into the convolutions: the same predictions up to float32 rounding."""
    model = exported["model"]
    if not isinstance(model, DeSTSeg) or exported["output_map"] != "segmentation":  # compiling takes a minute
        pytest.skip("torch.compile is checked on DeSTSeg only, to keep the suite short")
    expected = _reference(model, images)
    compiled = build_variant("torch_compile", model)
    assert compiled.describe() == "fp32, NCHW, compiled"
    _assert_same_predictions(compiled(images), expected, batch=len(images))
    _assert_same_predictions(compiled(images), expected, batch=len(images))  # the second call reuses the graph
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # the original keeps its BatchNorm


def test_torch_compile_without_a_compiler_says_so(exported: dict, images: torch.Tensor, monkeypatch) -> None:
    monkeypatch.setattr("anomalib_destseg.inference.torch_cpu.shutil.which", lambda name: None)
    with pytest.raises(RuntimeError, match="torch_compile needs a C\\+\\+ compiler"):
        build_variant("torch_compile", exported["model"])(images[:1])


def test_openvino_default_precision_runs_close_to_fp32(exported: dict, images: torch.Tensor) -> None:
    model = exported["model"]
    expected = _reference(model, images[:2])
    default = OpenVINOModel(exported["openvino"], precision=None)
    result = default(images[:2])
    assert result.anomaly_map.shape == expected.anomaly_map.shape
    difference = (result.anomaly_map - expected.anomaly_map).abs()
    assert difference.max() < BF16_MAP_CHANGE[0] and difference.mean() < BF16_MAP_CHANGE[1]


def test_unknown_variants_and_missing_export_folders_are_refused(exported: dict) -> None:
    with pytest.raises(ValueError, match="known: torch_fp32"):
        build_variant("torch_fp8", exported["model"])
    with pytest.raises(ValueError, match="needs export_root"):
        build_variant("openvino_fp32", exported["model"])
    assert set(VARIANTS) >= {"torch_fp32", "torch_bf16", "channels_last", "openvino_bf16", "openvino_int8"}


def test_int8_post_training_quantisation_of_the_exported_ir(
    exported: dict, images: torch.Tensor, tiny_dataset: Path
) -> None:
    """anomalib's INT8_PTQ step (NNCF, as ``Engine.export(compression_type=INT8_PTQ)`` runs it after converting).

    Applied to the IR exported above instead of tracing the model a third time; benchmarks/cpu_speed.py exports
    INT8 end to end through ``Engine.export``.
    """
    import openvino as ov

    if type(exported["model"]) is not DeSTSeg or exported["output_map"] != "segmentation":
        pytest.skip("quantising this IR is checked once (DeSTSeg); both classes' INT8 accuracy: test_learning.py")
    quantised = exported["model"]._compress_ov_model(
        shared_core().read_model(exported["openvino"]),
        CompressionType.INT8_PTQ,
        datamodule=tiny_datamodule(tiny_dataset, seed=0),
    )
    path = exported["root"] / "int8" / "model.xml"
    ov.save_model(quantised, path)
    operations = {op.get_type_name() for op in shared_core().read_model(path).get_ops()}
    assert "FakeQuantize" in operations
    result = OpenVINOModel(path, precision="f32")(images[:3])
    assert result.anomaly_map.shape == (3, 1, TINY_SIZE, TINY_SIZE)
    assert torch.isfinite(result.anomaly_map).all()
    assert result.pred_label.dtype == torch.bool
