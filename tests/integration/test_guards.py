"""Guards against bad numbers and bad files.

- A non-finite loss (or gradient) stops training with a ``FloatingPointError`` naming the step and the stage, after
  the state from before that step is saved as ``last_good.ckpt`` in the checkpoint folder
  (``<default_root_dir>/weights/lightning/`` with anomalib's Engine). The failed step changes nothing: not the
  weights, not the optimiser states, not the BatchNorm statistics (which the forward pass on NaN images would poison).
  Checked in both stages, for DeSTSeg in float32 and for PFADSeg in bf16-mixed with the default evaluator.
- Dataset images: anomalib 2.7 reads them with PIL and converts them to RGB, so grayscale, RGBA and 16-bit images
  load (16-bit ones clipped to 8 bits, which is warned about) and batches of mixed sizes are resized to their largest
  image before the pre-processor. Files PIL cannot decode are named before training starts; PIL itself would report
  a truncated file without its name, in the middle of training.
- Texture folders: unreadable texture images are named and left out.
"""

import logging
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from anomalib.data import Folder
from helpers import quiet_cpu_engine, tiny_datamodule, tiny_model
from lightning.pytorch import Callback
from PIL import Image

from anomalib_destseg import DeSTSeg, PFADSeg
from anomalib_destseg.components import took_a_step
from anomalib_destseg.data.anomaly_generator import SyntheticAnomalyGenerator
from anomalib_destseg.data.image_checks import check_dataset_images

SIZE = 64


def _model(teacher: str | Path, model_class: type = DeSTSeg, evaluator: bool = False, **kwargs) -> DeSTSeg | PFADSeg:
    """The shared test model; without the evaluator (no metrics needed) unless ``evaluator`` is true."""
    return tiny_model(model_class, teacher, **kwargs, **({} if evaluator else {"evaluator": False}))


# --- non-finite losses and gradients ----------------------------------------------------------------------------
class SaveAfter(Callback):
    """Save ``good.ckpt`` right after optimiser step ``step`` (the reference for the last good state)."""

    def __init__(self, path: Path, step: int) -> None:
        self.path, self.step = path, step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if took_a_step(outputs) and trainer.global_step == self.step:
            trainer.save_checkpoint(self.path)


class PoisonImages(Callback):
    """Fill the batch of optimiser step ``step`` with NaN (before the pre-processor resizes it)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            batch.image.fill_(math.nan)


class InfiniteGradient(Callback):
    """Make one segmentation-network gradient infinite in optimiser step ``step``; the loss stays finite."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            parameter = next(pl_module.model.segmentation_network.parameters())
            self.handle = parameter.register_hook(lambda gradient: torch.full_like(gradient, math.inf))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if hasattr(self, "handle"):
            self.handle.remove()


def _assert_same(actual: dict, expected: dict) -> None:
    """Nested dicts / lists of tensors and plain values are equal (tensors exactly)."""
    if isinstance(expected, torch.Tensor):  # bit-identical; NaN equals NaN (unset post-processor thresholds)
        assert actual.dtype == expected.dtype
        assert torch.equal(actual, expected) or torch.allclose(actual, expected, rtol=0, atol=0, equal_nan=True)
    elif isinstance(expected, dict):
        assert actual.keys() == expected.keys()
        for key in expected:
            _assert_same(actual[key], expected[key])
    elif isinstance(expected, list | tuple):
        assert len(actual) == len(expected)
        for first, second in zip(actual, expected, strict=True):
            _assert_same(first, second)
    else:
        assert actual == expected


@pytest.mark.parametrize(
    ("step", "stage", "poison", "what", "model_class", "precision", "evaluator"),
    [
        (1, "stage 1, student", PoisonImages, "loss (nan)", DeSTSeg, "32", False),
        (3, "stage 2, segmentation", PoisonImages, "loss (nan)", DeSTSeg, "32", False),
        (2, "stage 2, segmentation", InfiniteGradient, "gradient norm (inf)", DeSTSeg, "32", False),
        # PFADSeg under bf16-mixed with the default evaluator: both stages, within the first epoch (3 batches), so
        # that no validation (which updates the post-processor's statistics) falls between the two saved states.
        (1, "stage 1, student", PoisonImages, "loss (nan)", PFADSeg, "bf16-mixed", True),
        (2, "stage 2, segmentation", InfiniteGradient, "gradient norm (inf)", PFADSeg, "bf16-mixed", True),
    ],
    ids=[
        "nan_loss_in_stage_1",
        "nan_loss_in_stage_2",
        "infinite_gradient_in_stage_2",
        "PFADSeg_bf16_nan_loss_in_stage_1",
        "PFADSeg_bf16_infinite_gradient_in_stage_2",
    ],
)
def test_non_finite_step_saves_the_last_good_state_then_stops(
    tiny_dataset: Path,
    teacher_weights: Path,
    tmp_path: Path,
    step: int,
    stage: str,
    poison: type,
    what: str,
    model_class: type,
    precision: str,
    evaluator: bool,
) -> None:
    good = tmp_path / "good.ckpt"
    callbacks = (SaveAfter(good, step), poison(step))
    engine = quiet_cpu_engine(tmp_path / "results", callbacks=callbacks, precision=precision)
    model = _model(teacher_weights, model_class, evaluator=evaluator)
    with pytest.raises(FloatingPointError) as error:
        engine.fit(model, datamodule=tiny_datamodule(tiny_dataset))
    message = str(error.value)
    assert f"non-finite {what} at optimiser step {step} of 4 ({stage})" in message
    last_good = Path(engine.trainer.checkpoint_callback.dirpath) / "last_good.ckpt"
    assert last_good.is_file()
    assert str(last_good) in message
    assert last_good.parent.parts[-2:] == ("weights", "lightning")
    assert tmp_path / "results" in last_good.parents

    saved = torch.load(last_good, map_location="cpu", weights_only=False)
    reference = torch.load(good, map_location="cpu", weights_only=False)
    assert saved["global_step"] == step
    weights = {key.removeprefix("model."): value for key, value in saved["state_dict"].items() if key[:6] == "model."}
    assert all(torch.isfinite(value).all() for value in weights.values() if value.is_floating_point())
    _assert_same(saved["state_dict"], reference["state_dict"])  # BatchNorm statistics included
    _assert_same(saved["optimizer_states"], reference["optimizer_states"])  # momentum buffers
    stream = "two_stage_random_state", "anomaly_stream"
    _assert_same(saved[stream[0]][stream[1]], reference[stream[0]][stream[1]])  # resuming redoes the same anomalies
    _assert_same(model.model.state_dict(), weights)  # the failed step left the model in memory untouched too


def test_training_resumes_from_the_last_good_checkpoint(
    tiny_dataset: Path, teacher_weights: Path, tmp_path: Path
) -> None:
    """After a NaN in step 1, ``ckpt_path=last_good.ckpt`` redoes step 1 and finishes the planned 4 steps."""
    engine = quiet_cpu_engine(tmp_path / "crashed", callbacks=(PoisonImages(1),))
    with pytest.raises(FloatingPointError):
        engine.fit(_model(teacher_weights), datamodule=tiny_datamodule(tiny_dataset))
    last_good = Path(engine.trainer.checkpoint_callback.dirpath) / "last_good.ckpt"
    resumed = quiet_cpu_engine(tmp_path / "resumed")
    model = _model(teacher_weights)
    resumed.fit(model, datamodule=tiny_datamodule(tiny_dataset), ckpt_path=last_good)
    assert resumed.trainer.global_step == 4
    assert all(torch.isfinite(value).all() for value in model.state_dict().values() if value.is_floating_point())


# --- dataset files ----------------------------------------------------------------------------------------------
def _folder_dataset(root: Path, bad: str | None = None) -> tuple[Path, Path]:
    """A Folder dataset of random 64x64 RGB PNGs (8 normal training images); returns (root, the changed file)."""
    rng = np.random.default_rng(0)
    for split, count in (("good", 8), ("test_good", 2), ("bad", 2)):
        for index in range(count):
            path = root / split / f"{index:03d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)).save(path)
    target = root / "good" / "005.png"
    if bad == "truncated_png":
        target.write_bytes(target.read_bytes()[:300])
    elif bad == "truncated_jpeg":
        target.unlink()
        target = target.with_suffix(".jpg")
        Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)).save(target, quality=95)
        target.write_bytes(target.read_bytes()[:700])
    elif bad == "not_an_image":
        target.write_bytes(b"<html>404 Not Found</html>")
    elif bad == "empty":
        target.write_bytes(b"")
    return root, target


def _folder(root: Path) -> Folder:
    return Folder(
        name="guarded",
        root=root,
        normal_dir="good",
        abnormal_dir="bad",
        normal_test_dir="test_good",
        train_batch_size=4,
        eval_batch_size=4,
        num_workers=0,
    )


@pytest.mark.parametrize("bad", ["truncated_png", "truncated_jpeg", "not_an_image", "empty"])
def test_unreadable_training_image_is_named_before_training(teacher_weights: Path, tmp_path: Path, bad: str) -> None:
    root, target = _folder_dataset(tmp_path / "data", bad)
    engine = quiet_cpu_engine(tmp_path / "results")
    with pytest.raises(ValueError, match="cannot be read as images") as error:
        engine.fit(_model(teacher_weights), datamodule=_folder(root))
    assert str(target) in str(error.value)
    assert "training image" in str(error.value)
    assert engine.trainer.global_step == 0


def test_pil_alone_would_not_name_a_truncated_file(tmp_path: Path) -> None:
    """Why the check exists: anomalib's reader fails on a truncated PNG with a message that names no file."""
    from anomalib.data.utils import read_image

    _, target = _folder_dataset(tmp_path, "truncated_png")
    with pytest.raises(OSError, match="truncated") as error:
        read_image(target, as_tensor=True)
    assert target.name not in str(error.value)


def test_grayscale_rgba_16_bit_and_mixed_size_images_train_as_anomalib_reads_them(
    teacher_weights: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root, _ = _folder_dataset(tmp_path / "data")
    rng = np.random.default_rng(1)
    good = root / "good"
    Image.fromarray(rng.integers(0, 256, (SIZE, SIZE), dtype=np.uint8)).save(good / "000.png")  # grayscale
    Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 4), dtype=np.uint8)).save(good / "001.png")  # RGBA
    Image.fromarray(rng.integers(0, 256, (100, 48, 3), dtype=np.uint8)).save(good / "002.png")  # other size
    sixteen = good / "003.png"
    Image.fromarray(rng.integers(0, 65536, (SIZE, SIZE), dtype=np.uint16)).save(sixteen)  # 16-bit grayscale
    engine = quiet_cpu_engine(tmp_path / "results")
    with caplog.at_level(logging.INFO, logger="anomalib_destseg"):
        engine.fit(_model(teacher_weights, student_steps=1, segmentation_steps=1), datamodule=_folder(root))
    assert engine.trainer.global_step == 2
    log = caplog.text
    assert re.search(r"more than 8 bits per channel \(e\.g\. [^)]*003\.png", log)
    assert "different aspect ratios" in log
    assert "grayscale" in log


def test_dataset_check_names_unreadable_masks_and_their_split(tmp_path: Path) -> None:
    image = tmp_path / "image.png"
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(image)
    mask = tmp_path / "mask.png"
    mask.write_bytes(b"")

    class Dataset:
        samples = pd.DataFrame({"image_path": [str(image), str(image)], "mask_path": ["", str(mask)]})

    with pytest.raises(ValueError, match=r"1 dataset file") as error:
        check_dataset_images({"test": Dataset(), "not an anomalib dataset": object()})
    assert f"{mask}: test mask" in str(error.value)


# --- texture folders ----------------------------------------------------------------------------------------------
def _textures(folder: Path, count: int = 2) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(2)
    for index in range(count):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(folder / f"ok_{index}.png")
    return folder


def test_unidentifiable_texture_files_are_named_and_left_out(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = _textures(tmp_path / "textures")
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "page.png").write_bytes(b"<html>not an image</html>")
    generator = SyntheticAnomalyGenerator(texture_dir=folder)
    with caplog.at_level(logging.WARNING):
        generator.load_textures()  # when training starts
    assert "empty.jpg" in caplog.text
    assert "page.png" in caplog.text
    assert sorted(path.name for path in generator.texture_files) == ["ok_0.png", "ok_1.png"]
    corrupted, _ = generator(torch.rand(4, 3, 32, 32))
    assert torch.isfinite(corrupted).all()


def test_texture_that_fails_to_decode_when_drawn_is_named_and_replaced(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = _textures(tmp_path / "textures", count=1)
    truncated = folder / "truncated.png"
    shutil.copyfile(folder / "ok_0.png", truncated)
    truncated.write_bytes(truncated.read_bytes()[:100])  # the header is fine, the pixel data is cut short
    generator = SyntheticAnomalyGenerator(texture_dir=folder)
    assert len(generator.texture_files) == 2  # a header check cannot see the truncation
    torch.manual_seed(0)
    with caplog.at_level(logging.WARNING):
        textures = [generator.texture(16, 16, torch.device("cpu")) for _ in range(20)]
    assert "truncated.png" in caplog.text
    assert [path.name for path in generator.texture_files] == ["ok_0.png"]
    assert all(texture.shape == (3, 16, 16) for texture in textures)


def test_texture_folder_without_a_readable_image_is_refused_naming_the_files(tmp_path: Path) -> None:
    folder = tmp_path / "textures"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"")
    (folder / "b.jpg").write_bytes(b"GIF89a?")
    with pytest.raises(ValueError, match="None of the 2 texture images") as error:
        SyntheticAnomalyGenerator(texture_dir=folder).load_textures()
    assert "a.png" in str(error.value)
    assert "b.jpg" in str(error.value)
