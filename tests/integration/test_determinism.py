"""The same seed gives the same model and the same test scores on CPU, with or without DataLoader workers.

Every random choice of a run is included: the data order (torch's global generator, drawn in the main process even
with workers), and the synthetic anomalies, texture choices and rotations of clean images (the module's anomaly
stream, seeded from ``torch.initial_seed()``, which ``seed_everything`` sets). Four steps on 12 images in batches of
4 cross an epoch boundary, so the second epoch's shuffle is covered too. A run with another seed must differ, which
shows that the comparison can fail and that the seed does reach the anomalies.
"""

from pathlib import Path

import lightning
import numpy as np
import pytest
import torch
from helpers import quiet_cpu_engine, tiny_datamodule, tiny_model
from PIL import Image

from anomalib_destseg import DeSTSeg

SIZE = 64


@pytest.fixture(scope="module")
def textures(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four small, clearly different texture images, so that the texture choice matters."""
    folder = tmp_path_factory.mktemp("textures")
    rng = np.random.default_rng(1)
    for index in range(4):
        pattern = rng.integers(0, 256, (24, 24, 3), dtype=np.uint8) // (index + 1)
        Image.fromarray(pattern).save(folder / f"texture_{index}.png")
    return folder


def _run(
    dataset: Path, textures: Path, teacher: Path, root: Path, seed: int, workers: int, precision: str = "32"
) -> dict[str, torch.Tensor]:
    """Seed, train 2 + 2 steps, predict the test set; return the weights, scores and maps."""
    lightning.seed_everything(seed)
    datamodule = tiny_datamodule(dataset, num_workers=workers)
    model = tiny_model(  # with the default evaluator: computing the metrics must not disturb the runs either
        DeSTSeg,
        teacher,
        size=SIZE,
        texture_dir=str(textures),
        rotation="quarter",  # random multiples of 90 degrees plus +-5 degrees: more randomness to reproduce
    )
    engine = quiet_cpu_engine(root, precision=precision)
    engine.fit(model, datamodule=datamodule)
    assert engine.trainer.global_step == 4
    predictions = engine.predict(model, datamodule=datamodule, return_predictions=True)
    result = {f"weights.{key}": value.detach().clone() for key, value in model.model.state_dict().items()}
    result["pred_score"] = torch.cat([batch.pred_score for batch in predictions])
    result["anomaly_map"] = torch.cat([batch.anomaly_map for batch in predictions])
    # The default evaluator's test metrics (the paper's): compared like the weights.
    (metrics,) = engine.test(model, datamodule=datamodule, verbose=False)
    assert "pixel_AUPR" in metrics
    result |= {f"metric.{name}": torch.tensor(value) for name, value in metrics.items()}
    result["paths"] = [path for batch in predictions for path in batch.image_path]
    return result


@pytest.fixture(scope="module")
def runs(tiny_dataset: Path, textures: Path, teacher_weights: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Two runs each with seed 0 and 0 or 2 workers, and one with seed 1."""
    root = tmp_path_factory.mktemp("determinism")
    cases = {"seed0_workers0_a": (0, 0), "seed0_workers0_b": (0, 0), "seed0_workers2_a": (0, 2)}
    cases |= {"seed0_workers2_b": (0, 2), "seed1_workers0": (1, 0)}
    runs = {
        name: _run(tiny_dataset, textures, teacher_weights, root / name, seed, workers)
        for name, (seed, workers) in cases.items()
    }
    for name in ("bf16_a", "bf16_b"):  # Lightning's bf16-mixed precision
        runs[name] = _run(tiny_dataset, textures, teacher_weights, root / name, 0, 0, precision="bf16-mixed")
    return runs


def _differences(first: dict, second: dict) -> list[str]:
    assert first["paths"] == second["paths"]  # the same test images in the same order
    return [key for key in first if key != "paths" and not torch.equal(first[key], second[key])]


@pytest.mark.parametrize("workers", [0, 2])
def test_same_seed_gives_identical_weights_and_test_scores(runs: dict, workers: int) -> None:
    first, second = runs[f"seed0_workers{workers}_a"], runs[f"seed0_workers{workers}_b"]
    assert len(first["pred_score"]) == 8
    assert not _differences(first, second)


def test_workers_do_not_change_the_result(runs: dict) -> None:
    """The data order and the anomalies are drawn in the main process, so workers change nothing."""
    assert not _differences(runs["seed0_workers0_a"], runs["seed0_workers2_a"])


def test_another_seed_gives_other_weights_and_scores(runs: dict) -> None:
    different = _differences(runs["seed0_workers0_a"], runs["seed1_workers0"])
    assert "pred_score" in different
    assert "anomaly_map" in different
    assert any(key.startswith("weights.student") for key in different)


def test_bf16_mixed_precision_is_deterministic_too(runs: dict) -> None:
    assert not _differences(runs["bf16_a"], runs["bf16_b"])
    assert _differences(runs["bf16_a"], runs["seed0_workers0_a"])  # bf16 arithmetic: other, close, numbers
    weights = [value for key, value in runs["bf16_a"].items() if key.startswith("weights.")]
    assert all(value.dtype in (torch.float32, torch.int64, torch.bool) for value in weights)  # stored in fp32
