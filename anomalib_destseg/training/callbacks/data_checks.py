"""Checks of the data and the pre-processor before a long run starts, and the batch size training can use."""

import logging

from anomalib.data.transforms.utils import extract_transforms_by_type
from lightning.pytorch import Callback, LightningModule, Trainer
from torchvision.transforms.v2 import Normalize

from anomalib_destseg.data.image_checks import check_dataset_images

logger = logging.getLogger(__name__)

MIN_BATCH = 2
"""BatchNorm in the ASPP pooling branch sees one value per channel and image: batches of one cannot train."""


class DataChecks(Callback):
    """Refuse a normalising pre-processor and name unreadable dataset files before training or testing starts.

    A truncated image otherwise fails with ``OSError: image file is truncated`` and no file name, possibly hours
    into training (see :mod:`anomalib_destseg.data.image_checks`).
    """

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Check the pre-processor and the training and validation images."""
        pre_processor = pl_module.pre_processor
        if pre_processor and extract_transforms_by_type(pre_processor.transform, Normalize):
            msg = f"{pl_module.name} normalises inside the model: remove Normalize from the pre-processor transform."
            raise ValueError(msg)
        datamodule = getattr(trainer, "datamodule", None)
        check_dataset_images(
            {"training": getattr(datamodule, "train_data", None), "validation": getattr(datamodule, "val_data", None)},
            pl_module.image_size,
        )

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Check the test images and masks."""
        del pl_module
        check_dataset_images({"test": getattr(getattr(trainer, "datamodule", None), "test_data", None)})


def usable_batch_size(datamodule: object, processes: int = 1) -> int:
    """The batch size training steps use: the datamodule's, or the whole training set when that is smaller.

    As the reference, batches smaller than this are skipped (``drop_last``). A training set smaller than
    ``train_batch_size`` (per process under DDP) would then never train; it trains on batches of all its images
    instead, with a warning: the reference would not train at all, and the student's step grows with the batch
    (its loss is a batch sum).

    Raises:
        ValueError: For batches of one image (``train_batch_size`` 1, or a training set of one image per process)
            and for an empty training set.

    """
    batch_size = getattr(datamodule, "train_batch_size", None)
    if batch_size is None:
        return MIN_BATCH
    if batch_size < MIN_BATCH:
        msg = (
            f"train_batch_size is {batch_size}, but training needs batches of at least {MIN_BATCH} images "
            "(BatchNorm in the ASPP pooling branch sees one value per image). The reference uses 32."
        )
        raise ValueError(msg)
    train_data = getattr(datamodule, "train_data", None)
    if train_data is None:
        return batch_size
    size = len(train_data)
    share = -(-size // processes)  # images per process, rounded up like Lightning's distributed sampler
    if share >= batch_size:
        return batch_size
    where = f"gives each of {processes} processes {share} images" if processes > 1 else f"has {size} images"
    if share < MIN_BATCH:
        what = "is empty" if size == 0 else f"{where}: batches of at least {MIN_BATCH} are needed"
        msg = f"The training set {what} (BatchNorm in the ASPP pooling branch sees one value per image)."
        raise ValueError(msg)
    logger.warning(
        "The training set %s, fewer than train_batch_size=%d: every step trains on a batch of all %d. The reference "
        "drops incomplete batches and would not train at all; the student's effective step size grows with the "
        "batch (its loss is a batch sum), so compare student_lr with the reference's 0.4 at batch 32.",
        where,
        batch_size,
        share,
    )
    return share
