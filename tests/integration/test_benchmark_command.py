"""The benchmark command's machinery on the tiny generated dataset (not its figures: 1+1 training steps).

Patchcore loads timm's ``resnet18.tv_in1k`` and DeSTSeg torchvision's ImageNet ResNet-18 through the libraries'
normal caches: the ``offline_hub`` fixture fills temporary caches from the shared weights with the shared
``offline_cache.py`` and points HF_HOME / TORCH_HOME at them (the benchmark's subprocesses inherit the environment).
"""

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import SHARED, SHARED_WEIGHTS, TINY_SIZE
from PIL import Image

from anomalib_destseg.benchmark.__main__ import main
from anomalib_destseg.benchmark.arguments import build_parser, mvtec_jobs
from anomalib_destseg.benchmark.report import CSV_COLUMNS

REQUIRED_COLUMNS = [
    "model",
    "image_AUROC",
    "pixel_AUROC",
    "pixel_AP",
    "AUPRO",
    "IAP",
    "fit_s",
    "infer_img_per_s",
    "peak_rss_gb",
]
TINY = ["--image-size", str(TINY_SIZE), "--steps", "1", "1", "--eval-batch-size", "4", "--panel-images", "3"]


@pytest.fixture(scope="session")
def offline_caches(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """HF_HOME / TORCH_HOME holding the shared ImageNet ResNet-18 for timm and torchvision (or skip)."""
    script = SHARED / "weights" / "offline_cache.py"
    if not SHARED_WEIGHTS.is_file() or not script.is_file():
        pytest.skip(f"shared ImageNet weights or offline_cache.py not found under {SHARED / 'weights'}")
    root = tmp_path_factory.mktemp("offline_caches")
    env = {"HF_HOME": str(root / "hf"), "TORCH_HOME": str(root / "torch"), "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, str(script), "--hf-home", env["HF_HOME"], "--torch-home", env["TORCH_HOME"]]
    subprocess.run(command, check=True, capture_output=True)
    return env


@pytest.fixture
def offline_hub(offline_caches: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    for key, value in offline_caches.items():
        monkeypatch.setenv(key, value)
    return offline_caches


def _read_csv(path: Path) -> tuple[list[str], dict[str, dict[str, str]]]:
    with path.open() as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
        return list(reader.fieldnames or []), {row["model"]: row for row in rows}


def _is_png(path: Path) -> bool:
    with Image.open(path) as image:
        return image.format == "PNG" and min(image.size) > 100


# --- end to end ---------------------------------------------------------------------------------------------------
def test_three_models_write_tables_plots_and_maps_with_both_maps_of_the_two_stage_models(
    tiny_dataset: Path, offline_hub: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    output = tmp_path / "bench"
    models = ["--models", "Patchcore", "destseg", "PFADSeg"]
    arguments = ["--root", str(tiny_dataset), "--categories", "synthetic", *models]
    code = main([*arguments, *TINY, "--batch-size", "2", "--output-dir", str(output)])
    assert code == 0

    columns, rows = _read_csv(output / "results.csv")
    assert columns[:9] == REQUIRED_COLUMNS
    assert columns == list(CSV_COLUMNS)
    second_rows = ["DeSTSeg (DeST map)", "PFADSeg (student-teacher map)"]
    # report order, whatever the command-line order; each two-stage model's DeST map right after it
    assert list(rows) == ["DeSTSeg", second_rows[0], "PFADSeg", second_rows[1], "Patchcore"]
    for model, row in rows.items():
        assert row["status"] == "ok", (model, row["error"])
        assert row["category"] == "synthetic"
        for metric in ("image_AUROC", "pixel_AUROC", "pixel_AP", "AUPRO", "IAP", "IAP90"):
            assert 0.0 <= float(row[metric]) <= 1.0, (model, metric, row[metric])
        assert float(row["fit_s"]) > 0
        assert float(row["infer_img_per_s"]) > 0
        assert 0.1 < float(row["peak_rss_gb"]) < 64  # a process that imported torch, measured per run

    assert sorted(path.name for path in (output / "runs" / "synthetic").iterdir()) == [
        "DeSTSeg",
        "PFADSeg",
        "Patchcore",
    ]
    for model, second in zip(["DeSTSeg", "PFADSeg"], second_rows, strict=True):
        result = json.loads((output / "runs" / "synthetic" / model / "result.json").read_text())
        # the second row is the same run's DeST_ metrics, its fit time, and the timed forward of the DeST map
        assert float(rows[second]["image_AUROC"]) == pytest.approx(result["metrics"]["DeST_image_AUROC"], rel=1e-5)
        assert float(rows[second]["pixel_AP"]) == pytest.approx(result["metrics"]["DeST_pixel_AUPR"], rel=1e-5)
        assert float(rows[second]["IAP90"]) == pytest.approx(result["metrics"]["DeST_pixel_IAP90"], rel=1e-5)
        assert float(rows[model]["pixel_AP"]) == pytest.approx(result["metrics"]["pixel_AUPR"], rel=1e-5)
        assert rows[second]["fit_s"] == rows[model]["fit_s"]
        second_speed = result["second_map"]["infer_img_per_s"]
        assert float(rows[second]["infer_img_per_s"]) == pytest.approx(second_speed, rel=1e-5)

    markdown = (output / "results.md").read_text()
    assert "| synthetic | DeSTSeg |" in markdown
    assert "| synthetic | DeSTSeg (DeST map) |" in markdown
    assert "| synthetic | PFADSeg (student-teacher map) |" in markdown
    assert "the same trained model as the row above it (no retraining)" in markdown
    assert "| synthetic | Patchcore |" in markdown
    assert "identical conv1..layer3 tensors" in markdown  # the same ImageNet weights for both families
    for name in ("metrics.png", "costs.png", "anomaly_maps_synthetic.png"):
        assert _is_png(output / name), name
        assert f"]({name})" in markdown

    summary = json.loads((output / "results.json").read_text())
    assert summary["same_teacher_weights"] is True
    assert summary["protocol"]["image_size"] == TINY_SIZE
    assert summary["protocol"]["models"]["DeSTSeg"]["student_steps"] == 1
    assert "--steps 1 1" in summary["overrides"]
    run_files = {path.name for path in (output / "runs" / "synthetic" / "DeSTSeg").iterdir()}
    # no checkpoint left behind; the DeST map's panel maps beside the segmentation map's
    assert run_files == {"spec.json", "result.json", "run.log", "predictions.npz", "predictions_dest.npz"}
    assert [run["model"] for run in summary["runs"]] == list(rows)

    # Each run saved the maps of the same test images at the common image size.
    files = {m: output / "runs" / "synthetic" / m / "predictions.npz" for m in ("DeSTSeg", "Patchcore")}
    files["DeST map"] = output / "runs" / "synthetic" / "DeSTSeg" / "predictions_dest.npz"
    saved = {m: np.load(path) for m, path in files.items()}
    paths = [list(data["image_paths"]) for data in saved.values()]
    assert paths[0] == paths[1] == paths[2]
    assert not np.allclose(saved["DeST map"]["anomaly_maps"], saved["DeSTSeg"]["anomaly_maps"])
    assert len(paths[0]) == 3
    assert sorted(data["labels"].tolist() for data in saved.values())[0] == [1, 1, 0]
    for data in saved.values():
        assert data["anomaly_maps"].shape == (3, TINY_SIZE, TINY_SIZE)
        assert np.isfinite(data["anomaly_maps"]).all()

    # Existing results are not overwritten silently.
    before = (output / "results.csv").read_bytes()
    capsys.readouterr()
    with pytest.raises(SystemExit) as raised:
        main([*arguments, *TINY, "--output-dir", str(output)])
    assert raised.value.code == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (output / "results.csv").read_bytes() == before


def test_failed_run_is_reported_and_the_other_model_kept(tiny_dataset: Path, offline_hub: dict, tmp_path: Path) -> None:
    """A Folder dataset without masks; DeSTSeg refuses batch size 1 (a real error), Patchcore trains."""
    output = tmp_path / "bench"
    folder = [
        "--folder-root",
        str(tiny_dataset / "synthetic"),
        "--normal-dir",
        "train/good",
        "--normal-test-dir",
        "test/good",
        "--abnormal-dir",
        "test/defect",
    ]
    code = main([*folder, "--models", "DeSTSeg", "Patchcore", *TINY, "--batch-size", "1", "--output-dir", str(output)])
    assert code == 1  # a run failed

    _, rows = _read_csv(output / "results.csv")
    assert rows["DeSTSeg"]["status"] == "failed"
    assert rows["DeSTSeg"]["error"].startswith("ValueError: ")
    assert "at least 2 images" in rows["DeSTSeg"]["error"]
    assert rows["DeSTSeg"]["image_AUROC"] == ""
    assert rows["DeSTSeg (DeST map)"]["status"] == "failed"  # the same run: it failed too, with the same error
    assert rows["DeSTSeg (DeST map)"]["error"] == rows["DeSTSeg"]["error"]
    assert (output / "runs" / "synthetic" / "DeSTSeg" / "run.log").read_text().count("Traceback") >= 1

    patchcore = rows["Patchcore"]
    assert patchcore["status"] == "ok"
    assert 0.0 <= float(patchcore["image_AUROC"]) <= 1.0
    for metric in ("pixel_AUROC", "pixel_AP", "AUPRO", "IAP", "IAP90"):
        assert patchcore[metric] == "", metric  # no masks: pixel metrics skipped, written empty

    markdown = (output / "results.md").read_text()
    assert "failed: ValueError: train_batch_size is 1" in markdown
    assert "pixel metrics are skipped" in markdown
    assert _is_png(output / "anomaly_maps_synthetic.png")  # drawn from the run that succeeded


def test_missing_timm_weights_stop_with_instructions(
    tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty_hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SystemExit) as raised:
        main(
            [
                "--root",
                str(tiny_dataset),
                "--categories",
                "synthetic",
                "--models",
                "Stfpm",
                "--output-dir",
                str(tmp_path / "out"),
            ]
        )
    assert raised.value.code == 2
    error = capsys.readouterr().err
    assert "resnet18.tv_in1k" in error
    assert "docs/offline.md" in error
    assert "HF_HUB_OFFLINE=1" in error
    assert not (tmp_path / "out" / "results.csv").exists()


# --- bad input ----------------------------------------------------------------------------------------------------
def _error_of(arguments: list[str], capsys: pytest.CaptureFixture) -> str:
    with pytest.raises(SystemExit) as raised:
        main(arguments)
    assert raised.value.code == 2
    return capsys.readouterr().err


def test_unknown_model_is_a_usage_error(tiny_dataset: Path, capsys: pytest.CaptureFixture) -> None:
    error = _error_of(["--root", str(tiny_dataset), "--categories", "synthetic", "--models", "Padim"], capsys)
    assert "unknown model 'Padim'" in error
    assert "DeSTSeg, PFADSeg, Patchcore, Stfpm" in error


def test_missing_root_category_and_folders_are_usage_errors(
    tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    error = _error_of(["--root", str(tmp_path / "nowhere"), "--categories", "bottle"], capsys)
    assert "nowhere does not exist" in error

    error = _error_of(["--root", str(tiny_dataset), "--categories", "synthetic", "bottle"], capsys)
    assert "category 'bottle' not found" in error
    assert "available: synthetic" in error

    error = _error_of(["--root", str(tiny_dataset)], capsys)
    assert "--categories is required" in error

    error = _error_of(["--folder-root", str(tiny_dataset / "synthetic"), "--normal-dir", "nope"], capsys)
    assert "has no images" in error

    arguments = ["--root", str(tiny_dataset), "--categories", "synthetic", "--teacher-weights", "/no/such.pth"]
    assert "neither 'imagenet' nor an existing file" in _error_of(arguments, capsys)

    arguments = ["--root", str(tiny_dataset), "--categories", "synthetic", "--image-size", "100"]
    assert "multiple of 32" in _error_of(arguments, capsys)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without a CUDA GPU")
def test_fp16_without_a_gpu_is_refused_before_any_run(
    tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    arguments = ["--root", str(tiny_dataset), "--categories", "synthetic", "--precision", "16-mixed"]
    error = _error_of([*arguments, "--output-dir", str(tmp_path / "out")], capsys)
    assert "--precision 16-mixed (fp16 with gradient scaling) needs a CUDA GPU" in error
    assert not (tmp_path / "out").exists()


def test_mvtec_category_without_masks_is_read_as_folder(tiny_dataset: Path, tmp_path: Path) -> None:
    root = tmp_path / "no_masks"
    shutil.copytree(tiny_dataset / "synthetic", root / "synthetic", ignore=shutil.ignore_patterns("ground_truth"))
    parser = build_parser()
    args = parser.parse_args(["--root", str(root), "--categories", "synthetic"])
    [(category, dataset, notices)] = mvtec_jobs(args, parser)
    assert category == "synthetic"
    assert dataset["kind"] == "folder"
    assert dataset["abnormal_dir"] == ["test/defect"]
    assert dataset["mask_dir"] is None
    assert "pixel metrics are skipped" in notices[0]

    args = parser.parse_args(["--root", str(tiny_dataset), "--categories", "synthetic"])
    [(_, dataset, notices)] = mvtec_jobs(args, parser)
    assert dataset == {"kind": "mvtec", "root": str(tiny_dataset.resolve()), "category": "synthetic"}
    assert notices == []


def test_dry_run_prints_the_plan_and_writes_nothing(
    tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    arguments = ["--root", str(tiny_dataset), "--categories", "synthetic", "--protocol", "paper", "--epochs", "3"]
    assert main([*arguments, "--output-dir", str(tmp_path / "out"), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "protocol paper, 4 runs" in printed
    assert "DeSTSeg: batch 32, 1000+4000 steps, image size 256" in printed
    assert "Stfpm: batch 32, 3 epochs" in printed
    assert not (tmp_path / "out").exists()
