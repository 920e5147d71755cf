r"""OpenVINO Model API against anomalib's OpenVINOInferencer on the exports of a briefly trained model; bf16 vs f32.

The script trains DeSTSeg or PFADSeg as the README demo does (generated 64x64 part, 60 + 120 steps, procedural
textures), exports it to OpenVINO in six variants (dynamic and fixed 64x64 input, each f32, FP16 and INT8 weight
compression), and on every test image compares

1. ``model_api.models.Model.create_model(xml)`` (only the IR's metadata; f32 through an ``OpenvinoAdapter`` with
   ``INFERENCE_PRECISION_HINT: f32``, the only setting given) with ``OpenVINOInferencer`` at f32 on the same RGB
   image: score and map differences (Model API's 8-bit map against the inferencer's map times 255), labels and
   masks that differ;
2. the same on the images resized to 96x80 (larger than the model's input) and 40x48 (smaller): a dynamic export
   takes them as they are; a fixed-size one gets them stretched to 64x64 by Model API's own bilinear resize (no
   antialiasing), and the inferencer, which a fixed input needs given images of its size, is given them resized by
   that same operation (``anomalib_destseg.export.model_api_resize``). Model API resizes its map back to the
   image's size (``cv2.resize`` of the 8-bit map), so the inferencer's map is resized the same way first;
3. a fixed-size export under Model API against the dynamic export (which resizes inside, with antialiasing as in
   training) on the larger images: what Model API's resize without antialiasing changes;
4. the dynamic f32 export at OpenVINO's default CPU precision (bf16 on CPUs with AVX-512 BF16 or AMX) against f32:
   largest score and map differences and labels that flip.

Usage (the figures in docs/export.md)::

    .venv/bin/python benchmarks/model_api_agreement.py --model destseg \
        --teacher-weights ../shared/weights/resnet18_imagenet1k_layer1to3.pth
    .venv/bin/python benchmarks/model_api_agreement.py --model pfadseg \
        --teacher-weights ../shared/weights/resnet18_imagenet1k_layer1to3.pth

"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import cv2
import numpy as np

F32 = {"INFERENCE_PRECISION_HINT": "f32"}
SIZE = 64
OTHER_SIZES = ((80, 96), (48, 40))  # (height, width): larger and smaller than the model's input
HEADER = "| export | images | max score diff | max map diff (of 255) | labels differing | mask pixels differing |"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("destseg", "pfadseg"), default="destseg")
    parser.add_argument("--teacher-weights", default="imagenet")
    parser.add_argument("--student-steps", type=int, default=60)
    parser.add_argument("--segmentation-steps", type=int, default=120)
    parser.add_argument("--work-dir", type=Path, default=None, help="default: a temporary folder, removed after")
    return parser.parse_args(argv)


def train(args: argparse.Namespace, root: Path):
    """The demo's training on a generated part under ``root``; returns the Engine, the model and the data root."""
    from anomalib.data import MVTecAD
    from anomalib.engine import Engine
    from lightning.pytorch import seed_everything

    from anomalib_destseg import DeSTSeg, PFADSeg
    from anomalib_destseg.data import DEFAULT_CATEGORY, make_synthetic_dataset

    seed_everything(0, verbose=False)
    make_synthetic_dataset(root / "data", image_size=SIZE, num_train=32, seed=0)
    model_class = DeSTSeg if args.model == "destseg" else PFADSeg
    model = model_class(
        student_steps=args.student_steps,
        segmentation_steps=args.segmentation_steps,
        teacher_weights=args.teacher_weights,
        pre_processor=model_class.configure_pre_processor((SIZE, SIZE)),
        visualizer=False,
    )
    datamodule = MVTecAD(
        root=root / "data", category=DEFAULT_CATEGORY, train_batch_size=8, eval_batch_size=8, num_workers=0
    )
    engine = Engine(
        default_root_dir=root / "results", accelerator="cpu", devices=1, logger=False, enable_progress_bar=False
    )
    engine.fit(model=model, datamodule=datamodule)
    return engine, model, sorted((root / "data" / DEFAULT_CATEGORY / "test").rglob("*.png"))


def export_all(engine, model, root: Path) -> dict[str, Path]:
    """The six OpenVINO exports, by name."""
    from anomalib.deploy import CompressionType, ExportType

    exports = {}
    for shape, input_size in (("dynamic", None), ("fixed", (SIZE, SIZE))):
        for variant, compression in (("f32", None), ("FP16", CompressionType.FP16), ("INT8", CompressionType.INT8)):
            name = f"{shape}-{variant}"
            exports[name] = engine.export(
                model,
                ExportType.OPENVINO,
                export_root=root / name,
                input_size=input_size,
                compression_type=compression,
            )
    return exports


def model_api_f32(xml: Path):
    """``Model.create_model`` on the IR alone, at f32 (the adapter carries only the precision)."""
    from model_api.adapters import OpenvinoAdapter
    from model_api.models import Model

    from anomalib_destseg.inference import shared_core

    return Model.create_model(OpenvinoAdapter(shared_core(), str(xml), device="CPU", plugin_config=dict(F32)))


def compare(xml: Path, images: list[np.ndarray], fixed: bool) -> dict[str, float]:
    """Largest score and map differences, and differing labels and mask pixels, Model API vs the inferencer."""
    from anomalib.deploy import OpenVINOInferencer

    from anomalib_destseg.export import model_api_resize

    wrapper = model_api_f32(xml)
    inferencer = OpenVINOInferencer(xml, device="CPU", config=dict(F32))
    score, map_255, labels, mask_pixels = 0.0, 0.0, 0, 0
    for image in images:
        result = wrapper(image)
        height, width = image.shape[:2]
        given = model_api_resize(image, (SIZE, SIZE)) if fixed else image
        expected = inferencer.predict(given.astype(np.float32) / 255)
        expected_map = expected.anomaly_map.squeeze() * 255
        expected_mask = expected.pred_mask.squeeze().astype(np.uint8)
        if expected_map.shape != (height, width):  # what Model API does to its map and mask
            expected_map = cv2.resize(np.round(expected_map).astype(np.uint8), (width, height)).astype(np.float32)
            expected_mask = cv2.resize(expected_mask, (width, height))
        score = max(score, abs(result.pred_score - float(expected.pred_score.squeeze())))
        map_255 = max(map_255, float(np.abs(result.anomaly_map.astype(np.float32) - expected_map).max()))
        labels += result.pred_label != str(bool(expected.pred_label.squeeze()))
        mask_pixels += int((result.pred_mask != expected_mask).sum())
    return {"score": score, "map_255": map_255, "labels": labels, "mask_pixels": mask_pixels}


def fixed_vs_dynamic(fixed_xml: Path, dynamic_xml: Path, images: list[np.ndarray]) -> dict[str, float]:
    """Model API on the fixed-size export against Model API on the dynamic one (both f32), same images."""
    fixed, dynamic = model_api_f32(fixed_xml), model_api_f32(dynamic_xml)
    score, map_255, labels = 0.0, 0.0, 0
    for image in images:
        a, b = fixed(image), dynamic(image)
        score = max(score, abs(a.pred_score - b.pred_score))
        map_255 = max(map_255, float(np.abs(a.anomaly_map.astype(np.float32) - b.anomaly_map).max()))
        labels += a.pred_label != b.pred_label
    return {"score": score, "map_255": map_255, "labels": labels}


def bf16_change(xml: Path, images: list[np.ndarray]) -> dict[str, float]:
    """OpenVINOInferencer at the CPU plugin's default precision against f32 (and which precision that was)."""
    from anomalib.deploy import OpenVINOInferencer

    f32 = OpenVINOInferencer(xml, device="CPU", config=dict(F32))
    default = OpenVINOInferencer(xml, device="CPU")
    precision = str(default.model.get_property("INFERENCE_PRECISION_HINT"))
    score, anomaly_map, labels, masks = 0.0, 0.0, 0, 0
    for image in images:
        a, b = f32.predict(image.astype(np.float32) / 255), default.predict(image.astype(np.float32) / 255)
        score = max(score, float(np.abs(a.pred_score - b.pred_score).max()))
        anomaly_map = max(anomaly_map, float(np.abs(a.anomaly_map - b.anomaly_map).max()))
        labels += int((a.pred_label != b.pred_label).sum())
        masks += int((a.pred_mask != b.pred_mask).sum())
    return {"precision": precision, "score": score, "map": anomaly_map, "labels": labels, "mask_pixels": masks}


def main(argv: list[str] | None = None) -> None:
    """Train, export, compare, print markdown tables."""
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as temporary:
        root = args.work_dir or Path(temporary)
        engine, model, paths = train(args, root)
        exports = export_all(engine, model, root / "exports")
        images = [cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB) for path in paths]
        print(f"\n{args.model}, {args.student_steps} + {args.segmentation_steps} steps, {len(images)} test images")
        print("\n" + HEADER)
        print("|---|---|---|---|---|---|")
        for name, xml in exports.items():
            for size in ((SIZE, SIZE), *OTHER_SIZES):
                resized = [cv2.resize(image, size[::-1], interpolation=cv2.INTER_AREA) for image in images]
                figures = compare(xml, resized, fixed=name.startswith("fixed"))
                print(
                    f"| {name} | {size[0]}x{size[1]} | {figures['score']:.2g} | {figures['map_255']:.3g} | "
                    f"{figures['labels']} | {figures['mask_pixels']} |"
                )
        larger = [cv2.resize(image, OTHER_SIZES[0][::-1], interpolation=cv2.INTER_AREA) for image in images]
        figures = fixed_vs_dynamic(exports["fixed-f32"], exports["dynamic-f32"], larger)
        print(
            f"\nModel API, fixed-size vs dynamic f32 export on {OTHER_SIZES[0][0]}x{OTHER_SIZES[0][1]} images: "
            f"max score diff {figures['score']:.3g}, max map diff {figures['map_255']:.3g} of 255, labels differing "
            f"{figures['labels']}"
        )
        figures = bf16_change(exports["dynamic-f32"], images)
        print(
            f"\nOpenVINOInferencer, dynamic f32 export, default CPU precision ({figures['precision']}) vs f32: "
            f"max score diff {figures['score']:.3g}, max map diff {figures['map']:.3g}, labels flipped "
            f"{figures['labels']}, mask pixels differing {figures['mask_pixels']}"
        )


if __name__ == "__main__":
    main()
