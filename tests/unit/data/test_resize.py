"""Resizing as the reference: antialiased bilinear images (PIL's filter), bilinear + 0.5 threshold for masks."""

from pathlib import Path

import numpy as np
import pytest
import torch
from anomalib.data import ImageBatch
from PIL import Image
from torch.nn import functional as F  # noqa: N812
from torchvision import tv_tensors
from torchvision.transforms.v2 import Compose, InterpolationMode, Normalize, Resize

from anomalib_destseg import DeSTSeg
from anomalib_destseg.data.resize import (
    AntialiasedPreProcessor,
    AntialiasedResize,
    ReferenceResize,
    antialiased_weights,
    resize_masks,
)


@pytest.mark.parametrize(
    ("in_size", "out_size"),
    [((900, 900), (256, 256)), ((700, 1024), (128, 96)), ((64, 64), (64, 64)), ((50, 70), (96, 128))],
)
def test_antialiased_resize_equals_torch_antialias(in_size: tuple[int, int], out_size: tuple[int, int]) -> None:
    """The exportable matrix form computes torch's antialiased bilinear resize, shrinking and enlarging."""
    images = torch.rand(2, 3, *in_size)
    expected = F.interpolate(images, size=out_size, mode="bilinear", align_corners=False, antialias=True)
    assert (AntialiasedResize(out_size)(images) - expected).abs().max().item() < 1e-5


def test_antialiased_weights_hand_computed() -> None:
    """4 -> 2 pixels: scale 2, triangle of half-width 2 centred at 1 and 3 (pixel centres 0.5 .. 3.5)."""
    # output 0, centre 1.0: distances 0.5, 0.5, 1.5, 2.5 -> 1 - d/2 = 0.75, 0.75, 0.25, 0 -> / 1.75
    expected = torch.tensor([[0.75, 0.75, 0.25, 0.0], [0.0, 0.25, 0.75, 0.75]]) / 1.75
    assert torch.allclose(antialiased_weights(4, 2, torch.zeros(())), expected)
    assert torch.equal(antialiased_weights(3, 3, torch.zeros(())), torch.eye(3))  # same size: identity


def _smooth_test_image(size: int = 900) -> np.ndarray:
    rng = np.random.default_rng(0)
    coarse = rng.uniform(0, 255, (3, 30, 30)).astype(np.float32)
    image = F.interpolate(torch.from_numpy(coarse)[None], size=(size, size), mode="bicubic")[0]
    image = image + torch.from_numpy(rng.normal(0, 12, (3, size, size)).astype(np.float32))  # fine texture
    return image.clamp(0, 255).round().byte().permute(1, 2, 0).numpy()


def test_default_pre_processor_matches_pil_bilinear_at_900_to_256() -> None:
    """The reference resizes with PIL's bilinear filter: the default pre-processor is within 2e-3 of it."""
    array = _smooth_test_image()
    pil = torch.from_numpy(np.asarray(Image.fromarray(array).resize((256, 256), Image.Resampling.BILINEAR)))
    pil = pil.permute(2, 0, 1).float() / 255
    image = torch.from_numpy(array).permute(2, 0, 1).float()[None] / 255
    pre_processor = DeSTSeg.configure_pre_processor((256, 256))
    lightning = pre_processor.transform(image)[0]
    exported = pre_processor(image)[0]  # what Engine.export traces
    assert (lightning - pil).abs().mean().item() < 2e-3
    assert (exported - lightning).abs().max().item() < 1e-5
    plain = F.interpolate(image, size=(256, 256), mode="bilinear", align_corners=False)[0]
    assert (plain - pil).abs().mean().item() > 2 * (lightning - pil).abs().mean().item()  # what antialiasing buys


def test_resize_masks_hand_computed() -> None:
    """8 -> 4 pixels: per axis, output 0 weighs input pixels 0, 1, 2 by (0.75, 0.75, 0.25) / 1.75."""
    mask = torch.zeros(1, 8, 8, dtype=torch.bool)
    mask[0, 0:2, 0:2] = True  # output (0, 0): (1.5 / 1.75)^2 = 0.73 >= 0.5; output (0, 1): 0.86 * 0.14 < 0.5
    resized = resize_masks(mask, (4, 4))
    assert resized.dtype == torch.bool
    assert resized[0].nonzero().tolist() == [[0, 0]]
    mask[0, 0:2, 0:2] = False
    mask[0, 1, 1] = True  # one pixel: at most (0.75 / 1.75)^2 = 0.18 < 0.5 anywhere -> dropped
    assert not resize_masks(mask, (4, 4)).any()
    wrapped = tv_tensors.Mask(torch.ones(2, 6, 6, dtype=torch.bool))
    assert isinstance(resize_masks(wrapped, (3, 3)), tv_tensors.Mask)


def test_pre_processor_resizes_images_with_antialiasing_and_masks_as_the_paper() -> None:
    images = torch.rand(2, 3, 90, 120)
    masks = torch.zeros(2, 90, 120, dtype=torch.bool)
    masks[0, 10:40, 20:23] = True  # a thin scratch
    batch = ImageBatch(image=images.clone(), gt_mask=tv_tensors.Mask(masks), gt_label=torch.tensor([1, 0]))
    pre_processor = DeSTSeg.configure_pre_processor((64, 64))
    assert isinstance(pre_processor, AntialiasedPreProcessor)
    pre_processor.on_test_batch_start(None, None, batch, 0)
    expected = F.interpolate(images, size=(64, 64), mode="bilinear", align_corners=False, antialias=True)
    assert (batch.image - expected).abs().max().item() < 1e-5
    assert torch.equal(batch.gt_mask, resize_masks(masks, (64, 64)))


def test_pre_processor_keeps_normalize_and_refuses_crops() -> None:
    transform = Compose([Resize((32, 32), antialias=True), Normalize(mean=[0.5] * 3, std=[0.5] * 3)])
    pre_processor = AntialiasedPreProcessor(transform)
    images = torch.rand(1, 3, 50, 50)
    expected = (F.interpolate(images, size=(32, 32), mode="bilinear", antialias=True) - 0.5) / 0.5
    assert (pre_processor(images) - expected).abs().max().item() < 1e-5
    from torchvision.transforms.v2 import CenterCrop

    with pytest.raises(ValueError, match="CenterCrop"):
        AntialiasedPreProcessor(Compose([Resize((40, 40)), CenterCrop(32)]))


def test_pre_processor_checkpoints_store_a_plain_resize_and_restore_the_reference_one() -> None:
    pre_processor = DeSTSeg.configure_pre_processor((96, 64))
    config = pre_processor.checkpoint_config()
    assert config["transform"]["init_args"]["transforms"][0]["class_path"] == "torchvision.transforms.v2.Resize"
    restored = DeSTSeg.configure_pre_processor()
    restored.load_checkpoint_config(config)
    assert isinstance(restored.transform.transforms[0], ReferenceResize)
    assert restored.transform.transforms[0].size == [96, 64]
    assert restored(torch.rand(1, 3, 200, 100)).shape == (1, 3, 96, 64)
    old = AntialiasedPreProcessor(Compose([Resize((64, 64), antialias=False)]))  # release 0.1.0's transform
    assert type(old.transform.transforms[0]) is Resize and not old.export_transform[0].antialias


def test_datasets_resize_masks_as_the_paper(tmp_path: Path) -> None:
    """anomalib's datamodules resize every image and mask with the model's Resize, before batching."""
    from anomalib.data import MVTecAD

    from anomalib_destseg.data import make_synthetic_dataset

    make_synthetic_dataset(tmp_path, image_size=96, num_train=2, num_test_good=1, num_test_defect=3)
    datamodule = MVTecAD(root=tmp_path, category="synthetic", num_workers=0)
    datamodule.setup()
    full_size = [datamodule.test_data[index] for index in range(len(datamodule.test_data))]
    transform = DeSTSeg.configure_pre_processor((64, 64)).transform
    MVTecAD._update_subset_augmentations(datamodule.test_data, None, transform)  # what setup does with a model
    for index, original in enumerate(full_size):
        item = datamodule.test_data[index]
        expected = F.interpolate(original.image[None], size=(64, 64), mode="bilinear", antialias=True)[0]
        assert (item.image - expected).abs().max() < 1e-5
        assert torch.equal(item.gt_mask, resize_masks(original.gt_mask, (64, 64)))
    masks = [tv_tensors.Mask(item.gt_mask) for item in full_size if item.gt_mask.any()]
    assert masks
    differ = [not torch.equal(Resize((64, 64))(mask), resize_masks(mask, (64, 64))) for mask in masks]
    assert any(differ)  # nearest-neighbour would give other masks here


def test_textures_are_resized_with_pil_bilinear(tmp_path: Path) -> None:
    from anomalib_destseg.data.anomaly_generator import _read_texture

    array = _smooth_test_image(300)
    Image.fromarray(array).save(tmp_path / "texture.png")
    expected = np.asarray(Image.fromarray(array).resize((64, 48), Image.Resampling.BILINEAR))
    texture = _read_texture(tmp_path / "texture.png", 48, 64)
    assert texture.shape == (3, 48, 64)
    assert np.array_equal(texture.permute(1, 2, 0).numpy(), expected)


def test_anomalib_peers_transforms_get_the_reference_resize_too() -> None:
    from anomalib.models import Patchcore

    transform = AntialiasedPreProcessor(Patchcore.configure_pre_processor(image_size=(64, 64)).transform).transform
    assert [type(step).__name__ for step in transform.transforms] == ["ReferenceResize", "Normalize"]
    assert type(AntialiasedPreProcessor(Resize((32, 32), antialias=True)).transform) is ReferenceResize
    nearest = Resize((32, 32), interpolation=InterpolationMode.NEAREST)
    assert AntialiasedPreProcessor(nearest).transform is nearest  # only antialiased bilinear resizes are replaced
