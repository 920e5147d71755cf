"""The authors' released checkpoints load into DeSTSeg: every tensor by name, strict checks, same outputs.

Agreement is checked against :func:`reference_forward`, written here from the reference's architecture description
(../shared/docs/destseg.md) and its checkpoint key names: it reads the reference-named tensors directly, so a tensor
mapped to the wrong place changes its output.
"""

import json
from pathlib import Path

import pytest
import torch
from helpers import SHARED, TINY_SIZE, quiet_cpu_engine
from torch.nn import functional as F  # noqa: N812

from anomalib_destseg import DeSTSeg, DeSTSegModel
from anomalib_destseg.destseg.reference_checkpoint import (
    ReferenceCheckpointError,
    main,
    model_key,
    reference_key,
)

KEY_LIST = SHARED / "docs" / "reference_checkpoint_keys.json"
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


# --- the reference's forward pass, from its tensor names ---------------------------------------------------------
def _bn(x: torch.Tensor, s: dict, p: str) -> torch.Tensor:
    return F.batch_norm(
        x, s[p + "running_mean"], s[p + "running_var"], s[p + "weight"], s[p + "bias"], False, 0.0, 1e-5
    )


def _conv(x: torch.Tensor, s: dict, p: str, stride: int = 1, padding: int = 0, dilation: int = 1) -> torch.Tensor:
    return F.conv2d(x, s[p + "weight"], s.get(p + "bias"), stride, padding, dilation)


def _block(x: torch.Tensor, s: dict, p: str, stride: int = 1) -> torch.Tensor:
    out = F.relu(_bn(_conv(x, s, p + "conv1.", stride, 1), s, p + "bn1."))
    out = _bn(_conv(out, s, p + "conv2.", 1, 1), s, p + "bn2.")
    if p + "downsample.0.weight" in s:
        x = _bn(_conv(x, s, p + "downsample.0.", stride), s, p + "downsample.1.")
    return F.relu(out + x)


def _resnet(x: torch.Tensor, s: dict, p: str, layers: int) -> list[torch.Tensor]:
    x = F.max_pool2d(F.relu(_bn(_conv(x, s, p + "conv1.", 2, 3), s, p + "bn1.")), 3, 2, 1)
    features = []
    for layer in range(1, layers + 1):
        x = _block(_block(x, s, f"{p}layer{layer}.0.", 1 if layer == 1 else 2), s, f"{p}layer{layer}.1.")
        features.append(x)
    return features


def _up(x: torch.Tensor, size: torch.Size) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def _n(x: torch.Tensor) -> torch.Tensor:
    return x / (torch.sqrt((x**2).sum(dim=1, keepdim=True)) + 1e-12)


def _reference_features(s: dict, images: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Teacher and student features (finest first) of the reference model with reference-named tensors ``s``."""
    x = (images - MEAN) / STD
    teacher = _resnet(x, s, "teacher_net.encoder.", 3)
    e4 = _resnet(x, s, "student_net.encoder.", 4)[3]
    d = _block(_block(e4, s, "student_net.decoder_layer4.0."), s, "student_net.decoder_layer4.1.")
    student = []
    for level, target in ((3, teacher[2]), (2, teacher[1]), (1, teacher[0])):
        d = _up(d, target.shape[-2:])
        d = _block(_block(d, s, f"student_net.decoder_layer{level}.0."), s, f"student_net.decoder_layer{level}.1.")
        student.insert(0, d)
    return teacher, student


def _top_mean(anomaly_map: torch.Tensor, top_k: int) -> torch.Tensor:
    return anomaly_map.flatten(1).sort(dim=1, descending=True).values[:, :top_k].mean(dim=1)


def reference_dest_forward(s: dict, images: torch.Tensor, top_k: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference's second output (DeST) at the input's size, and its image score, at inference.

    At inference the reference passes the same image as corrupted and clean input: per level, 1 minus the channel sum
    of the L2-normalised student and teacher features; every level (the first included) resized bilinearly to the
    first level's size, the three stacked and multiplied; resized to the input like the segmentation map; score =
    mean of the top ``top_k`` values of the sorted map.
    """
    teacher, student = _reference_features(s, images)
    size = teacher[0].shape[-2:]
    levels = [_up(1 - (_n(st) * _n(t)).sum(dim=1, keepdim=True), size) for t, st in zip(teacher, student, strict=True)]
    dest = _up(torch.cat(levels, dim=1).prod(dim=1, keepdim=True), images.shape[-2:])
    return dest, _top_mean(dest, top_k)


def reference_forward(s: dict, images: torch.Tensor, top_k: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
    """Anomaly map (input size) and image score of the reference model with reference-named tensors ``s``."""
    teacher, student = _reference_features(s, images)
    size = teacher[0].shape[-2:]
    features = torch.cat([_up(-_n(t) * _n(st), size) for t, st in zip(teacher, student, strict=True)], dim=1)
    r = _block(_block(features, s, "segmentation_net.res.0."), s, "segmentation_net.res.1.")
    aspp = "segmentation_net.head.0.aspp_feature_extractors."
    pooled = F.relu(_bn(_conv(F.adaptive_avg_pool2d(r, 1), s, aspp + "0.1.conv."), s, aspp + "0.1.norm."))
    branches = [_up(pooled, r.shape[-2:])]
    for index, rate in ((1, 6), (2, 12), (3, 18)):
        branches.append(F.relu(_bn(_conv(r, s, f"{aspp}{index}.conv.", 1, rate, rate), s, f"{aspp}{index}.norm.")))
    fusion = "segmentation_net.head.0.aspp_fusion_layer."
    a = F.relu(_bn(_conv(torch.cat(branches, dim=1), s, fusion + "conv.", 1, 1), s, fusion + "norm."))
    h = F.relu(_bn(_conv(a, s, "segmentation_net.head.1.", 1, 1), s, "segmentation_net.head.2."))
    anomaly_map = _up(torch.sigmoid(_conv(h, s, "segmentation_net.head.4.")), images.shape[-2:])
    return anomaly_map, _top_mean(anomaly_map, top_k)


# --- reference-like state dicts ----------------------------------------------------------------------------------
def _random_tensor(key: str, shape: list[int], generator: torch.Generator) -> torch.Tensor:
    """Plausible values: He-scaled convolutions, BatchNorm near identity, a counter for num_batches_tracked."""
    if key.endswith("num_batches_tracked"):
        return torch.tensor(5000)
    if key.endswith(("running_var", ".weight")) and len(shape) == 1:
        return 0.8 + 0.4 * torch.rand(shape, generator=generator)
    if len(shape) == 1:  # BN bias and running mean, the final conv's bias
        return 0.1 * torch.randn(shape, generator=generator)
    fan_in = shape[1] * shape[2] * shape[3]
    return torch.randn(shape, generator=generator) * (2 / fan_in) ** 0.5


def _reference_state_from_model() -> dict[str, torch.Tensor]:
    """A reference-named state dict with the shapes of our model (works without the shared key list)."""
    generator = torch.Generator().manual_seed(0)
    names = {key: reference_key(key) for key in DeSTSegModel().state_dict() if key != "teacher.pretrained"}
    shapes = {key: list(value.shape) for key, value in DeSTSegModel().state_dict().items()}
    return {name: _random_tensor(name, shapes[key], generator) for key, name in names.items()}


@pytest.fixture(scope="module")
def key_list() -> list[dict]:
    if not KEY_LIST.is_file():
        pytest.skip(f"the reference checkpoint's key list is not at {KEY_LIST}")
    return json.loads(KEY_LIST.read_text())["keys"]


@pytest.fixture(scope="module")
def reference_file(tmp_path_factory: pytest.TempPathFactory, key_list: list[dict]) -> Path:
    """A file like DeSTSeg_MVTec_5000_<category>.pckl: the 392 keys and shapes of the list, random values."""
    generator = torch.Generator().manual_seed(0)
    state = {entry["key"]: _random_tensor(entry["key"], entry["shape"], generator) for entry in key_list}
    path = tmp_path_factory.mktemp("reference") / "DeSTSeg_MVTec_5000_bottle.pckl"
    torch.save(state, path)
    return path


# --- mapping -----------------------------------------------------------------------------------------------------
def test_every_reference_tensor_has_a_place_of_the_same_shape(key_list: list[dict]) -> None:
    ours = DeSTSegModel().state_dict()
    assert len(key_list) == 392
    mapped = {model_key(entry["key"]): entry["shape"] for entry in key_list}
    assert set(mapped) == set(ours) - {"teacher.pretrained"}
    assert all(list(ours[key].shape) == shape for key, shape in mapped.items())
    assert all(reference_key(model_key(entry["key"])) == entry["key"] for entry in key_list)


def test_imported_model_matches_the_reference_forward(reference_file: Path) -> None:
    model = DeSTSeg.from_reference_checkpoint(reference_file).eval()
    state = torch.load(reference_file, weights_only=True)
    images = torch.rand(2, 3, 64, 96, generator=torch.Generator().manual_seed(1))
    expected_map, expected_score = reference_forward(state, images)
    with torch.no_grad():
        output = model.model(images)
    assert output.anomaly_map.std() > 1e-3  # not a saturated, constant map
    assert (output.anomaly_map - expected_map).abs().max().item() < 1e-5
    assert (output.pred_score - expected_score).abs().max().item() < 1e-5
    assert bool(model.model.teacher.pretrained)
    assert model.training_progress() == (5000, 5000)  # exports do not warn


def test_the_dest_map_matches_the_reference_definition(tmp_path: Path) -> None:
    """Same weights: the DeST map and score (output or second map) equal the reference's second output within 1e-5."""
    state = _reference_state_from_model()
    path = _save(state, tmp_path / "reference.pckl")
    images = torch.rand(2, 3, 64, 96, generator=torch.Generator().manual_seed(2))
    expected_map, expected_score = reference_dest_forward(state, images)
    assert expected_map.std() > 1e-3  # the levels disagree: not a constant map
    model = DeSTSeg.from_reference_checkpoint(path, output_map="dest").eval()
    assert model.model.output_map == "dest"
    with torch.no_grad():
        output = model.model(images)
        both = model.model.predict_maps(images)
    for actual in (output, both["dest"]):
        assert actual.anomaly_map.shape == (2, 1, 64, 96)
        assert (actual.anomaly_map - expected_map).abs().max().item() < 1e-5
        assert (actual.pred_score - expected_score).abs().max().item() < 1e-5
    segmentation_map, segmentation_score = reference_forward(state, images)  # the other map of the same pass
    assert (both["segmentation"].anomaly_map - segmentation_map).abs().max().item() < 1e-5
    assert (both["segmentation"].pred_score - segmentation_score).abs().max().item() < 1e-5


def test_import_works_without_the_key_list(tmp_path: Path) -> None:
    path = tmp_path / "reference.pckl"
    state = _reference_state_from_model()
    torch.save({f"module.{key}": value for key, value in state.items()}, path)  # as saved from DataParallel
    model = DeSTSeg.from_reference_checkpoint(path).eval()
    images = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert (model.model(images).anomaly_map - reference_forward(state, images)[0]).abs().max().item() < 1e-5


# --- refusals ------------------------------------------------------------------------------------------------------
def _save(state: dict, path: Path) -> Path:
    torch.save(state, path)
    return path


def test_missing_unexpected_and_misshaped_tensors_are_named(tmp_path: Path) -> None:
    state = _reference_state_from_model()
    missing = dict(state)
    del missing["segmentation_net.head.4.weight"]
    with pytest.raises(ReferenceCheckpointError, match=r"1 missing tensor\(s\): segmentation_net\.head\.4\.weight"):
        DeSTSeg.from_reference_checkpoint(_save(missing, tmp_path / "missing.pckl"))
    extra = {**state, "student_net.decoder_layer5.0.conv1.weight": torch.zeros(1)}
    with pytest.raises(ReferenceCheckpointError, match=r"unexpected tensor\(s\): student_net\.decoder_layer5"):
        DeSTSeg.from_reference_checkpoint(_save(extra, tmp_path / "extra.pckl"))
    wrong = {**state, "segmentation_net.res.0.conv1.weight": torch.zeros(256, 576, 3, 3)}  # e.g. PFADSeg's input
    with pytest.raises(
        ReferenceCheckpointError,
        match=r"wrong shape: segmentation_net\.res\.0\.conv1\.weight \(256, 576, 3, 3\) "
        r"\(expected \(256, 448, 3, 3\)\)",
    ):
        DeSTSeg.from_reference_checkpoint(_save(wrong, tmp_path / "wrong.pckl"))


def test_files_that_are_not_state_dicts_are_refused(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not found"):
        DeSTSeg.from_reference_checkpoint(tmp_path / "absent.pckl")
    torch.save({"model": torch.nn.Linear(2, 2)}, tmp_path / "pickled.pckl")  # a pickled module: never unpickled
    with pytest.raises(ReferenceCheckpointError, match=r"not a plain torch\.save file of tensors") as refused:
        DeSTSeg.from_reference_checkpoint(tmp_path / "pickled.pckl")
    _assert_one_safe_line(str(refused.value), tmp_path / "pickled.pckl")
    (tmp_path / "text.pckl").write_text("not a checkpoint")
    with pytest.raises(ReferenceCheckpointError, match=r"not a torch\.save file") as refused:
        DeSTSeg.from_reference_checkpoint(tmp_path / "text.pckl")
    _assert_one_safe_line(str(refused.value), tmp_path / "text.pckl")
    torch.save([torch.zeros(1)], tmp_path / "list.pckl")
    with pytest.raises(ReferenceCheckpointError, match="does not hold a state dict"):
        DeSTSeg.from_reference_checkpoint(tmp_path / "list.pckl")


def _assert_one_safe_line(message: str, path: Path) -> None:
    """Our own message: one line naming the file and what was expected, without torch's advice."""
    assert "\n" not in message
    assert str(path) in message and "DeSTSeg reference checkpoint" in message
    assert "weights_only" not in message and "file an issue" not in message


@pytest.mark.parametrize("content", [b"not a checkpoint\n", bytes(range(256)) * 8])
def test_the_converter_refuses_a_file_that_is_not_a_checkpoint_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture, content: bytes
) -> None:
    source = tmp_path / "notes.pckl"
    source.write_bytes(content)
    assert main([str(source), str(tmp_path / "out.ckpt")]) == 2
    captured = capsys.readouterr()
    (line,) = captured.err.splitlines()  # nothing else: no traceback, no torch warning
    assert line.startswith(f"error: Could not read {source} as a DeSTSeg reference checkpoint")
    assert "weights_only" not in captured.err + captured.out
    assert not (tmp_path / "out.ckpt").exists()


# --- the command and anomalib ------------------------------------------------------------------------------------
def test_the_converter_writes_a_checkpoint_that_anomalib_tests(tiny_dataset: Path, tmp_path: Path, capsys) -> None:
    from anomalib.data import MVTecAD

    source = _save(_reference_state_from_model(), tmp_path / "DeSTSeg_MVTec_5000_synthetic.pckl")
    output = tmp_path / "converted.ckpt"
    assert main([str(source), str(output), "--image-size", str(TINY_SIZE)]) == 0
    assert "wrote" in capsys.readouterr().out
    loaded = DeSTSeg.load_from_checkpoint(output).eval()
    images = torch.rand(1, 3, TINY_SIZE, TINY_SIZE)
    with torch.no_grad():
        expected = reference_forward(_reference_state_from_model(), images)[0]
        assert (loaded.model(images).anomaly_map - expected).abs().max().item() < 1e-5
    # an existing output is kept unless --overwrite; a bad file exits 2 and writes nothing
    with pytest.raises(SystemExit):
        main([str(source), str(output)])
    (tmp_path / "bad.pckl").write_text("x")
    assert main([str(tmp_path / "bad.pckl"), str(tmp_path / "bad.ckpt")]) == 2
    assert not (tmp_path / "bad.ckpt").exists()
    datamodule = MVTecAD(root=tiny_dataset, category="synthetic", eval_batch_size=4, num_workers=0)
    model = DeSTSeg(visualizer=False)  # as `anomalib test --model anomalib_destseg.DeSTSeg --ckpt_path ...` builds it
    metrics = quiet_cpu_engine(tmp_path).test(model, datamodule=datamodule, ckpt_path=output)[0]
    assert 0 <= metrics["image_AUROC"] <= 1
    assert model.input_size == (TINY_SIZE, TINY_SIZE)
