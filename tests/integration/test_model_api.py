"""OpenVINO Model API (the real ``openvino-model-api`` package) reads our OpenVINO exports as they are.

One tiny model per class (64x64, 2 + 2 steps) is exported twice: with a dynamic input and with a fixed 64x64 one
(what fixed-shape targets need). The variants are spread over the exports so that every one is covered once:
DeSTSeg f32 (dynamic and fixed), PFADSeg FP16 (dynamic) and INT8 weights (fixed). ``Model.create_model(xml)``,
given nothing but the IR (and f32 precision, a runtime setting), must then give ``OpenVINOInferencer``'s score,
label, map (within 8-bit rounding) and mask at f32, on the 64x64 test images and on images of other sizes.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from anomalib.deploy import CompressionType, ExportType, OpenVINOInferencer
from helpers import TINY_SIZE, quiet_cpu_engine, tiny_datamodule, tiny_model

from anomalib_destseg import DeSTSeg, PFADSeg
from anomalib_destseg.components.resnet_blocks import init_resnet_weights
from anomalib_destseg.export import model_api_resize
from anomalib_destseg.inference import shared_core

model_api = pytest.importorskip("model_api", reason="openvino-model-api is not installed (it is in the dev extra)")
openvino = pytest.importorskip("openvino", reason="openvino is not installed (it is in the export extra)")

F32 = {"INFERENCE_PRECISION_HINT": "f32"}
EXPORTS = {  # class -> ((input size, compression), ...): dynamic and fixed size per class, every variant once
    DeSTSeg: ((None, None), ((TINY_SIZE, TINY_SIZE), None)),
    PFADSeg: ((None, CompressionType.FP16), ((TINY_SIZE, TINY_SIZE), CompressionType.INT8)),
}
SCORE_TOLERANCE = {None: 1e-4, CompressionType.FP16: 1e-4, CompressionType.INT8: 3e-3}
"""Largest score difference allowed. INT8 weights are decompressed inside the graph, which OpenVINO fuses
differently once Model API has added its preprocessing: a PFADSeg fixed-size INT8 export differed by 6e-4 in score
(and 0.51 of 255 in the map). A score or map value this close to the threshold may fall either side."""


def _tolerance(model_class: type, name: str) -> float:
    shapes = {input_size is not None: compression for input_size, compression in EXPORTS[model_class]}
    return SCORE_TOLERANCE[shapes[name == "fixed"]]


@pytest.fixture(scope="module", params=[DeSTSeg, PFADSeg], ids=lambda cls: cls.__name__)
def exports(request, tiny_dataset: Path, teacher_weights: Path, tmp_path_factory) -> dict:
    """Train one tiny model and export it with a dynamic and a fixed input; also the test images (RGB, 8-bit)."""
    model_class = request.param
    root = tmp_path_factory.mktemp(f"model_api_{model_class.__name__}")
    torch.manual_seed(0)
    model = tiny_model(model_class, teacher_weights)
    init_resnet_weights(model.model.segmentation_network)  # outputs that differ between images (see test_export)
    engine = quiet_cpu_engine(root)
    datamodule = tiny_datamodule(tiny_dataset, seed=0)
    engine.fit(model=model, datamodule=datamodule)
    paths = {}
    for input_size, compression in EXPORTS[model_class]:
        name = "dynamic" if input_size is None else "fixed"
        paths[name] = engine.export(
            model,
            ExportType.OPENVINO,
            export_root=root / name,
            input_size=input_size,
            compression_type=compression,
        )
    images = sorted((tiny_dataset / "synthetic" / "test").rglob("*.png"))
    rgb = [cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB) for path in images]
    return {"class": model_class, "paths": paths, "images": rgb}


def _model_api_f32(xml: Path):
    from model_api.adapters import OpenvinoAdapter
    from model_api.models import Model

    return Model.create_model(OpenvinoAdapter(shared_core(), str(xml), device="CPU", plugin_config=dict(F32)))


def _compare(wrapper, inferencer: OpenVINOInferencer, image: np.ndarray, given: np.ndarray, tie: float) -> dict:
    """Model API on ``image`` against the inferencer on ``given`` (the same image, or it resized to a fixed input)."""
    result = wrapper(image)
    expected = inferencer.predict(given.astype(np.float32) / 255)
    height, width = image.shape[:2]
    expected_map = expected.anomaly_map.squeeze() * 255
    expected_mask = expected.pred_mask.squeeze().astype(np.uint8)
    undecided = np.abs(expected.anomaly_map.squeeze() - 0.5) < tie
    if expected_map.shape != (height, width):  # Model API resizes its 8-bit map and its mask to the image's size
        expected_map = cv2.resize(np.round(expected_map).astype(np.uint8), (width, height)).astype(np.float32)
        expected_mask = cv2.resize(expected_mask, (width, height))
        undecided = cv2.resize(undecided.astype(np.uint8), (width, height)).astype(bool)
    score = float(expected.pred_score.squeeze())
    assert result.anomaly_map.shape == result.pred_mask.shape == (height, width)
    return {
        "score": abs(result.pred_score - score),
        "map": float(np.abs(result.anomaly_map.astype(np.float32) - expected_map).max()),
        "label_differs": abs(score - 0.5) > tie and result.pred_label != str(bool(expected.pred_label.squeeze())),
        "mask_pixels": int(((result.pred_mask != expected_mask) & ~undecided).sum()),
    }


@pytest.mark.slow
def test_exports_carry_model_api_metadata_and_keep_their_weight_types(exports: dict) -> None:
    from model_api.models import AnomalyDetection, Model

    for name, xml in exports["paths"].items():
        wrapper = Model.create_model(str(xml))  # nothing but the file, as a new user would
        assert isinstance(wrapper, AnomalyDetection), name
        params = wrapper.params
        assert (params.scale_values, params.mean_values, params.reverse_input_channels) == ([255] * 3, [0] * 3, False)
        assert (params.labels, params.task, params.resize_type) == (["Normal", "Anomaly"], "segmentation", "standard")
        assert (params.image_threshold, params.pixel_threshold, params.normalization_scale) == (0.5, 0.5, 1.0)
        result = wrapper(exports["images"][0])
        assert result.pred_label in {"True", "False"} and result.anomaly_map.shape == (TINY_SIZE, TINY_SIZE)
        constants = {
            str(op.get_element_type())
            for op in shared_core().read_model(xml).get_ops()
            if op.get_type_name() == "Constant"
        }
        compression = dict(EXPORTS[exports["class"]])[None if name == "dynamic" else (TINY_SIZE, TINY_SIZE)]
        if compression is CompressionType.FP16:
            assert "<Type: 'float16'>" in constants  # re-saving with the metadata kept the FP16 weights
        if compression is CompressionType.INT8:
            assert "<Type: 'uint8_t'>" in constants or "<Type: 'int8_t'>" in constants


@pytest.mark.slow
def test_a_fixed_size_export_saved_for_a_model_server_embeds_model_apis_preprocessing(exports: dict, tmp_path) -> None:
    """OpenVINO Model Server cannot take Model API's preprocessing at run time: it is saved into the IR beforehand."""
    wrapper = _model_api_f32(exports["paths"]["fixed"])
    served = tmp_path / "models" / "anomaly" / "1" / "model.xml"  # OVMS's layout: <name>/<version>/model.xml
    wrapper.save(str(served))
    reloaded = _model_api_f32(served)
    (image_input,) = reloaded.inference_adapter.model.inputs
    assert reloaded.params.embedded_processing and str(image_input.get_element_type()) == "<Type: 'uint8_t'>"
    assert list(image_input.get_partial_shape())[1:3] == [openvino.Dimension(), openvino.Dimension()]  # any size
    for image in exports["images"][:3]:
        larger = cv2.resize(image, (96, 80), interpolation=cv2.INTER_AREA)
        before, after = wrapper(larger), reloaded(larger)
        assert before.pred_score == pytest.approx(after.pred_score, abs=1e-6)
        assert np.array_equal(before.anomaly_map, after.anomaly_map)
        assert np.array_equal(before.pred_mask, after.pred_mask) and before.pred_label == after.pred_label


@pytest.mark.slow
def test_model_api_gives_the_inferencers_results_at_f32(exports: dict) -> None:
    for name, xml in exports["paths"].items():
        wrapper, inferencer = _model_api_f32(xml), OpenVINOInferencer(xml, device="CPU", config=dict(F32))
        tolerance = _tolerance(exports["class"], name)
        figures = [_compare(wrapper, inferencer, image, image, tolerance) for image in exports["images"]]
        assert max(f["score"] for f in figures) < tolerance, name
        assert max(f["map"] for f in figures) <= 0.5 + 255 * tolerance, name  # 8-bit rounding of the same map
        assert not any(f["label_differs"] for f in figures), name
        assert sum(f["mask_pixels"] for f in figures) == 0, name
        # the comparison means something: the maps are not all clamped to 0 or 1 and differ between pixels
        maps = np.stack([np.asarray(inferencer.predict(image / 255.0).anomaly_map) for image in exports["images"]])
        inside = (maps > 0) & (maps < 1)
        assert inside.mean() > 0.2 and len(np.unique(maps[inside].round(3))) > 50, name


@pytest.mark.slow
@pytest.mark.parametrize("size", [(80, 96), (48, 40)], ids=["larger", "smaller"])
def test_model_api_on_images_of_another_size(exports: dict, size: tuple[int, int]) -> None:
    """A dynamic export takes them as they are; a fixed one gets Model API's resize (bilinear, 8-bit, no antialias).

    The inferencer needs the fixed input's size: it is given the images resized by that same operation
    (:func:`~anomalib_destseg.export.model_api_resize`). Maps come back at the image's size from Model API.
    """
    height, width = size
    images = [cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA) for image in exports["images"]]
    for name, xml in exports["paths"].items():
        wrapper, inferencer = _model_api_f32(xml), OpenVINOInferencer(xml, device="CPU", config=dict(F32))
        fixed, tolerance = name == "fixed", _tolerance(exports["class"], name)
        figures = [
            _compare(wrapper, inferencer, image, model_api_resize(image, (TINY_SIZE, TINY_SIZE)) if fixed else image,
                     tolerance)
            for image in images
        ]  # fmt: skip
        assert max(f["score"] for f in figures) < tolerance, name
        assert max(f["map"] for f in figures) <= (1 if fixed else 0.5) + 255 * tolerance, name  # resized: +-1
        assert not any(f["label_differs"] for f in figures), name
        assert sum(f["mask_pixels"] for f in figures) == 0, name
