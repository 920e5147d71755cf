"""Load the DeSTSeg authors' released checkpoints (one ``.pckl`` state dict per MVTec AD category) into anomalib.

The reference repository (apple/ml-destseg) links trained checkpoints named ``DeSTSeg_MVTec_5000_<category>.pckl``,
each the ``state_dict()`` of its model: 392 tensors under ``teacher_net.encoder.*``, ``student_net.encoder.*``,
``student_net.decoder_layer{1..4}.*``, ``segmentation_net.res.*`` and ``segmentation_net.head.*``. Every tensor has
a counterpart in :class:`~anomalib_destseg.DeSTSegModel` under another name (:data:`KEY_PREFIXES`); nothing is
left out and nothing is added. A file is read with ``torch.load(weights_only=True)`` (no code runs) and checked
strictly: missing, unexpected and mis-shaped tensors are all named in one error.

Python::

    model = DeSTSeg.from_reference_checkpoint("saved_model/DeSTSeg_MVTec_5000_bottle.pckl")
    Engine().test(model, datamodule=MVTecAD(category="bottle"))

Command line (writes an anomalib checkpoint for ``anomalib test/predict/export --ckpt_path``)::

    anomalib-destseg-import-reference saved_model/DeSTSeg_MVTec_5000_bottle.pckl bottle.ckpt

"""

import argparse
import sys
from collections.abc import Mapping
from pathlib import Path

import lightning
import torch

from anomalib_destseg.components.tensor_files import load_plain

KEY_PREFIXES: tuple[tuple[str, str], ...] = (
    ("teacher_net.encoder.", "teacher."),
    ("student_net.encoder.conv1.", "student_encoder.stem.0."),
    ("student_net.encoder.bn1.", "student_encoder.stem.1."),
    ("student_net.encoder.", "student_encoder."),
    ("student_net.decoder_layer", "student_decoder.stage"),
    ("segmentation_net.res.", "segmentation_network.residual."),
    ("segmentation_net.head.0.aspp_feature_extractors.0.1.conv.", "segmentation_network.aspp.pool_branch.1."),
    ("segmentation_net.head.0.aspp_feature_extractors.0.1.norm.", "segmentation_network.aspp.pool_branch.2."),
    *(
        (
            f"segmentation_net.head.0.aspp_feature_extractors.{branch}.{part}.",
            f"segmentation_network.aspp.dilated_branches.{branch - 1}.{index}.",
        )
        for branch in (1, 2, 3)
        for index, part in enumerate(("conv", "norm"))
    ),
    ("segmentation_net.head.0.aspp_fusion_layer.conv.", "segmentation_network.aspp.project.0."),
    ("segmentation_net.head.0.aspp_fusion_layer.norm.", "segmentation_network.aspp.project.1."),
    ("segmentation_net.head.1.", "segmentation_network.head.0.0."),
    ("segmentation_net.head.2.", "segmentation_network.head.0.1."),
    ("segmentation_net.head.4.", "segmentation_network.head.1."),
)
"""(reference prefix, :class:`DeSTSegModel` prefix), most specific first; the rest of a key is the same in both."""

TEACHER_LOADED = "teacher.pretrained"
"""The model's flag for a teacher with ImageNet weights: set by the import (the checkpoint holds the teacher)."""


class ReferenceCheckpointError(ValueError):
    """A file is not a DeSTSeg reference checkpoint; the message names what is wrong."""


def _rename(key: str, prefixes: tuple[tuple[str, str], ...]) -> str | None:
    for source, target in prefixes:
        if key.startswith(source):
            return target + key.removeprefix(source)
    return None


def model_key(reference_key: str) -> str | None:
    """The :class:`DeSTSegModel` state-dict key of a reference key (``None`` if it has none).

    Example:
        >>> model_key("segmentation_net.head.4.weight")
        'segmentation_network.head.1.weight'

    """
    return _rename(reference_key, KEY_PREFIXES)


def reference_key(key: str) -> str | None:
    """The reference key of a :class:`DeSTSegModel` state-dict key (``None`` if it has none).

    Example:
        >>> reference_key("student_decoder.stage3.0.conv1.weight")
        'student_net.decoder_layer3.0.conv1.weight'

    """
    return _rename(key, tuple((model, reference) for reference, model in KEY_PREFIXES))


def read_reference_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a reference ``.pckl`` state dict without running code from it (``weights_only=True``).

    Raises:
        FileNotFoundError: If the file does not exist.
        ReferenceCheckpointError: If it is not a plain state dict of tensors.

    """
    path = Path(path).expanduser()
    if not path.is_file():
        msg = f"Reference checkpoint not found: {path}"
        raise FileNotFoundError(msg)
    expected = "a DeSTSeg reference checkpoint (a torch.save state dict of tensors, DeSTSeg_MVTec_5000_<category>.pckl)"
    state = load_plain(path, expected, ReferenceCheckpointError)
    if not isinstance(state, Mapping) or not all(isinstance(value, torch.Tensor) for value in state.values()):
        msg = f"{path} does not hold a state dict of tensors (got {type(state).__name__})."
        raise ReferenceCheckpointError(msg)
    # A model saved from DataParallel / DistributedDataParallel prefixes every key with "module.".
    return {key.removeprefix("module."): value for key, value in state.items()}


def _listed(items: list[str], limit: int = 8) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def convert_state_dict(
    reference_state: Mapping[str, torch.Tensor], model_state: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Rename a reference state dict to ``model_state``'s keys, checking that both hold exactly the same tensors.

    Args:
        reference_state: The reference checkpoint's tensors.
        model_state: A :class:`DeSTSegModel`'s ``state_dict()`` (names and shapes to fill).

    Returns:
        A state dict for ``DeSTSegModel.load_state_dict(..., strict=True)``, with the teacher marked as loaded.

    Raises:
        ReferenceCheckpointError: Naming every missing, unexpected and mis-shaped tensor (by reference name).

    """
    converted, unexpected, misshaped = {}, [], []
    for key, value in reference_state.items():
        target = model_key(key)
        if target is None or target not in model_state:
            unexpected.append(key)
        elif tuple(value.shape) != tuple(model_state[target].shape):
            misshaped.append(f"{key} {tuple(value.shape)} (expected {tuple(model_state[target].shape)})")
        else:
            converted[target] = value
    present = {model_key(key) for key in reference_state}
    missing = [reference_key(key) or key for key in model_state if key != TEACHER_LOADED and key not in present]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing tensor(s): {_listed(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensor(s): {_listed(unexpected)}")
    if misshaped:
        problems.append(f"{len(misshaped)} tensor(s) of the wrong shape: {_listed(misshaped)}")
    if problems:
        msg = (
            "Not a DeSTSeg reference checkpoint (the authors' DeSTSeg(dest=True, ed=True).state_dict() with 392 "
            f"tensors): {'; '.join(problems)}."
        )
        raise ReferenceCheckpointError(msg)
    converted[TEACHER_LOADED] = torch.tensor(True)
    return converted


def write_anomalib_checkpoint(model: lightning.LightningModule, path: str | Path) -> Path:
    """Save ``model`` as a Lightning checkpoint for ``anomalib test/predict/export --ckpt_path``.

    It holds the weights, hyperparameters and anomalib's pre-/post-processor settings, so
    ``DeSTSeg.load_from_checkpoint`` reads it too.

    The file is written to a temporary name and renamed, so an existing file is never left half-written.
    """
    path = Path(path)
    checkpoint = {
        "state_dict": model.state_dict(),
        "hyper_parameters": dict(model.hparams),
        "pytorch-lightning_version": lightning.__version__,
        "epoch": 0,
        "global_step": 0,
    }
    model.on_save_checkpoint(checkpoint)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    torch.save(checkpoint, temporary)
    temporary.replace(path)
    return path


def main(argv: list[str] | None = None) -> int:
    """``anomalib-destseg-import-reference REFERENCE.pckl OUTPUT.ckpt``: convert one reference checkpoint."""
    parser = argparse.ArgumentParser(
        prog="anomalib-destseg-import-reference",
        description="Convert a DeSTSeg reference checkpoint (apple/ml-destseg, DeSTSeg_MVTec_5000_<category>.pckl) "
        "into an anomalib checkpoint for `anomalib test/predict/export --model anomalib_destseg.DeSTSeg --ckpt_path`.",
    )
    parser.add_argument("reference", type=Path, help="the reference .pckl file")
    parser.add_argument("output", type=Path, help="the anomalib checkpoint to write (.ckpt)")
    parser.add_argument("--image-size", type=int, default=256, help="input size (the reference trained at 256)")
    parser.add_argument("--overwrite", action="store_true", help="replace OUTPUT if it exists")
    args = parser.parse_args(argv)
    if args.output.exists() and not args.overwrite:
        parser.error(f"{args.output} exists; pass --overwrite to replace it")
    from anomalib_destseg import DeSTSeg

    try:
        model = DeSTSeg.from_reference_checkpoint(
            args.reference, pre_processor=DeSTSeg.configure_pre_processor((args.image_size, args.image_size))
        )
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    write_anomalib_checkpoint(model, args.output)
    print(f"wrote {args.output}: DeSTSeg with the weights of {args.reference} ({args.image_size}x{args.image_size})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
