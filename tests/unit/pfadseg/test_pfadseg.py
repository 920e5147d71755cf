"""PFADSeg's torch model: shapes, fusion weights, switches, parameter counts, and a student that learns.

PFADSeg as an anomalib model (Engine, CLI, checkpoints) is tested with DeSTSeg in ``integration/test_models.py``.
"""

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from helpers import TINY_SIZE
from torch import nn

from anomalib_destseg import DeSTSegModel, PFADSeg, PFADSegModel
from anomalib_destseg.components import Stage, StudentCosineLoss
from anomalib_destseg.components.feature_ops import level_products
from anomalib_destseg.data import SyntheticAnomalyGenerator

SWITCHES = [
    ("teacher", "adaptive"),
    ("teacher", "concat"),
    ("student_encoder", "adaptive"),
    ("student_encoder", "concat"),
]


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Run this module's tests on one intra-op thread.

    On the shared 2-core machine two OpenMP threads spin against each other and cost about 10x the CPU time of one.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def count(*modules: nn.Module) -> int:
    return sum(p.numel() for module in modules for p in module.parameters())


def images(batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, TINY_SIZE, TINY_SIZE, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def model(teacher_weights: Path) -> PFADSegModel:
    torch.manual_seed(0)
    model = PFADSegModel()
    model.teacher.load_weights(teacher_weights)
    return model


# --- shapes and fusion weights ------------------------------------------------------------------------------------
def test_shapes_in_train_and_eval_mode(model: PFADSegModel) -> None:
    x = images()
    model.train()
    teacher, student = model.encode(x)
    assert (
        [tuple(s.shape) for s in student]
        == [tuple(t.shape) for t in teacher]
        == [
            (2, 64, 16, 16),
            (2, 128, 8, 8),
            (2, 256, 4, 4),
        ]
    )
    assert model.segmentation_features(teacher, student).shape == (2, 448 + 128, 16, 16)
    assert model(x).shape == (2, 1, 16, 16)
    model.eval()
    with torch.no_grad():
        output = model(x)
    assert output.anomaly_map.shape == (2, 1, TINY_SIZE, TINY_SIZE)
    assert output.pred_score.shape == (2,)
    assert ((output.anomaly_map >= 0) & (output.anomaly_map <= 1)).all()


def test_fusion_weights_are_a_per_pixel_distribution_over_levels(model: PFADSegModel) -> None:
    model.eval()
    x = images(seed=1)
    # Freshly built, the level-weight convolution is zero: equal weights.
    assert torch.allclose(model.fusion_weights(x), torch.full((2, 3, 16, 16), 1 / 3))
    logits = model.adaptive_fusion.weight_logits
    original = {name: value.clone() for name, value in logits.state_dict().items()}
    try:
        with torch.no_grad():
            nn.init.normal_(logits.weight, std=0.5)
            nn.init.normal_(logits.bias, std=0.5)
        weights = model.fusion_weights(x)
        assert weights.shape == (2, 3, 16, 16)
        assert (weights >= 0).all()
        torch.testing.assert_close(weights.sum(dim=1), torch.ones(2, 16, 16))
        assert weights.std(dim=(2, 3)).min() > 1e-4  # really per pixel, not one weight per image
        # A large bias towards one level makes the fused output that level's projection.
        teacher, student = model.encode(x)
        products = level_products(teacher, student)
        with torch.no_grad():
            logits.weight.zero_()
            logits.bias.copy_(torch.tensor([0.0, 50.0, 0.0]))
            fused = model.adaptive_fusion(products, size=(16, 16))
            only_level2 = model.adaptive_fusion._project(products, (16, 16))[1]
        torch.testing.assert_close(fused, only_level2)
    finally:
        logits.load_state_dict(original)


def test_fusion_weights_need_adaptive_fusion() -> None:
    with pytest.raises(RuntimeError, match="fusion='adaptive'"):
        PFADSegModel(fusion="concat").fusion_weights(images())


# --- parameter counts and switches --------------------------------------------------------------------------------
def test_parameter_counts_match_the_design(model: PFADSegModel) -> None:
    bottleneck = model.fusion_bottleneck
    fusion = count(*bottleneck.fusion_modules)
    assert fusion == pytest.approx(0.66e6, rel=0.01)
    assert count(bottleneck.bottleneck) == pytest.approx(11.0e6, rel=0.01)
    assert count(model.student_decoder) == pytest.approx(13.5e6, rel=0.01)
    assert count(*model.student_modules) == pytest.approx(25.2e6, rel=0.01)
    assert count(*model.student_modules) == count(bottleneck, model.student_decoder)
    # The adaptive fusion: three 1x1 conv+BN projections to 128 and a 1x1 conv 384->3 with bias.
    assert count(model.adaptive_fusion) == (64 + 128 + 256) * 128 + 3 * 2 * 128 + 384 * 3 + 3
    assert model.segmentation_network.residual[0].conv1.in_channels == 576
    assert not any(p.requires_grad for p in model.teacher.parameters())


@pytest.mark.parametrize(("decoder_input", "fusion"), SWITCHES)
def test_switches_build_run_and_train_the_expected_parameters(decoder_input: str, fusion: str) -> None:
    torch.manual_seed(0)
    model = PFADSegModel(decoder_input=decoder_input, fusion=fusion)
    names = {name.split(".")[0] for name, _ in model.named_parameters()}
    assert ("fusion_bottleneck" in names) == (decoder_input == "teacher")
    assert ("student_encoder" in names) == (decoder_input == "student_encoder")
    assert ("adaptive_fusion" in names) == (fusion == "adaptive")
    assert model.student_reads_teacher == (decoder_input == "teacher")
    expected_in = 576 if fusion == "adaptive" else 448
    assert model.segmentation_network.residual[0].conv1.in_channels == expected_in

    # Stage 1: the student loss reaches exactly the student modules.
    model.set_stage(Stage.STUDENT)
    x = images()
    normalized = model.normalize(x)
    student = model.student_features(normalized, model.teacher(normalized))
    StudentCosineLoss()(student, model.teacher(model.normalize(images(seed=3)))).backward()
    student_parameters = {id(p) for module in model.student_modules for p in module.parameters()}
    for name, parameter in model.named_parameters():
        assert (parameter.grad is not None) == (id(parameter) in student_parameters), name
    model.zero_grad(set_to_none=True)

    # Stage 2: the segmentation output reaches exactly the stage-2 optimiser groups.
    model.set_stage("segmentation")
    assert all(module.training for module in model.segmentation_modules)
    assert not any(module.training for module in model.student_modules)
    with torch.no_grad():
        teacher, student = model.encode(x)
    model.segmentation_network(model.segmentation_features(teacher, student)).mean().backward()
    fast, slow = model.segmentation_parameter_groups()
    stage2 = {id(p) for p in [*fast, *slow]}
    assert len(stage2) == len(fast) + len(slow) == sum(1 for m in model.segmentation_modules for _ in m.parameters())
    for name, parameter in model.named_parameters():
        assert (parameter.grad is not None) == (id(parameter) in stage2), name
    if fusion == "adaptive":
        assert {id(p) for p in model.adaptive_fusion.parameters()} <= {id(p) for p in fast}

    model.eval()
    with torch.no_grad():
        assert model(x).anomaly_map.shape == (2, 1, TINY_SIZE, TINY_SIZE)


def test_student_encoder_with_concat_is_destseg_sized_and_teacher_mode_reads_the_teacher(teacher_weights: Path) -> None:
    ablation, destseg = PFADSegModel(decoder_input="student_encoder", fusion="concat"), DeSTSegModel()
    assert count(ablation) == count(destseg)
    assert count(*ablation.student_modules) == count(*destseg.student_modules)

    # The teacher-mode student depends on the teacher's weights; the student-encoder one does not.
    x = PFADSegModel().normalize(images())
    for decoder_input, depends in (("teacher", True), ("student_encoder", False)):
        torch.manual_seed(0)
        model = PFADSegModel(decoder_input=decoder_input).eval()
        with torch.no_grad():
            before = model.student_features(x)
            model.teacher.load_weights(teacher_weights)
            after = model.student_features(x)
        assert (not torch.equal(before[0], after[0])) == depends


@pytest.mark.parametrize(
    ("kwargs", "choices"),
    [
        ({"decoder_input": "encoder"}, ["'teacher'", "'student_encoder'"]),
        ({"fusion": "sum"}, ["'adaptive'", "'concat'"]),
    ],
)
def test_bad_switch_values_name_the_choices(kwargs: dict, choices: list[str]) -> None:
    for cls in (PFADSegModel, PFADSeg):
        with pytest.raises(ValueError, match=next(iter(kwargs))) as error:
            cls(**kwargs)
        assert all(choice in str(error.value) for choice in choices)
        assert repr(next(iter(kwargs.values()))) in str(error.value)


# --- learning -----------------------------------------------------------------------------------------------------
def test_student_loss_falls_on_a_toy_set(teacher_weights: Path, tiny_dataset: Path) -> None:
    from PIL import Image
    from torchvision.transforms.v2.functional import pil_to_tensor

    files = sorted((tiny_dataset / "synthetic" / "train" / "good").glob("*.png"))[:4]
    clean = torch.stack([pil_to_tensor(Image.open(f).convert("RGB")).float() / 255 for f in files])
    torch.manual_seed(0)
    corrupted, _ = SyntheticAnomalyGenerator(texture_dir=None)(clean)
    module = PFADSeg(teacher_weights=str(teacher_weights))
    module.model.teacher.load_weights(teacher_weights)
    model = module.model
    model.set_stage(Stage.STUDENT)
    optimizer, _ = module.configure_optimizers()
    with torch.no_grad():
        target = model.teacher(model.normalize(clean))
    losses = []
    for _ in range(15):
        normalized = model.normalize(corrupted)
        loss = module.student_loss(model.student_features(normalized, model.teacher(normalized)), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-3:]) / 3 < 0.6 * losses[0], losses
