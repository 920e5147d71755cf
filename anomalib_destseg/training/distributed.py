"""What two-stage training needs under DDP (Lightning's ``ddp`` strategy); each function does nothing otherwise.

- :func:`seed_each_process`: DDP processes share the seed and would draw the same anomalies and rotations.
- :func:`with_idle_parameters`: DDP expects a gradient for every trainable parameter, but each stage idles half of
  them.
- :func:`broadcast_buffers`: BatchNorm statistics differ per process after the last step of a stage.
- :func:`share_image_folder`: every process's result images go to rank 0's results folder.
"""

from pathlib import Path

import torch
from lightning.pytorch import LightningModule
from torch.nn.parallel import DistributedDataParallel


def seed_each_process(module: LightningModule) -> None:
    """Give every DDP process its own seed-derived random stream (single-process runs are left untouched)."""
    trainer = module.trainer
    if trainer.world_size > 1:
        torch.manual_seed((torch.initial_seed() + trainer.global_rank) % 2**64)


def with_idle_parameters(module: LightningModule, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> torch.Tensor:
    """Under DDP, add zero times the trainable parameters that ``optimizer`` does not train.

    DDP (unless ``find_unused_parameters=True``) expects a gradient for every trainable parameter in each step, but
    the segmentation network idles in stage 1 and the student in stage 2. The zero-weighted term gives them zero
    gradients (their optimiser does not step), so both stages synchronise whatever the user's DDP settings.
    Outside DDP ``loss`` is returned unchanged.
    """
    if module._trainer is None or not isinstance(module.trainer.strategy.model, DistributedDataParallel):
        return loss
    active = {id(parameter) for group in optimizer.param_groups for parameter in group["params"]}
    idle = [p for p in module.parameters() if p.requires_grad and id(p) not in active]
    if not idle:
        return loss
    return loss + 0.0 * sum(p.sum() for p in idle)


def broadcast_buffers(module: LightningModule) -> None:
    """Under DDP, give every process rank 0's buffers (BatchNorm statistics), as DDP does before each forward.

    Each process updates the statistics with its own batch, and DDP copies rank 0's to the others only when the
    next training forward starts. After the last step there is none: validation (which sets the thresholds) would
    run with different statistics in each process. Called at the end of both stages.
    """
    if module.trainer.world_size < 2 or not torch.distributed.is_initialized():
        return
    for buffer in module.model.buffers():
        torch.distributed.broadcast(buffer, src=0)


def share_image_folder(module: LightningModule) -> None:
    """Under several processes, have the visualizer save every process's images in rank 0's results folder.

    Lightning's ``ddp`` launcher runs the user's script (or CLI command) once per process, and anomalib's Engine
    makes a versioned results folder in each; rank 0's is the one that holds the checkpoint (only rank 0 saves).
    """
    trainer = module.trainer
    if trainer.world_size < 2:
        return
    folder = trainer.strategy.broadcast(Path(trainer.default_root_dir) / "images")
    visualizer = getattr(module, "visualizer", None)
    if visualizer is not None and getattr(visualizer, "output_dir", "") is None:
        visualizer.output_dir = folder
