"""DeSTSeg's torch model: shapes, sizes, modes, scoring (both maps), float32 outputs under autocast, input checks."""

from pathlib import Path

import pytest
import torch
from anomalib.data import InferenceBatch
from torch.nn import functional as F  # noqa: N812

from anomalib_destseg import DeSTSegModel
from anomalib_destseg.components import SegmentationNetwork, dest_map, segmentation_input


@pytest.fixture(scope="module")
def model(teacher_weights: Path) -> DeSTSegModel:
    torch.manual_seed(0)
    model = DeSTSegModel()
    model.teacher.load_weights(teacher_weights)
    return model.eval()


def _millions(module: torch.nn.Module, trainable_only: bool = False) -> float:
    return round(sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only) / 1e6, 2)


def test_parameter_counts_match_the_spec() -> None:
    model = DeSTSegModel()
    assert _millions(model.teacher) == 2.78
    assert _millions(model.student_encoder) == 11.18
    assert _millions(model.student_decoder) == 13.49
    assert _millions(model.segmentation_network) == 7.71
    assert _millions(model.segmentation_network.residual) == 2.92
    assert _millions(model.segmentation_network.aspp) == 4.20
    assert _millions(model, trainable_only=True) == 32.37
    assert _millions(model) == 35.15  # "about 35.2 M"


@pytest.mark.parametrize("size", [64, 256])
def test_feature_and_output_shapes(model: DeSTSegModel, size: int) -> None:
    batch = 2 if size == 64 else 1
    images = torch.rand(batch, 3, size, size)
    with torch.no_grad():
        teacher, student = model.encode(images)
        seg_input = model.segmentation_features(teacher, student)
        output = model(images)
    q = size // 4
    expected_levels = [(batch, 64, q, q), (batch, 128, q // 2, q // 2), (batch, 256, q // 4, q // 4)]
    assert [tuple(t.shape) for t in teacher] == expected_levels
    assert [tuple(s.shape) for s in student] == expected_levels
    assert tuple(seg_input.shape) == (batch, 448, q, q)
    assert isinstance(output, InferenceBatch)
    assert tuple(output.pred_score.shape) == (batch,)
    assert tuple(output.anomaly_map.shape) == (batch, 1, size, size)
    assert ((output.anomaly_map >= 0) & (output.anomaly_map <= 1)).all()


def test_training_mode_returns_the_quarter_resolution_probability_map(model: DeSTSegModel) -> None:
    model.train()
    try:
        with torch.no_grad():
            output = model(torch.rand(2, 3, 64, 96))
    finally:
        model.eval()
    assert isinstance(output, torch.Tensor)
    assert tuple(output.shape) == (2, 1, 16, 24)


def test_eval_output_is_the_upsampled_segmentation_and_its_top_k_mean(model: DeSTSegModel) -> None:
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        teacher, student = model.encode(images)
        probabilities = model.segmentation_network(segmentation_input(teacher, student))
        output = model(images)
    expected_map = F.interpolate(probabilities, size=(64, 64), mode="bilinear", align_corners=False)
    torch.testing.assert_close(output.anomaly_map, expected_map)
    top = expected_map.flatten(1).sort(dim=1, descending=True).values[:, :100]
    torch.testing.assert_close(output.pred_score, top.mean(dim=1))


def test_dest_map_is_the_product_of_the_levels_cosine_distances() -> None:
    """Hand-computed: level 1 orthogonal (distance 1) on its left half, level 2 opposite (2) everywhere -> 2 and 0."""
    teacher = [torch.zeros(1, 2, 4, 4), torch.ones(1, 3, 2, 2)]
    teacher[0][:, 0] = 1.0
    student = [teacher[0].clone(), -torch.ones(1, 3, 2, 2)]
    student[0][:, :, :, :2] = torch.tensor([0.0, 3.0]).view(1, 2, 1, 1)  # orthogonal to (1, 0) on the left half
    expected = torch.tensor([2.0, 2.0, 0.0, 0.0]).expand(4, 4).reshape(1, 1, 4, 4)
    torch.testing.assert_close(dest_map(teacher, student), expected)
    with pytest.raises(ValueError, match="2 teacher levels but 1 student"):
        dest_map(teacher, student[:1])


def test_output_map_dest_returns_the_upsampled_dest_map_and_its_top_k_mean(model: DeSTSegModel) -> None:
    images = torch.rand(2, 3, 64, 64)
    model.output_map = "dest"
    try:
        with torch.no_grad():
            output = model(images)
            teacher, student = model.encode(images)
            both = model.predict_maps(images)
            segmentation = model.predict_maps(images, ("segmentation",))
    finally:
        model.output_map = "segmentation"
    expected_map = F.interpolate(dest_map(teacher, student), size=(64, 64), mode="bilinear", align_corners=False)
    torch.testing.assert_close(output.anomaly_map, expected_map)
    top = expected_map.flatten(1).sort(dim=1, descending=True).values[:, :100]
    torch.testing.assert_close(output.pred_score, top.mean(dim=1))
    assert list(both) == ["segmentation", "dest"] and list(segmentation) == ["segmentation"]
    torch.testing.assert_close(both["dest"].anomaly_map, output.anomaly_map)
    with torch.no_grad():
        torch.testing.assert_close(both["segmentation"].anomaly_map, model(images).anomaly_map)
    assert not torch.equal(both["dest"].anomaly_map, both["segmentation"].anomaly_map)


def test_unknown_map_names_are_refused(model: DeSTSegModel) -> None:
    with pytest.raises(ValueError, match="output_map must be one of 'segmentation', 'dest'; got 'DeST'"):
        DeSTSegModel(output_map="DeST")
    with pytest.raises(ValueError, match="maps must be one of 'segmentation', 'dest'; got 'st'"):
        model.predict_maps(torch.rand(1, 3, 64, 64), ("st",))


def test_both_maps_and_the_sigmoid_are_float32_under_bf16_autocast(model: DeSTSegModel) -> None:
    """The sigmoid of a logit above 6.25 is not rounded to 1.0 (bf16 would), and the DeST product keeps float32."""
    network = SegmentationNetwork(in_channels=8).eval()
    with torch.no_grad():
        network.head[-1].bias.fill_(8.0)  # logits near 8: sigmoid 0.99966, which bf16 rounds to 1.0
        network.head[-1].weight.mul_(1e-3)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert network.logits(torch.rand(1, 8, 8, 8)).dtype == torch.bfloat16  # the convolutions run in bf16
            probabilities = network(torch.rand(1, 8, 8, 8))
            both = model.predict_maps(torch.rand(1, 3, 64, 64))
    assert probabilities.dtype == torch.float32
    assert (probabilities < 1.0).all() and (probabilities > 0.999).all()
    for output in both.values():
        assert output.anomaly_map.dtype == torch.float32 and output.pred_score.dtype == torch.float32


def test_top_k_is_configurable() -> None:
    model = DeSTSegModel(top_k=1).eval()
    with torch.no_grad():
        output = model(torch.rand(1, 3, 64, 64))
    assert output.pred_score.item() == pytest.approx(output.anomaly_map.max().item())
    with pytest.raises(ValueError, match="top_k"):
        DeSTSegModel(top_k=0)


def test_model_normalises_internally(model: DeSTSegModel) -> None:
    images = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        teacher, _ = model.encode(images)
        direct = model.teacher((images - model.mean) / model.std)
    for a, b in zip(teacher, direct, strict=True):
        torch.testing.assert_close(a, b)


def test_teacher_stays_frozen_when_the_model_trains() -> None:
    model = DeSTSegModel()
    model.train()
    assert model.student_encoder.training and model.segmentation_network.training
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        in_training = model.teacher(images)
        in_eval = model.teacher.eval()(images)
    for a, b in zip(in_training, in_eval, strict=True):
        torch.testing.assert_close(a, b)  # BatchNorm uses its running statistics in training mode too
    assert not any(p.requires_grad for p in model.teacher.parameters())
    assert all(p.requires_grad for m in model.student_modules for p in m.parameters())


def test_set_stage_modes() -> None:
    model = DeSTSegModel()
    model.set_stage("student")
    assert model.student_encoder.training and model.student_decoder.training
    assert not model.segmentation_network.training
    model.set_stage("segmentation")
    assert not model.student_encoder.training and not model.student_decoder.training
    assert model.segmentation_network.training


def test_teacher_output_is_independent_of_batch_composition(model: DeSTSegModel) -> None:
    # eval-mode BatchNorm: an image's features do not depend on the other images of the batch
    images = torch.rand(3, 3, 64, 64)
    with torch.no_grad():
        together = model(images)
        alone = model(images[:1])
    torch.testing.assert_close(together.anomaly_map[:1], alone.anomaly_map, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ((3, 64, 64), r"\[B, 3, H, W\]"),
        ((2, 1, 64, 64), "3 channels"),
        ((2, 3, 80, 64), "multiple of 32"),
    ],
)
def test_bad_inputs_raise_value_error(model: DeSTSegModel, shape: tuple[int, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        model(torch.rand(shape))
