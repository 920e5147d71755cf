"""Models, datamodules and engines of the benchmarks, built in one place.

The benchmark command (:mod:`anomalib_destseg.benchmark`), ``benchmarks/cpu_speed.py`` and ``benchmarks/memory.py``
build every model here: DeSTSeg and PFADSeg with their defaults, anomalib's Patchcore and Stfpm on timm's
``resnet18.tv_in1k`` (the teacher's weights), all with the paper evaluator on raw scores, masks resized as the
paper does, and no visualizer. DeSTSeg's and PFADSeg's evaluator also reports their DeST map (``DeST_`` metrics).

Example:
    >>> model = build_model("destseg", 128, student_steps=2, segmentation_steps=2)
    >>> type(model).__name__, model.image_size
    ('DeSTSeg', (128, 128))

"""

from pathlib import Path
from typing import Any

from anomalib_destseg.components.maps import DEST_MAP
from anomalib_destseg.components.teacher import IMAGENET, TIMM_NAME

from .protocols import MODEL_NAMES, TWO_STAGE_MODELS

PATCHCORE_LAYERS = ("layer2", "layer3")
STFPM_LAYERS = ("layer1", "layer2", "layer3")


def canonical_name(name: str) -> str:
    """A model name as the benchmark reports it, matched case-insensitively (``"destseg"`` -> ``"DeSTSeg"``).

    Raises:
        ValueError: For an unknown name, listing the known ones.

    """
    for known in MODEL_NAMES:
        if name.lower() == known.lower():
            return known
    msg = f"unknown model {name!r}; choose from {', '.join(MODEL_NAMES)}"
    raise ValueError(msg)


def timm_weights_message(cause: BaseException) -> str:
    """The error message when timm cannot load ``resnet18.tv_in1k`` (usually: offline, cache not prepared)."""
    lines = [line for line in str(cause).strip().splitlines() if line.strip()]
    reason = f"{type(cause).__name__}: {lines[-1].strip()}" if lines else type(cause).__name__
    return (
        f"Patchcore and Stfpm need timm's ImageNet ResNet-18 '{TIMM_NAME}' (the DeSTSeg teacher's weights), which "
        f"could not be loaded ({reason}). Without network access, put the weights in the Hugging Face cache "
        "(docs/offline.md) and `export HF_HOME=DIR HF_HUB_OFFLINE=1` before the benchmark."
    )


def build_model(
    name: str,
    image_size: int,
    *,
    teacher_weights: str | Path = IMAGENET,
    texture_dir: str | Path | None = None,
    student_steps: int | None = None,
    segmentation_steps: int | None = None,
    coreset_sampling_ratio: float | None = None,
    raw_scores: bool = True,
    **model_kwargs: Any,
):
    """Build one of :data:`~.protocols.MODEL_NAMES` for ``image_size`` x ``image_size`` images.

    Args:
        name: Model name (any case).
        image_size: Side of the square images (a multiple of 32).
        teacher_weights: DeSTSeg / PFADSeg teacher weights (``"imagenet"`` or a file).
        texture_dir: DeSTSeg / PFADSeg texture images (``None``: procedural).
        student_steps: DeSTSeg / PFADSeg stage-1 steps (``None``: the model's default).
        segmentation_steps: DeSTSeg / PFADSeg stage-2 steps (``None``: the model's default).
        coreset_sampling_ratio: Patchcore's coreset ratio (``None``: anomalib's default).
        raw_scores: Metrics on raw scores (the paper) rather than on anomalib's normalised ones. DeSTSeg and
            PFADSeg output their segmentation map and their evaluator adds the DeST map's metrics (``DeST_``
            prefix, always on raw values).
        **model_kwargs: Further constructor arguments.

    Raises:
        RuntimeError: If Patchcore / Stfpm cannot load timm's ImageNet ResNet-18 (with the fix in the message).
        ValueError: If the model name is unknown.

    """
    from anomalib_destseg.data.resize import AntialiasedPreProcessor
    from anomalib_destseg.metrics import RawScorePostProcessor, paper_evaluator

    name = canonical_name(name)
    size = (image_size, image_size)
    second_map = DEST_MAP if name in TWO_STAGE_MODELS else None
    evaluator = paper_evaluator(raw_scores=raw_scores, second_map=second_map)
    common = {"evaluator": evaluator, "post_processor": RawScorePostProcessor(), "visualizer": False, **model_kwargs}
    if name in TWO_STAGE_MODELS:
        from anomalib_destseg import DeSTSeg, PFADSeg

        model_class = DeSTSeg if name == "DeSTSeg" else PFADSeg
        steps = {"student_steps": student_steps, "segmentation_steps": segmentation_steps}
        return model_class(
            teacher_weights=str(teacher_weights),
            texture_dir=texture_dir,
            pre_processor=model_class.configure_pre_processor(size),
            **{key: value for key, value in steps.items() if value is not None},
            **common,
        )
    from anomalib.models import Patchcore, Stfpm

    try:
        if name == "Patchcore":
            ratio = {} if coreset_sampling_ratio is None else {"coreset_sampling_ratio": coreset_sampling_ratio}
            return Patchcore(
                backbone=TIMM_NAME,
                layers=PATCHCORE_LAYERS,
                pre_trained=True,
                # anomalib's own transform; masks resized as the paper does, as for DeSTSeg
                pre_processor=AntialiasedPreProcessor(Patchcore.configure_pre_processor(image_size=size).transform),
                **ratio,
                **common,
            )
        return Stfpm(
            backbone=TIMM_NAME,
            layers=STFPM_LAYERS,
            pre_processor=AntialiasedPreProcessor(Stfpm.configure_pre_processor(image_size=size).transform),
            **common,
        )
    except (OSError, RuntimeError) as error:  # hub errors (offline) are OSErrors or RuntimeErrors
        raise RuntimeError(timm_weights_message(error)) from error


def build_datamodule(
    dataset: dict[str, Any], train_batch_size: int, eval_batch_size: int, num_workers: int = 0, seed: int = 42
):
    """The anomalib datamodule described by ``dataset`` (``{"kind": "mvtec", "root", "category"}`` or a Folder).

    The validation split is the test split (anomalib's MVTec AD default, also used for Folder): it only sets the
    adaptive thresholds and the min-max normalisation of scores, which no reported metric depends on; nothing is
    selected on it (no early stopping, no best-checkpoint picking).
    """
    from anomalib.data import Folder, MVTecAD
    from anomalib.data.utils import ValSplitMode

    common = {
        "train_batch_size": train_batch_size,
        "eval_batch_size": eval_batch_size,
        "num_workers": num_workers,
        "val_split_mode": ValSplitMode.SAME_AS_TEST,
        "seed": seed,
    }
    if dataset["kind"] == "mvtec":
        return MVTecAD(root=dataset["root"], category=dataset["category"], **common)
    return Folder(
        name=dataset["name"],
        root=dataset.get("root"),
        normal_dir=dataset["normal_dir"],
        abnormal_dir=dataset.get("abnormal_dir"),
        normal_test_dir=dataset.get("normal_test_dir"),
        mask_dir=dataset.get("mask_dir"),
        **common,
    )


def build_engine(
    root: Path,
    accelerator: str = "cpu",
    keep_checkpoints: bool = False,
    epochs: int | None = None,
    precision: str = "32",
    channels_last: bool = False,
    tile_size: int | None = None,
):
    """Anomalib ``Engine`` on one device, results under ``root``, no logger, progress bar or (unless asked) checkpoint.

    Args:
        root: Results folder.
        accelerator: Lightning accelerator.
        keep_checkpoints: Keep anomalib's checkpoint callback (else one that writes nothing: the benchmark always
            tests the model after its last step, never a picked checkpoint).
        epochs: Training epochs for epoch-based models (Stfpm); validation (thresholds only) runs once, after the
            last one, without early stopping.
        precision: Lightning precision (``"32"``, ``"bf16-mixed"``, ``"16-mixed"``).
        channels_last: Train in the channels-last memory layout (:class:`~anomalib_destseg.training.callbacks.
            ChannelsLast`).
        tile_size: Tile the resized images into squares of this side without overlap (anomalib's
            ``TilerConfigurationCallback``); ``None``: no tiling.

    """
    from anomalib.callbacks import ModelCheckpoint
    from anomalib.engine import Engine

    kwargs: dict[str, Any] = {
        "accelerator": accelerator,
        "devices": 1,
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "default_root_dir": root,
        "precision": precision,
    }
    callbacks = [] if keep_checkpoints else [ModelCheckpoint(save_top_k=0)]
    if channels_last:
        from anomalib_destseg.training.callbacks import ChannelsLast

        callbacks.append(ChannelsLast())
    if tile_size is not None:
        from anomalib.callbacks import TilerConfigurationCallback

        callbacks.append(TilerConfigurationCallback(enable=True, tile_size=tile_size, stride=tile_size))
    if callbacks:
        kwargs["callbacks"] = callbacks
    if epochs:
        kwargs.update(max_epochs=epochs, check_val_every_n_epoch=epochs)
    return Engine(**kwargs)
