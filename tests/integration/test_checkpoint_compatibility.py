"""Checkpoints written by release 0.1.0 (before the redesign) still load, test and export.

A 140 MB checkpoint is not kept in the repository: ``tests/data/checkpoints/*_v0.1.0.json`` holds everything of two
real 0.1.0 checkpoints (DeSTSeg and PFADSeg, trained 1 + 1 steps at 64x64 by commit a63c267) except the tensors'
values: their names, shapes and dtypes, and every scalar. The test fills the tensors in and loads the result.
"""

import json
from pathlib import Path

import pytest
import torch
from anomalib.data import MVTecAD
from helpers import REPO, quiet_cpu_engine

from anomalib_destseg import DeSTSeg, PFADSeg

SKELETONS = REPO / "tests" / "data" / "checkpoints"


def _rebuild(node: object, name: str = "") -> object:
    if isinstance(node, dict) and "__tensor__" in node:
        shape, dtype = node["__tensor__"], getattr(torch, node["dtype"])
        if "value" in node:
            return torch.tensor(node["value"], dtype=dtype).reshape(shape)
        if dtype == torch.uint8:  # a generator state
            return torch.get_rng_state()
        if name.endswith("running_var"):
            return torch.ones(shape, dtype=dtype)
        return (0.01 * torch.randn(shape)).to(dtype)
    if isinstance(node, dict) and "__dict__" in node:
        return {key: _rebuild(value, str(key)) for key, value in node["__dict__"]}
    if isinstance(node, dict) and "__list__" in node:
        return [_rebuild(value, name) for value in node["__list__"]]
    if isinstance(node, dict) and "__tuple__" in node:
        return tuple(_rebuild(value, name) for value in node["__tuple__"])
    return node


@pytest.fixture(params=[DeSTSeg, PFADSeg], ids=lambda cls: cls.__name__)
def old_checkpoint(request, tmp_path: Path) -> tuple[type, Path]:
    torch.manual_seed(0)
    skeleton = json.loads((SKELETONS / f"{request.param.__name__.lower()}_v0.1.0.json").read_text())
    path = tmp_path / "model.ckpt"
    torch.save(_rebuild(skeleton), path)
    return request.param, path


def test_a_release_0_1_0_checkpoint_loads_tests_and_exports(
    old_checkpoint: tuple[type, Path], tiny_dataset: Path, tmp_path: Path
) -> None:
    model_class, path = old_checkpoint
    model = model_class.load_from_checkpoint(path)
    assert model.hparams.student_steps == 1 and model.training_progress() == (2, 2)
    assert bool(model.model.teacher.pretrained)
    # 0.1.0 resized without antialiasing: the checkpoint's own transform is kept, in training and in export
    assert model.pre_processor.transform.transforms[0].antialias is False
    assert not model.pre_processor.export_transform[0].antialias
    datamodule = MVTecAD(root=tiny_dataset, category="synthetic", eval_batch_size=4, num_workers=0)
    metrics = quiet_cpu_engine(tmp_path).test(model_class(visualizer=False), datamodule=datamodule, ckpt_path=path)[0]
    assert 0 <= metrics["image_AUROC"] <= 1
    exported = model.to_torch(tmp_path / "export")
    assert exported.is_file()
