"""Property-based tests (hypothesis) of the anomaly generator, its random stream and the losses.

Shapes are arbitrary (any H, W >= 8 for images, smaller for feature maps; multiples of 32 are only needed by the
networks), as are batch sizes, value ranges, blend ranges and probabilities.
"""

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from torch.nn import functional as F  # noqa: N812

from anomalib_destseg.components.loss import FocalLoss, SegmentationLoss, StudentCosineLoss, mask_at_resolution
from anomalib_destseg.data.anomaly_generator import SyntheticAnomalyGenerator
from anomalib_destseg.training.random_stream import RandomStream

TOLERANCE = 1e-6
PROPERTIES = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture], derandomize=True
)


@pytest.fixture(scope="module")
def texture_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three texture images of different sizes (one grayscale), to be resized to every drawn image size."""
    folder = tmp_path_factory.mktemp("property_textures")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(folder / "a.png")
    Image.fromarray(rng.integers(0, 256, (50, 17, 3), dtype=np.uint8)).save(folder / "b.jpg")
    Image.fromarray(rng.integers(0, 256, (9, 9), dtype=np.uint8)).save(folder / "gray.png")
    return folder


class RecordingGenerator(SyntheticAnomalyGenerator):
    """Records each corrupted image's mask and texture, in image order."""

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.drawn: list[dict[str, torch.Tensor]] = []
        return super().__call__(images)

    def mask(self, height: int, width: int, device: torch.device) -> torch.Tensor:
        mask = super().mask(height, width, device)
        self.drawn.append({"mask": mask})
        return mask

    def texture(self, height: int, width: int, device: torch.device) -> torch.Tensor:
        texture = super().texture(height, width, device)
        self.drawn[-1]["texture"] = texture
        return texture


@st.composite
def image_batches(draw: st.DrawFn) -> torch.Tensor:
    """``[B, 3, H, W]`` with B in 1..3, H, W in 8..40 and values uniform in a random range inside [-1, 2]."""
    batch, height, width = draw(st.integers(1, 3)), draw(st.integers(8, 40)), draw(st.integers(8, 40))
    low = draw(st.floats(-1.0, 1.0))
    high = draw(st.floats(low, 2.0))
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    return low + (high - low) * torch.rand(batch, 3, height, width, generator=generator)


@PROPERTIES
@given(
    images=image_batches(),
    use_folder=st.booleans(),
    probability=st.sampled_from([0.0, 0.3, 1.0]),
    beta=st.tuples(st.floats(0.0, 1.0), st.floats(0.0, 1.0)).map(sorted),
    seed=st.integers(0, 2**31),
)
def test_anomalies_blend_inside_the_masks_only(
    texture_dir: Path, images: torch.Tensor, use_folder: bool, probability: float, beta: list[float], seed: int
) -> None:
    """Masks are binary; unmasked pixels keep their value exactly; a masked pixel lies between its clean value and
    its texture value (the blend is convex); with probability 0 nothing changes."""
    generator = RecordingGenerator(
        texture_dir=texture_dir if use_folder else None, probability=probability, beta_range=tuple(beta)
    )
    torch.manual_seed(seed)
    corrupted, masks = generator(images)
    batch, _, height, width = images.shape
    assert corrupted.shape == images.shape
    assert masks.shape == (batch, 1, height, width)
    assert masks.dtype == torch.float32
    assert set(masks.unique().tolist()) <= {0.0, 1.0}
    outside = (masks == 0).expand_as(images)
    assert torch.equal(corrupted[outside], images[outside])
    if probability == 0:
        assert not generator.drawn
        assert torch.equal(corrupted, images)
    drawn = iter(generator.drawn)  # the corrupted images' masks and textures, in image order
    for index in range(batch):
        if not masks[index].any():
            continue  # not corrupted, or an empty mask: already checked above
        record = next(record for record in drawn if torch.equal(record["mask"], masks[index]))
        texture, clean, inside = record["texture"], images[index], masks[index].bool().expand(3, -1, -1)
        assert texture.shape == (3, height, width)
        assert texture.min() >= 0 and texture.max() <= 1
        low, high = torch.minimum(clean, texture)[inside], torch.maximum(clean, texture)[inside]
        assert (corrupted[index][inside] >= low - TOLERANCE).all()
        assert (corrupted[index][inside] <= high + TOLERANCE).all()


@PROPERTIES
@given(seed=st.integers(0, 2**62), global_seed=st.integers(0, 2**62), draws=st.integers(1, 50))
def test_random_stream_leaves_the_global_generator_alone_and_resumes_exactly(
    seed: int, global_seed: int, draws: int
) -> None:
    torch.manual_seed(global_seed)
    global_before = torch.get_rng_state()
    stream = RandomStream(seed)
    with stream.active():
        first = torch.rand(draws)
    assert torch.equal(torch.get_rng_state(), global_before)
    saved = stream.state_dict()
    with stream.active():
        second = torch.rand(draws)
    resumed = RandomStream.from_state_dict(saved)
    with resumed.active():
        assert torch.equal(torch.rand(draws), second)
    fresh = RandomStream(seed)
    with fresh.active():
        assert torch.equal(torch.rand(draws), first)
    assert torch.equal(torch.get_rng_state(), global_before)


@st.composite
def feature_pairs(draw: st.DrawFn) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """1..3 levels of ``[B, C, H, W]`` student and teacher features, at scales from 1e-4 to 1e4, some all zero."""
    batch = draw(st.integers(1, 3))
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    students, teachers = [], []
    for _ in range(draw(st.integers(1, 3))):
        shape = (batch, draw(st.integers(1, 8)), draw(st.integers(1, 9)), draw(st.integers(1, 9)))
        for features in (students, teachers):
            scale = 10.0 ** draw(st.integers(-4, 4)) if draw(st.integers(0, 9)) else 0.0
            features.append(scale * torch.randn(shape, generator=generator))
    return students, teachers


@PROPERTIES
@given(pair=feature_pairs())
def test_student_loss_is_finite_and_between_0_and_2_per_level_and_image(
    pair: tuple[list[torch.Tensor], list[torch.Tensor]],
) -> None:
    students, teachers = pair
    levels, batch = len(students), students[0].shape[0]
    loss = StudentCosineLoss()(students, teachers)
    bound = 2 * levels * batch
    assert torch.isfinite(loss)
    assert -1e-5 * bound <= float(loss) <= bound * (1 + 1e-5)
    same = float(StudentCosineLoss()(teachers, teachers))
    nonzero = [bool(t.abs().sum(dim=1).gt(0).all()) for t in teachers]
    if all(nonzero):  # identical non-zero features: distance 0; opposite ones: the maximum
        assert abs(same) <= 1e-5 * bound
        assert float(StudentCosineLoss()([-t for t in teachers], teachers)) == pytest.approx(bound, rel=1e-5)


@st.composite
def predictions_and_masks(draw: st.DrawFn) -> tuple[torch.Tensor, torch.Tensor]:
    """A ``[B, 1, h, w]`` probability map (with exact 0s and 1s) and a binary ``[B, 1, H, W]`` mask, H, W >= 8."""
    batch = draw(st.integers(1, 4))
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    size = (draw(st.integers(1, 16)), draw(st.integers(1, 16)))
    prediction = torch.rand(batch, 1, *size, generator=generator)
    saturated = torch.rand(prediction.shape, generator=generator) < draw(st.floats(0.0, 0.5))
    prediction = torch.where(saturated, prediction.round(), prediction)
    mask_size = (draw(st.integers(8, 48)), draw(st.integers(8, 48)))
    mask = (torch.rand(batch, 1, *mask_size, generator=generator) < draw(st.floats(0.0, 1.0))).float()
    return prediction, mask


@PROPERTIES
@given(data=predictions_and_masks(), gamma=st.floats(0.0, 6.0))
def test_segmentation_losses_are_finite_and_in_range(data: tuple[torch.Tensor, torch.Tensor], gamma: float) -> None:
    """Focal >= 0, L1 in [0, 1], the target binary at the prediction's size, the total = focal + L1."""
    prediction, mask = data
    target = mask_at_resolution(mask, prediction.shape[-2:])
    assert target.shape == prediction.shape
    assert set(target.unique().tolist()) <= {0.0, 1.0}
    focal = FocalLoss(gamma=gamma)(prediction, target)
    l1 = F.l1_loss(prediction, target)
    total = SegmentationLoss(focal_gamma=gamma)(prediction, mask)
    assert torch.isfinite(focal)
    assert float(focal) >= 0
    assert 0 <= float(l1) <= 1
    assert torch.isfinite(total)
    assert float(total) == pytest.approx(float(focal + l1), rel=1e-6, abs=1e-7)
    perfect = FocalLoss(gamma=gamma)(target, target)  # certain and right: no loss beyond the log's epsilon
    assert 0 <= float(perfect) <= 2e-6
