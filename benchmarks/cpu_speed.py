r"""CPU inference speed of DeSTSeg (and PFADSeg) against anomalib's Stfpm and Patchcore, per inference variant.

In one run the script

1. measures the machine's attainable convolution throughput (GMAC/s, fp32 and bf16) with a micro-benchmark: a
   3x3 convolution, 256 -> 256 channels, 64x64, batch 8, NCHW and channels-last, timed after warm-up;
2. counts each model's multiply-accumulates per image (``torch.utils.flop_counter.FlopCounterMode`` / 2, forward
   of the whole exported pipeline: pre-processor, model, post-processor);
3. times every variant of every model at ``--image-size`` and ``--batch-size`` in a fresh process of its own (so
   the peak resident memory it reports is that variant's: loading plus inference; OpenVINO processes import
   openvino and numpy only, no torch): images per second, the fraction of the attainable limit reached (fp32
   variants against the fp32 limit, bf16 ones against the bf16 limit), peak RSS and the time ratio to Stfpm;
4. optionally measures the accuracy cost of each variant (image AUROC and pixel AP on an MVTec AD category's test
   set, minus torch fp32's) for models given a trained ``--checkpoint`` and ``--data-root``;
5. checks two targets (torch fp32 >= 80 % of the fp32 conv limit; for DeSTSeg, the fastest variant whose image
   AUROC drops by at most 0.005 reaches 8 images/s) and, when one is missed, profiles the torch forward
   (``torch.profiler``, top operators) to show where the time goes;
6. prints a markdown report and writes it to ``--output``.

Variants (see :mod:`anomalib_destseg.inference`): torch_fp32, torch_bf16, channels_last, channels_last_bf16,
openvino_fp32, openvino_bf16 (the CPU plugin's default precision, bf16 on CPUs with AVX-512 BF16/AMX) and
openvino_int8 (NNCF post-training quantisation through ``Engine.export(compression_type=INT8_PTQ, datamodule=...)``,
calibrated on normal training images of ``--data-root``, or on generated images when no data is given).

Without a checkpoint, DeSTSeg/PFADSeg get ImageNet teachers and untrained students (speed does not depend on the
weights), Stfpm an untrained student, and Patchcore a random memory bank of the size coreset sampling (0.1) of
``--patchcore-train-images`` training images would give; with ``--data-root``, Patchcore is fitted on the category's
training images instead.

Usage (the full run; takes a while on 2 cores, run it on a quiet machine)::

    HF_HOME=/tmp/offline/hf TORCH_HOME=/tmp/offline/torch HF_HUB_OFFLINE=1 \
    .venv/bin/python benchmarks/cpu_speed.py --models destseg,pfadseg,stfpm,patchcore \
        --checkpoint destseg=results/DeSTSeg/MVTecAD/bottle/latest/weights/lightning/model.ckpt \
        --data-root /work/shared/data/mvtec_ad --category bottle --output docs/benchmarks/cpu_speed.md

A quick check of the script itself::

    .venv/bin/python benchmarks/cpu_speed.py --models destseg --iterations 2 --variants torch_fp32,openvino_fp32

"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
DEFAULT_TEACHER = SHARED / "weights" / "resnet18_imagenet1k_layer1to3.pth"
MODELS = ("destseg", "pfadseg", "stfpm", "patchcore")
OURS = ("destseg", "pfadseg")
ALL_VARIANTS = (
    "torch_fp32",
    "torch_bf16",
    "channels_last",
    "channels_last_bf16",
    "torch_compile",
    "torch_compile_bf16",
    "openvino_fp32",
    "openvino_bf16",
    "openvino_int8",
)
BF16_VARIANTS = {"torch_bf16", "channels_last_bf16", "torch_compile_bf16", "openvino_bf16"}
TORCH_FP32_VARIANTS = {"torch_fp32", "channels_last", "torch_compile"}  # float32 arithmetic in PyTorch
FP32_TARGET = 0.80
AUROC_DROP = 0.005
DESTSEG_TARGET_IPS = 8.0


def _offline_environment() -> None:
    """No hub downloads: use the offline caches of helpers.md when present (set before importing timm/anomalib)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    for variable, folder in (("HF_HOME", "/tmp/offline/hf"), ("TORCH_HOME", "/tmp/offline/torch")):
        if variable not in os.environ and Path(folder).is_dir():
            os.environ[variable] = folder


def _peak_rss_mb() -> float:
    """Peak resident memory of the current process in MB.

    ``VmHWM`` belongs to the address space created at ``exec``; ``ru_maxrss`` would carry over the parent's peak
    into a child started by fork + exec.
    """
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


# --- child process: time one variant ---------------------------------------------------------------------------
def _time_loop(run: Any, batch: Any, warmup: int, iterations: int) -> dict[str, Any]:
    for _ in range(warmup):
        run(batch)
    times = []
    cpu_start, wall_start = time.process_time(), time.perf_counter()
    for _ in range(iterations):
        start = time.perf_counter()
        run(batch)
        times.append(time.perf_counter() - start)
    wall = time.perf_counter() - wall_start
    return {"batch_seconds": times, "wall": wall, "cpu": time.process_time() - cpu_start}


def child_main(spec: dict[str, Any]) -> dict[str, Any]:
    """Load one prepared variant, run it on a random batch, return timings and peak memory."""
    shape = (spec["batch_size"], 3, spec["image_size"], spec["image_size"])
    result: dict[str, Any] = {}
    if spec["backend"] == "openvino":
        import numpy as np

        from anomalib_destseg.inference import shared_core

        core = shared_core()  # one Core per process: anomalib_destseg/inference/openvino_core.py
        config = {"INFERENCE_PRECISION_HINT": spec["precision"]} if spec["precision"] else {}
        compiled = core.compile_model(core.read_model(spec["path"]), "CPU", config)
        request = compiled.create_infer_request()
        batch = np.random.default_rng(0).random(shape, dtype=np.float32)
        result["precision"] = compiled.get_property("INFERENCE_PRECISION_HINT").to_string()
        if spec.get("int8"):
            result["precision"] = f"int8 + {result['precision']}"
        result["threads"] = int(compiled.get_property("INFERENCE_NUM_THREADS"))

        def run(images: Any) -> None:
            request.infer({0: images})
    else:
        import torch

        if spec.get("threads"):
            torch.set_num_threads(spec["threads"])
        from anomalib_destseg.inference import CPUInferenceModel

        model = torch.load(spec["path"], map_location="cpu", weights_only=False)["model"]
        runner = CPUInferenceModel(
            model,
            channels_last=spec["channels_last"],
            bf16=spec["bf16"],
            copy_model=False,
            torch_compile=spec.get("torch_compile", False),
        )
        batch = torch.rand(shape, generator=torch.Generator().manual_seed(0))
        result["precision"] = "bf16 autocast" if spec["bf16"] else "f32"
        if spec.get("torch_compile"):
            result["precision"] += ", compiled"
        result["threads"] = torch.get_num_threads()
        run = runner
    result.update(_time_loop(run, batch, spec["warmup"], spec["iterations"]))
    result["peak_rss_mb"] = _peak_rss_mb()
    return result


def run_child(spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Run :func:`child_main` in a fresh interpreter; returns its result or ``{"error": ...}``."""
    command = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)]
    try:
        completed = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    for line in reversed(completed.stdout.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    tail = (completed.stderr or completed.stdout).strip().splitlines()[-3:]
    return {"error": f"exit {completed.returncode}: {' | '.join(tail)[-400:]}"}


# --- machine --------------------------------------------------------------------------------------------------
def machine_description() -> dict[str, Any]:
    """CPU model, logical cores, relevant ISA flags, load, library versions."""
    import openvino
    import torch

    model_name, flags = platform.processor() or "?", set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name") and model_name in {"?", "", "x86_64"}:
                model_name = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    isa = [flag for flag in ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8") if flag in flags]
    return {
        "cpu": model_name,
        "logical_cores": os.cpu_count(),
        "isa": isa,
        "load_average": os.getloadavg(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "openvino": openvino.__version__.split("-")[0],
    }


def conv_limit(iterations: int, warmup: int = 2) -> dict[str, dict[str, float]]:
    """Attainable conv throughput (GMAC/s): one 3x3 conv 256->256 at 64x64, batch 8, in fp32 and bf16.

    Timed through torch (oneDNN) in NCHW and channels-last, and through OpenVINO's CPU plugin (its own oneDNN
    kernels and weight layout); the limit is the best of the three, so no variant below is compared with a slower
    implementation of the same convolution than this machine offers.
    """
    import numpy as np
    import openvino as ov
    import torch

    from anomalib_destseg.inference import shared_core

    batch, channels, size = 8, 256, 64
    macs = batch * size * size * channels * channels * 9
    conv = torch.nn.Conv2d(channels, channels, 3, padding=1, bias=False).eval()
    images = torch.randn(batch, channels, size, size)
    with torch.inference_mode():
        ir = ov.convert_model(conv, example_input=images)
    results: dict[str, dict[str, float]] = {}
    for dtype_name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        results[dtype_name] = {}
        for layout, memory_format in (("nchw", torch.contiguous_format), ("channels_last", torch.channels_last)):
            layer = conv.to(dtype=dtype, memory_format=memory_format)
            x = images.to(dtype=dtype).contiguous(memory_format=memory_format)
            with torch.inference_mode():
                timing = _time_loop(layer, x, warmup, iterations)
            results[dtype_name][layout] = macs / min(timing["batch_seconds"]) / 1e9
        hint = {"fp32": "f32", "bf16": "bf16"}[dtype_name]
        request = shared_core().compile_model(ir, "CPU", {"INFERENCE_PRECISION_HINT": hint}).create_infer_request()
        x = images.numpy().astype(np.float32)
        timing = _time_loop(lambda array, request=request: request.infer({0: array}), x, warmup, iterations)
        results[dtype_name]["openvino"] = macs / min(timing["batch_seconds"]) / 1e9
        results[dtype_name]["limit"] = max(results[dtype_name].values())
    return results


def _calibration_datamodule(args: argparse.Namespace, workdir: Path) -> Any:
    """Normal training images at the benchmark size for INT8 calibration (from --data-root, else generated)."""
    from anomalib.data import MVTecAD
    from torchvision.transforms.v2 import Resize

    size = (args.image_size, args.image_size)
    if args.data_root:
        root, category = Path(args.data_root), args.category
    else:
        from anomalib_destseg.data import make_synthetic_dataset

        root, category = workdir / "calibration_data", "synthetic"
        if not (root / category).is_dir():
            make_synthetic_dataset(root, image_size=args.image_size, num_train=32, num_test_good=4, num_test_defect=4)
    return MVTecAD(
        root=root,
        category=category,
        train_batch_size=args.batch_size,
        eval_batch_size=args.batch_size,
        num_workers=0,
        val_augmentations=Resize(size, antialias=True),
        val_split_mode="from_train",
        val_split_ratio=0.2,
        seed=0,
    )


def _finite_post_processor(model: Any) -> None:
    """Speed-only models never validated: give NaN thresholds and ranges neutral values so every export compiles.

    (OpenVINO refuses to compile the INT8 graph of a clamp with NaN bounds.) Trained models are left alone.
    """
    import torch

    post = getattr(model, "post_processor", None)
    neutral = {"_image_threshold": 0.5, "_pixel_threshold": 0.5, "image_min": 0.0, "image_max": 1.0}
    neutral |= {"pixel_min": 0.0, "pixel_max": 1.0}
    for name, value in neutral.items():
        buffer = getattr(post, name, None)
        if isinstance(buffer, torch.Tensor) and torch.isnan(buffer).all():
            buffer.fill_(value)


def _check_checkpoint_size(model: Any, checkpoint: str, image_size: int) -> None:
    """Refuse a checkpoint whose pre-processor resizes to another size than --image-size.

    Its exports and its Lightning forward would resize the benchmark's images to the training size, so the speed
    would be that of the training size and the anomaly maps would not match the test masks.
    """
    trained = model.image_size  # the pre-processor's Resize target
    if trained is not None and tuple(trained) != (image_size, image_size):
        msg = (
            f"{checkpoint} resizes its input to {trained[0]}x{trained[1]}, but --image-size is {image_size}: run with "
            f"--image-size {trained[0]} to measure this checkpoint (speed and accuracy at its training size)"
        )
        raise SystemExit(msg)


def build_model(name: str, args: argparse.Namespace, workdir: Path) -> tuple[Any, str]:
    """The Lightning model to benchmark and a note on its weights."""
    model, weights = _build_model(name, args, workdir)
    _finite_post_processor(model)
    return model, weights


def _build_model(name: str, args: argparse.Namespace, workdir: Path) -> tuple[Any, str]:
    import torch

    from anomalib_destseg.benchmark.models import build_model, canonical_name

    checkpoint = args.checkpoints.get(name)
    if checkpoint:
        from anomalib_destseg import DeSTSeg, PFADSeg

        classes = {"destseg": DeSTSeg, "pfadseg": PFADSeg}
        if name in classes:
            model = classes[name].load_from_checkpoint(checkpoint, map_location="cpu", weights_only=False)
            _check_checkpoint_size(model, checkpoint, args.image_size)
        else:
            from anomalib.models import Patchcore, Stfpm

            model_class = {"stfpm": Stfpm, "patchcore": Patchcore}[name]
            model = model_class.load_from_checkpoint(checkpoint, map_location="cpu", weights_only=False)
        return model.eval(), f"trained checkpoint {checkpoint}"
    model = build_model(canonical_name(name), args.image_size, teacher_weights=args.teacher_weights)
    if name in OURS:
        model.model.teacher.load_weights(args.teacher_weights)
        return model.eval(), "ImageNet teacher, untrained student (speed only)"
    if name == "stfpm":
        return model.eval(), "ImageNet teacher, untrained student (speed only)"
    if args.data_root:
        from anomalib.data import MVTecAD
        from anomalib.engine import Engine

        datamodule = MVTecAD(
            root=args.data_root, category=args.category, train_batch_size=8, eval_batch_size=8, num_workers=0
        )
        engine = Engine(
            accelerator="cpu",
            devices=1,
            logger=False,
            default_root_dir=str(workdir / "patchcore_fit"),
            enable_progress_bar=False,
        )
        engine.fit(model=model, datamodule=datamodule)
        return model.eval(), f"fitted on {args.category} train ({len(model.model.memory_bank)} bank rows)"
    model.model.train()
    size = (args.image_size, args.image_size)
    crop = model.pre_processor.transform(torch.rand(1, 3, *size))
    with torch.no_grad():
        embedding = model.model(crop)
    patches, dim = embedding.shape[0], embedding.shape[1]
    rows = round(0.1 * args.patchcore_train_images * patches)
    model.model.memory_bank = torch.randn(rows, dim, generator=torch.Generator().manual_seed(0))
    return model.eval(), f"random memory bank {rows}x{dim} (= 0.1 x {args.patchcore_train_images} images)"


def count_macs(model: Any, image_size: int) -> float:
    """Multiply-accumulates per image of the model's forward (FLOPs / 2 by FlopCounterMode), batch 2 / 2."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(torch.rand(2, 3, image_size, image_size))
    return counter.get_total_flops() / 2 / 2


def prepare(name: str, model: Any, variants: list[str], args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Save the pickled model for torch children and export the OpenVINO IRs the variants need."""
    import warnings

    import torch

    from anomalib_destseg.inference import export_openvino, openvino_ir_path

    folder = workdir / name
    folder.mkdir(parents=True, exist_ok=True)
    artifacts: dict[str, Any] = {}
    if any(not v.startswith("openvino") for v in variants):
        artifacts["torch"] = folder / "model.pt"
        torch.save({"model": model}, artifacts["torch"])
    size = (args.image_size, args.image_size)
    for int8 in (False, True):
        wanted = [v for v in variants if v.startswith("openvino") and (v == "openvino_int8") == int8]
        if not wanted:
            continue
        key = "openvino_int8" if int8 else "openvino"
        path = openvino_ir_path(folder / "exports", int8)
        if path.is_file():
            artifacts[key] = path
            continue
        start = time.perf_counter()
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*planned training steps.*")  # speed-only runs
                datamodule = _calibration_datamodule(args, workdir) if int8 else None
                artifacts[key] = export_openvino(model, path.parents[2], input_size=size, int8_datamodule=datamodule)
            artifacts[f"{key}_export_s"] = time.perf_counter() - start
        except Exception as error:  # report and go on with the other variants
            artifacts[f"{key}_error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:300]}"
    return artifacts


def variant_spec(variant: str, artifacts: dict[str, Any], args: argparse.Namespace) -> dict[str, Any] | str:
    """The child's instructions for a variant, or the reason it cannot run."""
    from anomalib_destseg.inference import get_variant

    info = get_variant(variant)
    spec = {
        "batch_size": args.batch_size,
        "image_size": args.image_size,
        "warmup": args.warmup,
        "iterations": args.iterations,
        "threads": args.threads,
        "backend": info.backend,
        "channels_last": info.channels_last,
        "bf16": info.bf16,
        "torch_compile": info.torch_compile,
        "precision": info.precision,
        "int8": info.int8,
    }
    key = "torch" if info.backend == "torch" else ("openvino_int8" if info.int8 else "openvino")
    if key not in artifacts:
        return artifacts.get(f"{key}_error", "not prepared")
    spec["path"] = str(artifacts[key])
    return spec


# --- accuracy -------------------------------------------------------------------------------------------------
def load_test_set(root: Path, category: str, size: int) -> tuple[Any, Any, Any]:
    """Test images [N, 3, S, S] in [0, 1], masks [N, S, S] (bool) and labels [N] of an MVTec AD category."""
    import numpy as np
    import torch
    from PIL import Image
    from torchvision.transforms.v2 import functional as tvf

    images, masks, labels = [], [], []
    for path in sorted((root / category / "test").glob("*/*.png")):
        image = torch.from_numpy(np.asarray(Image.open(path).convert("RGB"))).permute(2, 0, 1).float() / 255
        images.append(tvf.resize(image, [size, size], antialias=True))
        defect = path.parent.name != "good"
        mask = torch.zeros(1, *image.shape[-2:])
        if defect:
            mask_path = root / category / "ground_truth" / path.parent.name / f"{path.stem}_mask.png"
            mask = torch.from_numpy(np.asarray(Image.open(mask_path).convert("L")) > 127).float()[None]
        masks.append(tvf.resize(mask, [size, size], antialias=True)[0] >= 0.5)
        labels.append(int(defect))
    return torch.stack(images), torch.stack(masks), torch.tensor(labels)


def accuracy(run: Any, images: Any, masks: Any, labels: Any, batch_size: int) -> dict[str, float]:
    """Image AUROC (pred_score) and pixel AP (anomaly_map) of a variant on the test set."""
    import numpy as np
    import torch
    from sklearn.metrics import average_precision_score, roc_auc_score

    scores, maps = [], []
    for start in range(0, len(images), batch_size):
        batch = run(images[start : start + batch_size])
        scores.append(torch.as_tensor(batch.pred_score).float().reshape(-1))
        maps.append(torch.as_tensor(batch.anomaly_map).float().reshape(-1, *masks.shape[-2:]))
    score = torch.cat(scores).numpy()
    anomaly_map = torch.cat(maps).numpy()
    pixels = anomaly_map.reshape(-1).astype(np.float64)
    return {
        "image_auroc": float(roc_auc_score(labels.numpy(), score)),
        "pixel_ap": float(average_precision_score(masks.numpy().reshape(-1), pixels)),
    }


# --- profile --------------------------------------------------------------------------------------------------
def profile_forward(model: Any, args: argparse.Namespace, bf16: bool = False, rows: int = 12) -> str:
    """Top operators by self CPU time of one forward at the benchmark batch (torch.profiler), as markdown."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from anomalib_destseg.inference import CPUInferenceModel

    runner = CPUInferenceModel(model, bf16=bf16)
    images = torch.rand(args.batch_size, 3, args.image_size, args.image_size)
    runner(images)  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        runner(images)
    events = sorted(profiler.key_averages(), key=lambda event: event.self_cpu_time_total, reverse=True)
    total = sum(event.self_cpu_time_total for event in events) or 1
    lines = ["| operator | calls | self CPU ms | share |", "|---|---:|---:|---:|"]
    for event in events[:rows]:
        ms = event.self_cpu_time_total / 1000
        lines.append(f"| `{event.key}` | {event.count} | {ms:.1f} | {100 * event.self_cpu_time_total / total:.1f}% |")
    return "\n".join(lines)


# --- report ---------------------------------------------------------------------------------------------------
def _fmt(value: float | None, pattern: str = "{:.2f}") -> str:
    return "—" if value is None else pattern.format(value)


def render(report: dict[str, Any]) -> str:
    """The markdown report."""
    machine, limits, args = report["machine"], report["conv_limit"], report["args"]
    lines = [
        "# CPU inference speed",
        "",
        f"Machine: {machine['cpu']}, {machine['logical_cores']} logical cores, ISA {', '.join(machine['isa'])}; "
        f"torch {machine['torch']} ({machine['torch_threads']} threads), OpenVINO {machine['openvino']}. "
        f"Load average at start: {', '.join(f'{x:.2f}' for x in machine['load_average'])}.",
        f"Settings: {args['image_size']}x{args['image_size']}, batch {args['batch_size']}, {args['warmup']} warm-up "
        f"and {args['iterations']} timed batches per variant, each variant in a process of its own.",
        "",
        "## Attainable convolution throughput",
        "",
        "3x3 convolution 256 -> 256 channels, 64x64, batch 8, best of "
        f"{args['conv_iterations']} after warm-up, through torch (oneDNN) and OpenVINO; the limit is the best:",
        "",
        "| dtype | torch NCHW GMAC/s | torch channels-last GMAC/s | OpenVINO GMAC/s | limit GMAC/s |",
        "|---|---:|---:|---:|---:|",
    ]
    for dtype in ("fp32", "bf16"):
        row = limits[dtype]
        lines.append(
            f"| {dtype} | {row['nchw']:.1f} | {row['channels_last']:.1f} | {row['openvino']:.1f} | {row['limit']:.1f} |"
        )
    lines += ["", "## Models", "", "| model | weights | GMAC per image |", "|---|---|---:|"]
    for name, entry in report["models"].items():
        lines.append(f"| {name} | {entry['weights']} | {_fmt(entry.get('gmac'), '{:.2f}')} |")
    lines += [
        "",
        "## Speed per variant",
        "",
        "images/s = batch / mean batch time; % of limit = GMAC/image x images/s / attainable limit (fp32 limit for "
        "fp32 variants, bf16 limit for bf16 ones, none for INT8); x Stfpm = this time per image / Stfpm's (same "
        "variant); peak RSS = the variant's own process (loading + inference). Accuracy deltas are against torch fp32 "
        "of the same model.",
        "",
        "| model | variant | precision | images/s | ms/image | GMAC/s | % of limit | peak RSS MB | x Stfpm "
        "| image AUROC | delta AUROC | pixel AP | delta pixel AP |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, entry in report["models"].items():
        for variant, result in entry["variants"].items():
            if "error" in result:
                error = result["error"].replace("|", "/")
                lines.append(f"| {name} | {variant} | failed: {error} |" + " |" * 10)
                continue
            acc = entry.get("accuracy", {}).get(variant, {})
            ref = entry.get("accuracy", {}).get("torch_fp32", {})
            delta_auroc = acc["image_auroc"] - ref["image_auroc"] if acc and ref else None
            delta_ap = acc["pixel_ap"] - ref["pixel_ap"] if acc and ref else None
            lines.append(
                f"| {name} | {variant} | {result['precision']} | {result['ips']:.2f} | {1000 / result['ips']:.0f} "
                f"| {_fmt(result.get('gmacs'), '{:.1f}')} | {_fmt(result.get('fraction'), '{:.0%}')} "
                f"| {result['peak_rss_mb']:.0f} | {_fmt(result.get('x_stfpm'))} "
                f"| {_fmt(acc.get('image_auroc'), '{:.4f}')} | {_fmt(delta_auroc, '{:+.4f}')} "
                f"| {_fmt(acc.get('pixel_ap'), '{:.4f}')} | {_fmt(delta_ap, '{:+.4f}')} |"
            )
    lines += ["", "## Targets", ""] + [f"- {line}" for line in report["targets"]]
    for title, table in report.get("profiles", {}).items():
        lines += ["", f"## Profile: {title}", "", table]
    if report.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {note}" for note in report["notes"]]
    return "\n".join(lines) + "\n"


def check_targets(report: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Target lines, and the models whose torch forward should be profiled."""
    lines, to_profile = [], []
    fp32_limit = report["conv_limit"]["fp32"]["limit"]
    for name, entry in report["models"].items():
        result = entry["variants"].get("torch_fp32", {})
        if "fraction" in result:
            met = result["fraction"] >= FP32_TARGET
            lines.append(
                f"{name}: torch fp32 reaches {result['gmacs']:.1f} GMAC/s = {result['fraction']:.0%} of the fp32 "
                f"conv limit ({fp32_limit:.1f}); target >= {FP32_TARGET:.0%}: {'met' if met else 'MISSED'}."
            )
            faster = {
                v: r
                for v, r in entry["variants"].items()
                if v in TORCH_FP32_VARIANTS and "fraction" in r and r["fraction"] > result["fraction"]
            }
            best = max(faster, key=lambda v: faster[v]["fraction"], default=None)
            if best:  # the target counts as met by any float32 torch variant; profile only when none meets it
                met = faster[best]["fraction"] >= FP32_TARGET
                lines.append(
                    f"{name}: the best torch fp32 variant, {best}, reaches {faster[best]['gmacs']:.1f} GMAC/s = "
                    f"{faster[best]['fraction']:.0%} of the fp32 conv limit; target >= {FP32_TARGET:.0%}: "
                    f"{'met' if met else 'MISSED'}."
                )
            if not met and name in OURS:
                to_profile.append(name)
    destseg = report["models"].get("destseg")
    if destseg:
        accuracy_by_variant = destseg.get("accuracy", {})
        reference = accuracy_by_variant.get("torch_fp32")
        timed = {v: r for v, r in destseg["variants"].items() if "ips" in r}
        if reference is None:
            fastest = max(timed, key=lambda v: timed[v]["ips"], default=None)
            lines.append(
                "destseg: accuracy not measured (give --checkpoint and --data-root), so the accuracy-bounded target "
                f"cannot be decided; fastest variant {fastest} at "
                f"{timed[fastest]['ips']:.2f} images/s."
                if fastest
                else "destseg: nothing timed."
            )
        else:
            eligible = {
                v: r
                for v, r in timed.items()
                if v in accuracy_by_variant
                and reference["image_auroc"] - accuracy_by_variant[v]["image_auroc"] <= AUROC_DROP
            }
            best = max(eligible, key=lambda v: eligible[v]["ips"], default=None)
            if best is None:
                lines.append("destseg: no variant keeps image AUROC within 0.005 of torch fp32: target MISSED.")
                to_profile.append("destseg")
            else:
                met = eligible[best]["ips"] >= DESTSEG_TARGET_IPS
                lines.append(
                    f"destseg: fastest variant with image AUROC drop <= {AUROC_DROP}: {best} at "
                    f"{eligible[best]['ips']:.2f} images/s; target >= {DESTSEG_TARGET_IPS:.0f}: "
                    f"{'met' if met else 'MISSED'}."
                )
                if not met:
                    to_profile.append("destseg")
    return lines, sorted(set(to_profile))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated subset of {','.join(MODELS)}")
    parser.add_argument("--variants", default=",".join(ALL_VARIANTS), help="comma-separated variant names")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--iterations", type=int, default=10, help="timed batches per variant")
    parser.add_argument("--warmup", type=int, default=2, help="untimed batches before timing")
    parser.add_argument("--conv-iterations", type=int, default=5, help="timed runs of the conv micro-benchmark")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's default)")
    parser.add_argument(
        "--checkpoint",
        action="append",
        default=[],
        help="trained checkpoint, MODEL=PATH or PATH (= destseg); repeatable. Enables accuracy with --data-root",
    )
    parser.add_argument("--data-root", default=None, help="MVTec AD root (accuracy, INT8 calibration, Patchcore fit)")
    parser.add_argument("--category", default="bottle")
    parser.add_argument("--teacher-weights", type=Path, default=DEFAULT_TEACHER)
    parser.add_argument("--patchcore-train-images", type=int, default=209, help="size of the random bank (no data)")
    parser.add_argument("--workdir", type=Path, default=None, help="folder for exports (default: a temporary one)")
    parser.add_argument("--profile", choices=("auto", "always", "never"), default="auto")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per variant process")
    parser.add_argument("--output", type=Path, default=None, help="markdown file to write")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.model_list = [m.strip() for m in args.models.split(",") if m.strip()]
    args.variant_list = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(args.model_list) - set(MODELS)) + sorted(set(args.variant_list) - set(ALL_VARIANTS))
    if unknown:
        parser.error(f"unknown models/variants: {', '.join(unknown)}")
    args.checkpoints = {}
    for item in args.checkpoint:
        name, _, path = item.rpartition("=") if "=" in item else ("destseg", "", item)
        args.checkpoints[name] = path
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns the exit status."""
    args = parse_args(argv)
    if args.child is not None:
        print("RESULT " + json.dumps(child_main(json.loads(args.child))), flush=True)
        return 0
    _offline_environment()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="cpu_speed_"))
    report: dict[str, Any] = {
        "args": vars(args) | {"workdir": str(workdir)},
        "machine": machine_description(),
        "models": {},
        "notes": [],
    }
    report["args"] = {k: v for k, v in report["args"].items() if isinstance(v, (int, float, str, list, dict))}
    if report["machine"]["load_average"][0] > 0.5 * (os.cpu_count() or 1):
        report["notes"].append(
            f"The machine was busy at the start (load {report['machine']['load_average'][0]:.1f} on "
            f"{os.cpu_count()} cores): speeds are understated."
        )
    print(f"machine: {report['machine']}", flush=True)
    report["conv_limit"] = conv_limit(args.conv_iterations)
    print(f"conv limit (GMAC/s): {json.dumps(report['conv_limit'])}", flush=True)

    test_set = None
    models: dict[str, Any] = {}
    for name in args.model_list:
        try:
            model, weights = build_model(name, args, workdir)
        except Exception as error:  # e.g. PFADSeg not importable
            report["models"][name] = {"weights": f"not built: {type(error).__name__}: {error}", "variants": {}}
            print(f"{name}: not built ({error})", flush=True)
            continue
        models[name] = model
        entry: dict[str, Any] = {"weights": weights, "variants": {}}
        report["models"][name] = entry
        entry["gmac"] = count_macs(model, args.image_size) / 1e9
        print(f"{name}: {weights}; {entry['gmac']:.2f} GMAC/image", flush=True)
        artifacts = prepare(name, model, args.variant_list, args, workdir)
        for key in ("openvino_export_s", "openvino_int8_export_s"):
            if key in artifacts:
                print(f"{name}: {key} {artifacts[key]:.0f} s", flush=True)
        for variant in args.variant_list:
            spec = variant_spec(variant, artifacts, args)
            if isinstance(spec, str):
                entry["variants"][variant] = {"error": spec}
                print(f"{name} {variant}: skipped ({spec})", flush=True)
                continue
            result = run_child(spec, args.timeout)
            if "error" not in result:
                result["ips"] = args.batch_size * len(result["batch_seconds"]) / sum(result["batch_seconds"])
                result["gmacs"] = entry["gmac"] * result["ips"]
                if variant != "openvino_int8":
                    limit = report["conv_limit"]["bf16" if variant in BF16_VARIANTS else "fp32"]["limit"]
                    result["fraction"] = result["gmacs"] / limit
                result["cpu_utilisation"] = result["cpu"] / max(result["wall"], 1e-9)
            entry["variants"][variant] = result
            shown = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in result.items() if k != "batch_seconds"}
            print(f"{name} {variant}: {shown}", flush=True)
        if name in args.checkpoints and args.data_root:
            from anomalib_destseg.inference import build_variant, get_variant

            if test_set is None:
                test_set = load_test_set(Path(args.data_root), args.category, args.image_size)
            entry["accuracy"] = {}
            for variant in args.variant_list:
                if "error" in entry["variants"].get(variant, {"error": ""}):
                    continue
                info = get_variant(variant)
                if info.backend == "openvino":
                    from anomalib_destseg.inference import OpenVINOModel, openvino_ir_path

                    run = OpenVINOModel(openvino_ir_path(workdir / name / "exports", info.int8), info.precision)
                else:
                    run = build_variant(variant, model)
                entry["accuracy"][variant] = accuracy(run, *test_set, batch_size=args.batch_size)
                print(f"{name} {variant} accuracy: {entry['accuracy'][variant]}", flush=True)
    stfpm = report["models"].get("stfpm", {}).get("variants", {})
    for entry in report["models"].values():
        for variant, result in entry["variants"].items():
            if "ips" in result and "ips" in stfpm.get(variant, {}):
                result["x_stfpm"] = stfpm[variant]["ips"] / result["ips"]
    report["targets"], to_profile = check_targets(report)
    if args.profile == "always":
        to_profile = [name for name in args.model_list if name in OURS and name in models]
    if args.profile != "never":
        report["profiles"] = {}
        for name in to_profile:
            if name in models:
                report["profiles"][f"{name}, torch fp32, batch {args.batch_size}"] = profile_forward(models[name], args)
                report["profiles"][f"{name}, torch bf16 autocast, batch {args.batch_size}"] = profile_forward(
                    models[name], args, bf16=True
                )
    text = render(report)
    print(text)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text)
        args.output.with_suffix(".json").write_text(json.dumps(report, indent=1, default=str))
        print(f"wrote {args.output} and {args.output.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
