"""Pieces of the benchmark command: protocols, the panel's image choice, the CSV, the shared model factory."""

import pytest

from anomalib_destseg.benchmark import get_protocol, override
from anomalib_destseg.benchmark.models import build_model, canonical_name
from anomalib_destseg.benchmark.report import CSV_COLUMNS, csv_text, empty_row, mean_rows
from anomalib_destseg.benchmark.runner import select_panel_indices
from anomalib_destseg.data import AntialiasedPreProcessor
from anomalib_destseg.metrics import RawScorePostProcessor


def test_protocol_overrides_touch_only_their_models() -> None:
    cpu = get_protocol("cpu")
    changed = override(cpu, image_size=64, steps=(3, 4), epochs=2, train_batch_size=5, coreset_sampling_ratio=0.5)
    assert changed.image_size == 64
    assert cpu.image_size == 128  # the protocol itself is unchanged
    for name in ("DeSTSeg", "PFADSeg"):
        assert (changed.models[name].student_steps, changed.models[name].segmentation_steps) == (3, 4)
    assert changed.models["Stfpm"].epochs == 2
    assert changed.models["Stfpm"].student_steps is None
    assert changed.models["Patchcore"].coreset_sampling_ratio == 0.5
    assert changed.models["Patchcore"].epochs is None
    assert {settings.train_batch_size for settings in changed.models.values()} == {5}
    assert {settings.eval_batch_size for settings in changed.models.values()} == {8}
    with pytest.raises(KeyError, match="choose from paper, cpu"):
        get_protocol("gpu")


def test_panel_selection_is_deterministic_and_mixed() -> None:
    paths = [f"test/{kind}/{i:03d}.png" for kind in ("good", "crack", "scratch") for i in range(4)]
    labels = [0 if "good" in path else 1 for path in paths]
    picks = select_panel_indices(paths[::-1], labels[::-1], 4)  # input order does not matter
    chosen = [paths[::-1][index] for index in picks]
    assert chosen == ["test/crack/000.png", "test/scratch/000.png", "test/scratch/003.png", "test/good/000.png"]
    assert select_panel_indices(paths, labels, 0) == []
    assert len(select_panel_indices(paths[:2], labels[:2], 4)) == 2  # no more images than there are


def test_csv_writes_missing_values_empty_and_means_skip_failures() -> None:
    ok, failed = empty_row("Stfpm", "a"), empty_row("Stfpm", "b")
    ok.update(status="ok", image_AUROC=0.75, fit_s=10.0)
    failed.update(status="failed", error="RuntimeError: boom", image_AUROC=0.1)
    lines = csv_text([ok, failed]).splitlines()
    assert lines[0] == ",".join(CSV_COLUMNS)
    assert lines[1] == "Stfpm,0.75,,,,,10,,,a,,ok,"
    assert lines[2].endswith(",failed,RuntimeError: boom")
    [mean] = mean_rows([ok, failed], ["Stfpm"])
    assert mean["image_AUROC"] == 0.75
    assert mean["status"] == "mean of 1/2 categories"


def test_the_model_factory_builds_every_model_alike() -> None:
    assert canonical_name("destseg") == "DeSTSeg" and canonical_name("STFPM") == "Stfpm"
    with pytest.raises(ValueError, match="choose from DeSTSeg, PFADSeg, Patchcore, Stfpm"):
        canonical_name("padim")
    model = build_model("pfadseg", 96, student_steps=3, segmentation_steps=4, raw_scores=False, fusion="concat")
    assert (model.total_steps, model.image_size, model.hparams.fusion) == (7, (96, 96), "concat")
    assert isinstance(model.pre_processor, AntialiasedPreProcessor)
    assert isinstance(model.post_processor, RawScorePostProcessor) and model.visualizer is None
    assert model.evaluator.test_metrics[0].fields == ["pred_score", "gt_label"]
