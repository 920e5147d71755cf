"""Shared components: feature operations, scoring, input checks, the frozen teacher and its weights.

Every expected number here is worked out by hand in the comments, never taken from the implementation.
"""

import math
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

from anomalib_destseg.components import (
    ASPP,
    ResNet18Teacher,
    SegmentationNetwork,
    StudentDecoder,
    StudentEncoder,
    TeacherWeightsError,
    channel_l2_normalize,
    check_images,
    cosine_distance_map,
    segmentation_input,
    top_k_mean,
)
from anomalib_destseg.components.teacher import TORCHVISION_FILE, read_state_dict


def _pixels(*vectors: tuple[float, ...], height: int, width: int) -> torch.Tensor:
    """A ``[1, C, H, W]`` map from per-pixel channel vectors listed row by row."""
    return torch.tensor(vectors, dtype=torch.float32).T.reshape(1, len(vectors[0]), height, width)


# --- n(.) and feature products -------------------------------------------------------------------------------------
def test_channel_l2_normalize_hand_computed() -> None:
    # pixel (3, 4) has norm 5 -> (0.6, 0.8); pixel (0, -2) -> (0, -1); the zero vector stays zero (eps, no NaN)
    x = _pixels((3.0, 4.0), (0.0, -2.0), (0.0, 0.0), height=1, width=3)
    expected = _pixels((0.6, 0.8), (0.0, -1.0), (0.0, 0.0), height=1, width=3)
    out = channel_l2_normalize(x)
    torch.testing.assert_close(out, expected)
    assert torch.isfinite(out).all()


def test_cosine_distance_map_hand_computed() -> None:
    student = _pixels((1.0, 0.0), (1.0, 0.0), (2.0, 0.0), height=1, width=3)
    teacher = _pixels((5.0, 0.0), (0.0, 1.0), (-1.0, 0.0), height=1, width=3)
    # cosines 1, 0, -1 -> distances 0, 1, 2
    torch.testing.assert_close(cosine_distance_map(student, teacher), torch.tensor([[[0.0, 1.0, 2.0]]]))


def test_segmentation_input_sign_and_resizing_hand_computed() -> None:
    # Level 1 (2 channels, 2x4): teacher (3, 4) -> (0.6, 0.8), student (0, 2) -> (0, 1) everywhere;
    # -n(T) * n(S) = (-0, -0.8) at every pixel.
    teacher_1 = torch.tensor([3.0, 4.0]).view(1, 2, 1, 1).expand(1, 2, 2, 4).clone()
    student_1 = torch.tensor([0.0, 2.0]).view(1, 2, 1, 1).expand(1, 2, 2, 4).clone()
    # Level 2 (1 channel, 1x2): n(.) of one channel is its sign. T = (2, 3) -> (1, 1); S = (5, -1) -> (1, -1);
    # -n(T) * n(S) = (-1, 1). Bilinear, align_corners=False, width 2 -> 4: source x = (i + 0.5) / 2 - 0.5
    # = -0.25 (clamped to 0), 0.25, 0.75, 1.25 (clamped to 1) -> (-1, -0.5, 0.5, 1); height 1 -> 2 repeats the row.
    teacher_2 = torch.tensor([[[[2.0, 3.0]]]])
    student_2 = torch.tensor([[[[5.0, -1.0]]]])
    out = segmentation_input([teacher_1, teacher_2], [student_1, student_2])
    expected = torch.zeros(1, 3, 2, 4)
    expected[0, 1] = -0.8
    expected[0, 2] = torch.tensor([-1.0, -0.5, 0.5, 1.0])
    torch.testing.assert_close(out, expected)


def test_segmentation_input_rejects_level_mismatch() -> None:
    with pytest.raises(ValueError, match="teacher levels"):
        segmentation_input([torch.rand(1, 2, 4, 4)] * 3, [torch.rand(1, 2, 4, 4)] * 2)


# --- image score and input checks ----------------------------------------------------------------------------------
def test_top_k_mean_hand_computed() -> None:
    maps = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]], [[[0.0, 0.0], [0.5, 8.0]]]])
    # top 2 of (1, 2, 3, 4) = (4, 3) -> 3.5; of (0, 0, 0.5, 8) = (8, 0.5) -> 4.25
    torch.testing.assert_close(top_k_mean(maps, 2), torch.tensor([3.5, 4.25]))
    # more than the map holds: every value, (1 + 2 + 3 + 4) / 4 = 2.5 and 8.5 / 4 = 2.125
    torch.testing.assert_close(top_k_mean(maps, 100), torch.tensor([2.5, 2.125]))
    assert top_k_mean(maps, 1).tolist() == [4.0, 8.0]


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ((3, 64, 64), r"\[B, 3, H, W\]"),
        ((2, 1, 64, 64), "3 channels"),
        ((2, 4, 64, 64), "3 channels"),
        ((2, 3, 48, 64), "multiple of 32"),
        ((2, 3, 64, 100), "multiple of 32"),
    ],
)
def test_check_images_rejects_bad_shapes(shape: tuple[int, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_images(torch.zeros(shape))


def test_check_images_accepts_valid_shapes() -> None:
    check_images(torch.zeros(1, 3, 32, 96))  # non-square is fine


# --- building blocks -----------------------------------------------------------------------------------------------
def test_student_and_segmentation_shapes_at_64() -> None:
    encoder, decoder = StudentEncoder(), StudentDecoder()
    with torch.no_grad():
        encoded = encoder(torch.rand(2, 3, 64, 64))
        decoded = decoder(encoded[-1])
        segmented = SegmentationNetwork(448).eval()(torch.rand(2, 448, 16, 16))
        aspp = ASPP().eval()(torch.rand(2, 256, 16, 16))
    assert [tuple(e.shape) for e in encoded] == [(2, 64, 16, 16), (2, 128, 8, 8), (2, 256, 4, 4), (2, 512, 2, 2)]
    assert [tuple(s.shape) for s in decoded] == [(2, 64, 16, 16), (2, 128, 8, 8), (2, 256, 4, 4)]
    assert segmented.shape == (2, 1, 16, 16)
    assert ((segmented >= 0) & (segmented <= 1)).all()  # sigmoid output
    assert aspp.shape == (2, 256, 16, 16)


def test_student_encoder_zero_initialises_last_batchnorm_of_each_block() -> None:
    encoder = StudentEncoder()
    blocks = [block for layer in (encoder.layer1, encoder.layer2, encoder.layer3, encoder.layer4) for block in layer]
    assert len(blocks) == 8
    assert all(torch.count_nonzero(block.bn2.weight) == 0 for block in blocks)
    assert all(torch.count_nonzero(block.bn1.weight) == block.bn1.weight.numel() for block in blocks)


def test_aspp_has_no_1x1_branch_and_the_reference_dilations() -> None:
    aspp = ASPP()
    convs = [branch[0] for branch in aspp.dilated_branches]
    assert [conv.dilation for conv in convs] == [(6, 6), (12, 12), (18, 18)]
    assert [conv.padding for conv in convs] == [(6, 6), (12, 12), (18, 18)]
    assert all(conv.kernel_size == (3, 3) and conv.bias is None for conv in convs)
    assert aspp.project[0].in_channels == 4 * 256
    assert not any(isinstance(m, torch.nn.Dropout) for m in aspp.modules())


def test_segmentation_network_initialised_as_the_reference() -> None:
    """Kaiming-normal (fan_out) only in the residual blocks; ASPP and the head keep PyTorch's default init."""
    torch.manual_seed(0)
    network = SegmentationNetwork(in_channels=448)
    # residual 3x3 convs 256 -> 256: Kaiming normal, fan_out = 256 * 9, std = sqrt(2 / 2304) = 0.0295
    residual = network.residual[1].conv1.weight
    assert residual.std().item() == pytest.approx(math.sqrt(2 / 2304), rel=0.05)
    # PyTorch's default: uniform in +-1/sqrt(fan_in); std = bound / sqrt(3)
    final = network.head[1]
    assert final.weight.abs().max().item() <= 1 / 16  # fan_in 256
    assert final.weight.std().item() == pytest.approx(1 / 16 / math.sqrt(3), rel=0.15)
    assert final.bias.abs().max().item() <= 1 / 16
    head_conv = network.head[0][0].weight  # 3x3, fan_in 2304: bound 0.0208 (Kaiming fan_out would give std 0.0295)
    assert head_conv.abs().max().item() <= 1 / 48
    project = network.aspp.project[0].weight  # 3x3 over 1024 channels: bound 1/96
    assert project.abs().max().item() <= 1 / 96


def test_fresh_segmentation_network_is_not_saturated_on_real_features(
    real_teacher_weights: Path, mvtec_root: Path
) -> None:
    """Stage 2 starts with logits near 0 on real teacher features (with Kaiming in the head: half exceed |10|)."""
    from PIL import Image

    from anomalib_destseg import DeSTSegModel

    files = sorted((mvtec_root / "bottle" / "train" / "good").glob("*.png"))[:4]
    images = (
        torch.stack(
            [
                torch.from_numpy(np.asarray(Image.open(f).convert("RGB").resize((256, 256)))).permute(2, 0, 1)
                for f in files
            ]
        ).float()
        / 255
    )
    torch.manual_seed(0)
    model = DeSTSegModel()
    model.teacher.load_weights(real_teacher_weights)
    model.set_stage("segmentation")  # segmentation network in training mode, as stage 2 starts
    with torch.no_grad():
        logits = model.segmentation_network.logits(model.segmentation_features(*model.encode(images)))
    assert logits.abs().max().item() < 10
    assert logits.std().item() < 1.0


# --- the teacher ---------------------------------------------------------------------------------------------------
def test_teacher_is_frozen_in_training_mode_too() -> None:
    teacher = ResNet18Teacher()
    torch.manual_seed(0)
    for name, buffer in teacher.named_buffers():  # ImageNet-like statistics, not BatchNorm's 0 / 1 defaults
        if name.endswith(("running_mean", "running_var")):
            buffer.copy_(torch.rand_like(buffer) + 0.5)
    before = {name: value.clone() for name, value in teacher.state_dict().items()}
    images = torch.rand(4, 3, 64, 64)
    with torch.no_grad():
        expected = teacher.eval()(images)
        trained = teacher.train()(images * 3 + 1)  # batch statistics far from the running ones
        again = teacher(images)
    assert teacher.training  # it follows its parent's mode: Lightning warns about modules left in eval mode
    for name, value in teacher.state_dict().items():
        assert torch.equal(value, before[name]), name  # no running statistics gathered in training mode
    for a, b in zip(expected, again, strict=True):
        torch.testing.assert_close(a, b)  # the same values as in eval mode
    assert not torch.allclose(trained[0], again[0])
    assert not any(p.requires_grad for p in teacher.parameters())
    assert not bool(teacher.pretrained)
    assert not hasattr(teacher, "layer4") and not hasattr(teacher, "fc")


def test_teacher_feature_shapes(teacher_weights: Path) -> None:
    teacher = ResNet18Teacher()
    teacher.load_weights(teacher_weights)
    assert bool(teacher.pretrained)
    with torch.no_grad():
        features = teacher(torch.rand(2, 3, 64, 96))
    assert [tuple(f.shape) for f in features] == [(2, 64, 16, 24), (2, 128, 8, 12), (2, 256, 4, 6)]


def test_teacher_weights_pth_and_safetensors_give_identical_features(teacher_weights: Path, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    state = torch.load(teacher_weights, map_location="cpu", weights_only=True)
    pth, safetensors = tmp_path / "teacher.pth", tmp_path / "teacher.safetensors"
    torch.save(state, pth)
    save_file({k: v.contiguous() for k, v in state.items()}, str(safetensors))
    from_pth, from_safetensors = ResNet18Teacher(), ResNet18Teacher()
    from_pth.load_weights(pth)
    from_safetensors.load_weights(str(safetensors))
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(from_pth(images), from_safetensors(images), strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    # and the loaded values are the file's values, not a fresh initialisation
    torch.testing.assert_close(from_pth.layer3[1].conv2.weight, state["layer3.1.conv2.weight"], rtol=0, atol=0)


def test_teacher_weights_wrapped_and_prefixed_state_dict(teacher_weights: Path, tmp_path: Path) -> None:
    state = torch.load(teacher_weights, map_location="cpu", weights_only=True)
    path = tmp_path / "wrapped.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    teacher = ResNet18Teacher()
    teacher.load_weights(path)
    torch.testing.assert_close(teacher.conv1.weight, state["conv1.weight"], rtol=0, atol=0)


def test_teacher_weights_missing_layer3_names_the_missing_keys(teacher_weights: Path, tmp_path: Path) -> None:
    state = torch.load(teacher_weights, map_location="cpu", weights_only=True)
    path = tmp_path / "no_layer3.pth"
    torch.save({k: v for k, v in state.items() if not k.startswith("layer3.")}, path)
    teacher = ResNet18Teacher()
    with pytest.raises(TeacherWeightsError, match=r"layer3\.0\.") as info:
        teacher.load_weights(path)
    assert str(path) in str(info.value)
    assert not bool(teacher.pretrained)


def test_teacher_weights_of_another_architecture_raise(tmp_path: Path) -> None:
    from torchvision.models import resnet34

    # ResNet-34 has the same key prefixes and the same shapes for blocks 0 and 1, plus extra blocks
    path = tmp_path / "resnet34.pth"
    torch.save(resnet34(weights=None).state_dict(), path)
    with pytest.raises(TeacherWeightsError, match=r"layer1\.2\."):
        ResNet18Teacher().load_weights(path)


def test_teacher_weights_wrong_shapes_raise(teacher_weights: Path, tmp_path: Path) -> None:
    state = torch.load(teacher_weights, map_location="cpu", weights_only=True)
    state["layer2.0.conv1.weight"] = torch.zeros(32, 64, 3, 3)  # ResNet-18 has 128 output channels here
    path = tmp_path / "narrow.pth"
    torch.save(state, path)
    teacher = ResNet18Teacher()
    with pytest.raises(TeacherWeightsError, match="do not fit ResNet-18"):
        teacher.load_weights(path)
    assert not bool(teacher.pretrained)


class _Payload:
    """An arbitrary Python object: ``weights_only`` loading must not unpickle it."""


def test_teacher_weights_refuses_pickled_objects(tmp_path: Path) -> None:
    path = tmp_path / "pickled.pth"
    torch.save({"conv1.weight": torch.zeros(1), "meta": _Payload()}, path)
    with pytest.raises(TeacherWeightsError, match=r"pickled\.pth"):
        read_state_dict(path)


def test_teacher_weights_missing_file() -> None:
    with pytest.raises(FileNotFoundError, match=r"does_not_exist\.pth"):
        ResNet18Teacher().load_weights("/nonexistent/does_not_exist.pth")


def test_teacher_imagenet_offline_without_cache_gives_one_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub = tmp_path / "empty_torch_home" / "hub"
    monkeypatch.setenv("TORCH_HOME", str(hub.parent))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)  # restored after the test
    torch.hub.set_dir(str(hub))
    attempts = []

    def no_network(*args, **kwargs):
        attempts.append(args)
        raise urllib.error.URLError("network is unreachable (simulated)")

    monkeypatch.setattr(torch.hub, "urlopen", no_network)  # torch.hub.download_url_to_file's only network access
    teacher = ResNet18Teacher()
    with pytest.raises(TeacherWeightsError) as info:
        teacher.load_weights("imagenet")
    message = str(info.value)
    assert attempts, "the weights should have been looked up in the (empty) cache and then downloaded"
    assert "teacher_weights" in message  # fix 1: a local file
    assert str(hub / "checkpoints" / TORCHVISION_FILE) in message  # fix 2: the hub cache path
    assert "TORCH_HOME" in message
    assert isinstance(info.value.__cause__, OSError)
    assert not bool(teacher.pretrained)


def test_teacher_imagenet_from_the_torch_hub_cache(
    teacher_weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file in the hub cache is used without any network access (the offline fix the error message names)."""
    from torchvision.models import resnet18

    hub = tmp_path / "hub"
    (hub / "checkpoints").mkdir(parents=True)
    # torchvision checks the file name's hash prefix only when downloading, so any complete ResNet-18 works here
    full = resnet18(weights=None).state_dict()
    full.update(torch.load(teacher_weights, map_location="cpu", weights_only=True))
    torch.save(full, hub / "checkpoints" / TORCHVISION_FILE)
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    torch.hub.set_dir(str(hub))

    def no_network(*args, **kwargs):
        raise AssertionError("no download expected when the cache holds the file")

    monkeypatch.setattr(torch.hub, "urlopen", no_network)
    teacher = ResNet18Teacher()
    teacher.load_weights("imagenet")
    assert bool(teacher.pretrained)
    torch.testing.assert_close(teacher.layer2[0].conv1.weight, full["layer2.0.conv1.weight"], rtol=0, atol=0)


def test_normalize_constant_matches_imagenet() -> None:
    # sanity of the numbers the model normalises with (ImageNet mean/std): a mean-coloured image maps to zero
    from anomalib_destseg import DeSTSegModel

    model = DeSTSegModel()
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1).expand(1, 3, 2, 2)
    torch.testing.assert_close(model.normalize(mean), torch.zeros(1, 3, 2, 2))
    one = model.normalize(torch.ones(1, 3, 1, 1)).flatten()
    expected = [(1 - m) / s for m, s in zip((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), strict=True)]
    assert all(math.isclose(a, b, rel_tol=1e-6) for a, b in zip(one.tolist(), expected, strict=True))
