"""The README's first command: ``python -m anomalib_destseg.demo`` generates data, trains, tests, prints metrics."""

from pathlib import Path

from anomalib_destseg import demo


def test_demo_trains_tests_and_writes_results(tmp_path: Path, teacher_weights: Path, capsys) -> None:
    metrics = demo.main(
        [
            "--data-root",
            str(tmp_path / "data"),
            "--output",
            str(tmp_path / "results"),
            "--teacher-weights",
            str(teacher_weights),
            "--student-steps",
            "2",
            "--segmentation-steps",
            "2",
            "--batch-size",
            "4",
        ]
    )
    printed = capsys.readouterr().out
    assert "DeSTSeg demo: trained 4 steps" in printed
    for name in ("image_AUROC", "pixel_AUROC", "pixel_AUPR", "pixel_IAP"):
        assert name in metrics
        assert 0.0 <= metrics[name] <= 1.0
        assert name in printed
    assert (tmp_path / "data" / "synthetic" / "ground_truth" / "defect").is_dir()
    assert list((tmp_path / "results").rglob("model.ckpt")), "the demo saves a checkpoint"
    assert list((tmp_path / "results").rglob("*.png")), "the demo writes result images"
