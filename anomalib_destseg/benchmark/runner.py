"""One benchmark run (one model on one dataset) in its own process, so that its peak memory is its own.

The parent (:mod:`anomalib_destseg.benchmark.__main__`) writes a JSON spec and starts
``python -m anomalib_destseg.benchmark.runner SPEC``. This process trains the model with anomalib's ``Engine``, tests
it with the paper evaluator, times a separate inference pass, saves the post-processed anomaly maps of a few fixed
test images for the comparison panel, and writes ``result.json`` next to the spec. A failure is written there too
(status ``"failed"`` and the error's last line) and the exit code is 1.

What is measured:

- ``fit_s``: wall time of ``Engine.fit``: training plus the one validation pass that anomalib uses to set the
  thresholds and the normalisation range (no checkpoint is written unless asked for).
- ``test_s``: wall time of ``Engine.test`` (inference and all metrics, the DeST map's too; AUPRO and IAP are not cheap).
- ``infer_img_per_s``: test images per second of the model's ``forward`` (pre-processing resize, network,
  post-processing) over the whole test set at the evaluation batch size, after one untimed warm-up batch; image
  decoding and metrics are not included.

DeSTSeg and PFADSeg also report their DeST map from the same run: its metrics come from the same ``Engine.test``
(``DeST_`` prefix), and its inference speed and panel maps (``predictions_dest.npz``) from the same model switched to
``output_map="dest"``, without post-processing (its thresholds belong to the segmentation map; the panel scales each
map by its own range anyway). They are written under ``second_map`` in ``result.json``.

Example:
    python -m anomalib_destseg.benchmark.runner results/runs/bottle/DeSTSeg/spec.json

"""

import contextlib
import json
import logging
import math
import os
import resource
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

from anomalib_destseg.components.maps import DEST_MAP, METRIC_PREFIXES
from anomalib_destseg.components.teacher import TIMM_NAME

from .models import build_datamodule, build_engine, build_model, timm_weights_message
from .protocols import TWO_STAGE_MODELS

logger = logging.getLogger("anomalib_destseg.benchmark")

RESULT_FILE = "result.json"
PREFLIGHT_FLAG = "--preflight"
PREFLIGHT_MARKER = "PREFLIGHT "
PREDICTIONS_FILE = "predictions.npz"
SECOND_PREDICTIONS_FILE = "predictions_dest.npz"


def select_panel_indices(image_paths: list[str], labels: list[int], count: int) -> list[int]:
    """Pick ``count`` test images for the comparison panel, the same in every run.

    Anomalous images evenly spaced in path order (so several defect types show), then one normal image.

    Example:
        >>> select_panel_indices(["a/good/0", "b/bad/0", "b/bad/1", "b/bad/2"], [0, 1, 1, 1], 3)
        [1, 3, 0]

    """
    if count <= 0:
        return []
    order = sorted(range(len(image_paths)), key=lambda index: image_paths[index])
    abnormal = [index for index in order if labels[index] == 1]
    normal = [index for index in order if labels[index] == 0]
    n_abnormal = min(len(abnormal), count - 1 if normal else count)
    picks = [abnormal[round(p)] for p in np.linspace(0, len(abnormal) - 1, n_abnormal)] if n_abnormal else []
    picks = list(dict.fromkeys(picks))
    picks.extend(normal[: count - len(picks)])
    return picks


def _device(accelerator: str):
    import torch

    if accelerator in {"auto", "gpu", "cuda"} and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_inference(model, dataloader, device) -> tuple[int, float, tuple[float, float]]:
    """Run ``model`` (pre-processing, network, post-processing) over ``dataloader``.

    The first batch runs once untimed as a warm-up; data loading is not timed.

    Returns:
        Images seen, seconds of forward passes, and (min, max) of the anomaly maps (for the panel's colour scale).

    """
    import torch

    model.eval().to(device)
    images_seen, seconds, warmed_up = 0, 0.0, False
    low, high = math.inf, -math.inf
    with torch.inference_mode():
        for batch in dataloader:
            images = batch.image.to(device)
            if not warmed_up:
                model(images)
                warmed_up = True
            _sync(device)
            start = time.perf_counter()
            prediction = model(images)
            _sync(device)
            seconds += time.perf_counter() - start
            images_seen += images.shape[0]
            low = min(low, float(prediction.anomaly_map.min()))
            high = max(high, float(prediction.anomaly_map.max()))
    return images_seen, seconds, (low, high)


def save_panel_predictions(
    model,
    dataset,
    count: int,
    device,
    path: Path,
    map_range: tuple[float, float],
) -> int:
    """Save the anomaly maps of the panel images (and the test set's map range) to ``path`` (npz); return how many.

    The maps are what the model's ``forward`` returns (normalised by the post-processor); the panel scales
    each model's maps to [0, 1] with ``map_range``, its own minimum and maximum over the whole test set.
    """
    import torch

    samples = dataset.samples
    image_paths = [str(p) for p in samples["image_path"]]
    labels = [int(v) for v in samples["label_index"]]
    mask_column = list(samples["mask_path"]) if "mask_path" in samples else [""] * len(samples)
    indices = select_panel_indices(image_paths, labels, count)
    maps, scores = [], []
    model.eval().to(device)
    with torch.inference_mode():
        for index in indices:
            prediction = model(dataset[index].image.unsqueeze(0).to(device))
            anomaly_map = prediction.anomaly_map.detach().float().cpu()
            maps.append(anomaly_map.reshape(anomaly_map.shape[-2:]).numpy())
            scores.append(float(prediction.pred_score.reshape(-1)[0]))
    np.savez_compressed(
        path,
        image_paths=np.array([image_paths[i] for i in indices], dtype=str),
        mask_paths=np.array([m if isinstance(m := mask_column[i], str) else "" for i in indices], dtype=str),
        labels=np.array([labels[i] for i in indices], dtype=np.int64),
        anomaly_maps=np.stack(maps).astype(np.float32) if maps else np.zeros((0, 1, 1), dtype=np.float32),
        pred_scores=np.array(scores, dtype=np.float32),
        map_range=np.array(map_range, dtype=np.float64),
    )
    return len(indices)


@contextlib.contextmanager
def showing_map(model, name: str):
    """Within the block, ``model`` (DeSTSeg / PFADSeg) outputs map ``name`` without post-processing (raw values)."""
    output_map, post_processor = model.model.output_map, model.post_processor
    model.model.output_map, model.post_processor = name, None
    try:
        yield model
    finally:
        model.model.output_map, model.post_processor = output_map, post_processor


def own_peak_rss_gb() -> float:
    """Peak resident memory of this process and its finished children (data-loader workers), in GB."""
    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    peak = max(resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return peak * scale / 1e9


def run(spec: dict[str, Any]) -> dict[str, Any]:
    """Train, test, time and save predictions for one model; return the result record (status ``"ok"``)."""
    import anomalib
    import lightning
    import torch
    from lightning.pytorch import seed_everything

    run_dir = Path(spec["run_dir"])
    seed_everything(spec["seed"], workers=True)
    settings = spec["settings"]
    datamodule = build_datamodule(
        spec["dataset"], settings["train_batch_size"], settings["eval_batch_size"], spec["num_workers"], spec["seed"]
    )
    model = build_model(
        spec["model"],
        spec["image_size"],
        teacher_weights=spec["teacher_weights"],
        texture_dir=spec.get("texture_dir"),
        student_steps=settings.get("student_steps"),
        segmentation_steps=settings.get("segmentation_steps"),
        coreset_sampling_ratio=settings.get("coreset_sampling_ratio"),
        raw_scores=not spec.get("normalize_scores", False),
        **(settings.get("model_kwargs") or {}),
    )
    # anomalib's Engine writes a versioned folder tree (with a "latest" link): keep it only with the checkpoint.
    keep = bool(spec.get("keep_checkpoints"))
    with tempfile.TemporaryDirectory(prefix="benchmark_engine_") as scratch:
        engine = build_engine(
            run_dir / "engine" if keep else Path(scratch),
            spec["accelerator"],
            keep_checkpoints=keep,
            epochs=settings.get("epochs") if spec["model"] == "Stfpm" else None,
            precision=settings["precision"],
            channels_last=settings["channels_last"],
            tile_size=spec.get("tile_size"),
        )

        start = time.perf_counter()
        engine.fit(model, datamodule=datamodule)
        fit_s = time.perf_counter() - start

        start = time.perf_counter()
        test_results = engine.test(model, datamodule=datamodule, verbose=False)
        test_s = time.perf_counter() - start
    metrics = {key: float(value) for key, value in (test_results[0] if test_results else {}).items()}

    device = _device(spec["accelerator"])
    n_images, seconds, map_range = timed_inference(model, datamodule.test_dataloader(), device)
    n_panel = save_panel_predictions(
        model, datamodule.test_data, spec["panel_images"], device, run_dir / PREDICTIONS_FILE, map_range
    )
    second_map = None
    if spec["model"] in TWO_STAGE_MODELS:
        with showing_map(model, DEST_MAP):
            second_images, second_seconds, second_range = timed_inference(model, datamodule.test_dataloader(), device)
            save_panel_predictions(
                model,
                datamodule.test_data,
                spec["panel_images"],
                device,
                run_dir / SECOND_PREDICTIONS_FILE,
                second_range,
            )
        second_map = {
            "map": DEST_MAP,
            "metric_prefix": METRIC_PREFIXES[DEST_MAP],
            "infer_images": second_images,
            "infer_s": second_seconds,
            "infer_img_per_s": second_images / second_seconds if second_seconds > 0 else float("nan"),
            "predictions": SECOND_PREDICTIONS_FILE,
        }

    hparams = getattr(model, "hparams", {})
    texture = hparams.get("texture_dir", None) if spec["model"] in TWO_STAGE_MODELS else None
    return {
        "status": "ok",
        "error": "",
        "metrics": metrics,
        "fit_s": fit_s,
        "test_s": test_s,
        "infer_images": n_images,
        "infer_s": seconds,
        "infer_img_per_s": n_images / seconds if seconds > 0 else float("nan"),
        "n_train": len(datamodule.train_data),
        "n_test": len(datamodule.test_data),
        "panel_images": n_panel,
        "texture": (str(texture) if texture else "procedural") if spec["model"] in TWO_STAGE_MODELS else "",
        "second_map": second_map,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({os.cpu_count()} cores)",
        "versions": {"torch": torch.__version__, "anomalib": anomalib.__version__, "lightning": lightning.__version__},
    }


def _teacher_tensors(teacher_weights: str) -> dict:
    from anomalib_destseg.components.teacher import IMAGENET, imagenet_state_dict, read_state_dict

    state = imagenet_state_dict() if teacher_weights == IMAGENET else read_state_dict(teacher_weights)
    return {key.removeprefix("module."): value for key, value in state.items()}


def preflight(models: list[str], teacher_weights: str) -> tuple[list[str], list[str], bool | None]:
    """Load the weights each model family needs, the way the runs load them, and compare them.

    Returns:
        Errors (the command stops), notes for the report, and whether both families' conv1..layer3 tensors are
        identical (``None`` if not compared).

    """
    import torch

    from anomalib_destseg.components.teacher import TEACHER_PREFIXES

    errors, notes = [], []
    teacher = timm_state = None
    if any(m in TWO_STAGE_MODELS for m in models):
        try:
            teacher = _teacher_tensors(teacher_weights)
        except Exception as error:
            errors.append(str(error))
    if any(m not in TWO_STAGE_MODELS for m in models):
        try:
            import timm

            timm_state = timm.create_model(TIMM_NAME, pretrained=True).state_dict()
        except Exception as error:
            errors.append(timm_weights_message(error))
    same = None
    if teacher is not None and timm_state is not None:
        keys = [k for k in teacher if k.startswith(TEACHER_PREFIXES) and not k.endswith("num_batches_tracked")]
        same = bool(keys) and all(k in timm_state and torch.equal(teacher[k], timm_state[k]) for k in keys)
        if not same:
            notes.append(
                f"The DeSTSeg/PFADSeg teacher weights ({teacher_weights}) differ from timm's {TIMM_NAME} used by "
                "Patchcore/Stfpm: the models do not share the same ImageNet features."
            )
    return errors, notes, same


def error_line(error: BaseException) -> str:
    r"""``Type: last line of the message`` of an exception.

    Example:
        >>> error_line(ValueError("first\nsecond"))
        'ValueError: second'

    """
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[-1].strip()}" if lines else type(error).__name__


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` as JSON atomically (temporary file, then rename)."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(data, indent=2, default=str))
    os.replace(temporary, path)


def main(argv: list[str] | None = None) -> int:
    """Run the spec given as the only argument; return 0 on success, 1 on failure (also recorded)."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 2 and argv[0] == PREFLIGHT_FLAG:
        request = json.loads(argv[1])
        errors, notes, same = preflight(request["models"], request["teacher_weights"])
        print(PREFLIGHT_MARKER + json.dumps({"errors": errors, "notes": notes, "same": same}))
        return 0
    if len(argv) != 1:
        print(f"usage: python -m anomalib_destseg.benchmark.runner SPEC.json | {PREFLIGHT_FLAG} JSON", file=sys.stderr)
        return 2
    spec_path = Path(argv[0])
    spec = json.loads(spec_path.read_text())
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    try:
        result = run(spec)
        code = 0
    except Exception as error:
        traceback.print_exc()
        result, code = {"status": "failed", "error": error_line(error)}, 1
    result["peak_rss_gb_self"] = own_peak_rss_gb()
    write_json(spec_path.parent / RESULT_FILE, result)
    return code


if __name__ == "__main__":
    sys.exit(main())
