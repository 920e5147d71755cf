"""The synthetic anomaly generator (DRAEM-like, reference settings) and the per-category rotation policies."""

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from anomalib_destseg.data import SyntheticAnomalyGenerator
from anomalib_destseg.data.rotation import FILL, MVTEC_ROTATION, resolve_rotation, rotate_batch

GENERATOR_LOGGER = "anomalib_destseg.data.anomaly_generator"
TEXTURE_RGB = (200, 100, 50)


@pytest.fixture
def constant_texture_dir(tmp_path: Path) -> Path:
    """A texture folder with one image of a single colour, so the texture A of the blend is known exactly."""
    folder = tmp_path / "textures" / "plain"
    folder.mkdir(parents=True)
    Image.fromarray(np.full((40, 56, 3), TEXTURE_RGB, dtype=np.uint8)).save(folder / "plain.png")
    return folder.parent


def _corrupt_until_masked(generator: SyntheticAnomalyGenerator, clean: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Draw batches until every image got a non-empty mask (coarse Perlin grids can give empty ones)."""
    for seed in range(50):
        torch.manual_seed(seed)
        corrupted, masks = generator(clean)
        if (masks.flatten(1).sum(1) > 0).all():
            return corrupted, masks
    pytest.fail("no batch with a non-empty mask for every image in 50 seeds")


def test_masks_are_binary_and_shapes_match() -> None:
    generator = SyntheticAnomalyGenerator(texture_dir=None)
    torch.manual_seed(0)
    clean = torch.rand(6, 3, 64, 64)
    corrupted, masks = generator(clean)
    assert corrupted.shape == clean.shape and masks.shape == (6, 1, 64, 64)
    assert set(masks.unique().tolist()) <= {0.0, 1.0}
    assert masks.sum() > 0
    assert ((corrupted >= 0) & (corrupted <= 1)).all()
    # outside the mask the image is untouched (exactly)
    outside = (masks == 0).expand_as(clean)
    assert torch.equal(corrupted[outside], clean[outside])
    assert not torch.equal(corrupted, clean)


def test_blend_formula_is_exact_for_a_known_beta(constant_texture_dir: Path) -> None:
    beta = 0.3
    generator = SyntheticAnomalyGenerator(texture_dir=constant_texture_dir, beta_range=(beta, beta))
    clean = torch.rand(3, 3, 64, 64)
    corrupted, masks = _corrupt_until_masked(generator, clean)
    texture = torch.tensor(TEXTURE_RGB, dtype=torch.float32).view(1, 3, 1, 1) / 255
    expected = clean * (1 - masks) + (1 - beta) * texture * masks + beta * clean * masks
    torch.testing.assert_close(corrupted, expected, rtol=0, atol=1e-6)


def test_blend_with_random_beta_uses_one_beta_per_image_in_range(constant_texture_dir: Path) -> None:
    # inside the mask corrupted = A + beta * (clean - A), so beta = (corrupted - A) / (clean - A) per pixel
    generator = SyntheticAnomalyGenerator(texture_dir=constant_texture_dir)  # reference beta ~ U[0, 0.8)
    clean = torch.rand(4, 3, 64, 64) * 0.25  # far from the texture colour: a well-conditioned ratio
    corrupted, masks = _corrupt_until_masked(generator, clean)
    texture = torch.tensor(TEXTURE_RGB, dtype=torch.float32).view(1, 3, 1, 1) / 255
    betas = []
    for i in range(clean.shape[0]):
        inside = masks[i].expand(3, -1, -1) > 0
        implied = (corrupted[i] - texture[0])[inside] / (clean[i] - texture[0])[inside]
        assert implied.max() - implied.min() < 1e-4, "one beta per image"
        betas.append(implied.mean().item())
    assert all(-1e-4 <= b < 0.8 for b in betas)
    assert len({round(b, 4) for b in betas}) > 1, "beta is drawn per image"


def test_same_seed_same_anomalies() -> None:
    generator = SyntheticAnomalyGenerator(texture_dir=None)
    clean = torch.rand(2, 3, 64, 64)
    torch.manual_seed(123)
    first = generator(clean)
    torch.manual_seed(123)
    second = generator(clean)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


def test_probability_zero_leaves_images_unchanged() -> None:
    generator = SyntheticAnomalyGenerator(texture_dir=None, probability=0.0)
    clean = torch.rand(4, 3, 64, 64)
    corrupted, masks = generator(clean)
    assert torch.equal(corrupted, clean)
    assert masks.shape == (4, 1, 64, 64) and masks.sum() == 0
    corrupted[0, 0, 0, 0] = 5.0  # a new tensor, not a view of the input
    assert clean[0, 0, 0, 0] != 5.0


def test_probability_one_corrupts_every_image_with_a_mask() -> None:
    generator = SyntheticAnomalyGenerator(texture_dir=None)
    clean = torch.rand(4, 3, 64, 64)
    for seed in range(5):
        torch.manual_seed(seed)
        corrupted, masks = generator(clean)
        for i in range(4):
            # an image is left normal only when its mask is empty
            assert torch.equal(corrupted[i], clean[i]) == (masks[i].sum() == 0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"probability": 1.5}, "probability"),
        ({"beta_range": (0.5, 0.2)}, "beta_range"),
        ({"beta_range": (-0.1, 0.5)}, "beta_range"),
    ],
)
def test_bad_arguments_raise(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SyntheticAnomalyGenerator(texture_dir=None, **kwargs)


def test_rejects_non_rgb_batches() -> None:
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        SyntheticAnomalyGenerator(texture_dir=None)(torch.rand(3, 64, 64))


def test_missing_texture_dir_raises_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "no_such_dtd"
    generator = SyntheticAnomalyGenerator(texture_dir=missing)  # a model loads without its texture folder
    with pytest.raises(FileNotFoundError, match="no_such_dtd"):
        generator.load_textures()  # training starts


def test_texture_dir_without_images_raises(tmp_path: Path) -> None:
    (tmp_path / "readme.txt").write_text("not an image")
    with pytest.raises(ValueError, match="holds no images"):
        SyntheticAnomalyGenerator(texture_dir=tmp_path)(torch.rand(1, 3, 32, 32))  # the first use reads the folder


def test_unreadable_texture_raises_naming_the_file(tmp_path: Path) -> None:
    (tmp_path / "broken.png").write_bytes(b"this is not a png file")
    with pytest.raises(ValueError, match=r"broken\.png"):
        generator = SyntheticAnomalyGenerator(texture_dir=tmp_path)
        generator(torch.rand(2, 3, 64, 64))  # wherever the file is found unreadable, the error names it


def test_truncated_texture_raises_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "truncated.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:200])  # a valid header, the image data cut short
    with pytest.raises(ValueError, match=r"truncated\.png"):
        generator = SyntheticAnomalyGenerator(texture_dir=tmp_path)
        for seed in range(20):  # until a non-empty mask needs the texture
            torch.manual_seed(seed)
            generator(torch.rand(2, 3, 64, 64))


def test_reads_textures_recursively_and_uses_them(constant_texture_dir: Path) -> None:
    generator = SyntheticAnomalyGenerator(texture_dir=constant_texture_dir)
    assert [p.name for p in generator.texture_files] == ["plain.png"]
    texture = generator.texture(16, 24, torch.device("cpu"))
    assert texture.shape == (3, 16, 24)
    torch.testing.assert_close(texture[:, 0, 0], torch.tensor(TEXTURE_RGB, dtype=torch.float32) / 255)


def test_procedural_fallback_warns_once_per_generator(caplog: pytest.LogCaptureFixture) -> None:
    def warnings() -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.name == GENERATOR_LOGGER and r.levelno == logging.WARNING]

    with caplog.at_level(logging.WARNING, logger=GENERATOR_LOGGER):
        generator = SyntheticAnomalyGenerator(texture_dir=None)
        for _ in range(3):
            generator(torch.rand(2, 3, 32, 32))
        assert len(warnings()) == 1
        assert "texture_dir" in warnings()[0].getMessage()
        SyntheticAnomalyGenerator(texture_dir=None)(torch.rand(1, 3, 32, 32))  # another generator warns again
        assert len(warnings()) == 2


def test_textures_do_not_warn(constant_texture_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger=GENERATOR_LOGGER):
        generator = SyntheticAnomalyGenerator(texture_dir=constant_texture_dir)
        generator(torch.rand(2, 3, 32, 32))
    assert not [r for r in caplog.records if r.name == GENERATOR_LOGGER and r.levelno >= logging.WARNING]


# --- rotation policies -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("category", "policy"),
    [
        ("bottle", "quarter"),
        ("carpet", "quarter"),
        ("screw", "quarter"),
        ("wood", "small"),
        ("zipper", "small"),
        ("cable", "small"),
        ("capsule", "none"),
        ("transistor", "none"),
        ("toothbrush", "none"),
        ("my_own_dataset", "none"),
        (None, "none"),
    ],
)
def test_resolve_rotation_auto(category: str | None, policy: str) -> None:
    assert resolve_rotation("auto", category) == policy


def test_every_mvtec_category_has_a_policy() -> None:
    categories = {
        "bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut", "pill", "screw", "tile",
        "toothbrush", "transistor", "wood", "zipper",
    }  # fmt: skip
    assert set(MVTEC_ROTATION) == categories


def test_explicit_policies_override_the_category() -> None:
    assert resolve_rotation("none", "bottle") == "none"
    assert resolve_rotation("small", "capsule") == "small"
    with pytest.raises(ValueError, match="rotation must be one of"):
        resolve_rotation("sideways", "bottle")


def test_rotate_none_returns_the_input() -> None:
    images = torch.rand(2, 3, 32, 32)
    assert rotate_batch(images, "none") is images


def test_rotate_quarter_keeps_shape_and_rotates() -> None:
    torch.manual_seed(0)
    images = torch.rand(4, 3, 64, 64)
    rotated = rotate_batch(images, "quarter")
    assert rotated.shape == images.shape and rotated.dtype == images.dtype
    assert not torch.equal(rotated, images)


def test_rotate_small_fills_corners_with_grey() -> None:
    torch.manual_seed(0)
    images = torch.ones(8, 3, 64, 64)
    rotated = rotate_batch(images, "small")
    assert rotated.shape == images.shape
    # up to 5 degrees: the centre stays, fully uncovered corner pixels take the grey fill 114/255
    assert torch.allclose(rotated[:, :, 32, 32], torch.ones(8, 3), atol=1e-5)
    assert ((rotated >= 0) & (rotated <= 1)).all()
    filled = ((rotated - FILL).abs() < 1e-6).flatten(1).any(dim=1)
    assert filled.sum() >= 4  # most draws (|angle| not tiny) uncover whole corner pixels
    assert pytest.approx(114 / 255) == FILL


def test_rotate_rejects_unresolved_policy() -> None:
    with pytest.raises(ValueError, match="resolve_rotation"):
        rotate_batch(torch.rand(1, 3, 32, 32), "auto")
