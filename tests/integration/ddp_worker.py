"""Train and test DeSTSeg/PFADSeg with anomalib's Engine under Lightning's DDP on CPU; used by ``test_ddp.py``.

Run as a script: Lightning's ``ddp`` strategy launches the other processes by running this file again with the
same arguments, so it must be a file, not ``python -c``. Every process writes ``<model>_rank<R>.json`` into the
output folder: bitwise digests of the weights at the start, at the stage boundary and after training, digests of the
synthetic masks it drew, its random seed, the test images it saw and the test metrics. The test compares the files.

Example::

    python tests/ddp_worker.py --data ROOT --weights W.pth --out OUT --models DeSTSeg PFADSeg
"""

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

import torch
from anomalib.data import MVTecAD
from anomalib.engine import Engine
from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything

import anomalib_destseg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for the shared model factory
from helpers import tiny_model

STEPS = 2  # per stage
BATCH = 4
SIZE = 64


def digest(tensors: list[torch.Tensor]) -> str:
    """SHA-256 of the tensors' bytes: equal digests mean bitwise-equal tensors."""
    sha = hashlib.sha256()
    for tensor in tensors:
        sha.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return sha.hexdigest()


class DDPProbe(Callback):
    """Record, per process, what the test compares across processes."""

    def __init__(self, report: dict, out: Path, name: str) -> None:
        self.report, self.out, self.name = report, out, name
        self.wrapped = False

    def _weights(self, trainer: Trainer, pl_module: LightningModule) -> dict[str, str]:
        student, segmentation = (
            [p for group in optimizer.param_groups for p in group["params"]] for optimizer in trainer.optimizers
        )
        return {
            "student": digest(student),
            "segmentation": digest(segmentation),
            "buffers": digest(list(pl_module.model.buffers())),
        }

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.report["world_size"] = trainer.world_size
        self.report["pid"] = os.getpid()
        self.report["start_method"] = getattr(trainer.strategy, "_start_method", None)
        self.report["weights"] = {"start": self._weights(trainer, pl_module)}
        self.report["masks"] = []

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch, *args) -> None:
        del args
        self.report.setdefault("train_images", []).append([str(path) for path in batch.image_path])
        if self.wrapped:
            return
        # The module's on_train_start (after this callback's) created the generator and seeded this process.
        self.wrapped = True
        self.report["initial_seed"] = torch.initial_seed()
        generator, masks = pl_module.anomaly_generator, self.report["masks"]

        def recording_generator(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            corrupted, mask = generator(images)
            masks.append(digest([mask]))
            return corrupted, mask

        pl_module.anomaly_generator = recording_generator

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args) -> None:
        del args
        if trainer.global_step == pl_module.hparams.student_steps and "stage1" not in self.report["weights"]:
            self.report["weights"]["stage1"] = self._weights(trainer, pl_module)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.report["weights"]["end"] = self._weights(trainer, pl_module)
        self.report["global_step"] = trainer.global_step
        self.save(trainer.global_rank)

    def on_test_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, *args) -> None:
        del trainer, pl_module, outputs, args
        self.report.setdefault("test_images", []).extend(str(path) for path in batch.image_path)

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        del pl_module
        self.save(trainer.global_rank)

    def save(self, rank: int) -> None:
        """Add this process's report to its file: with ``ddp_spawn`` fitting and testing run in fresh processes
        each, and the launching process never sees what the callbacks recorded."""
        path = self.path(rank)
        stored = json.loads(path.read_text()) if path.is_file() else {}
        path.write_text(json.dumps(stored | self.report, indent=1))

    def path(self, rank: int) -> Path:
        return self.out / f"{self.name}_rank{rank}.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", required=True, help="MVTec-layout root holding the 'synthetic' category")
    parser.add_argument("--weights", required=True, help="teacher ResNet-18 state dict")
    parser.add_argument("--out", required=True, help="folder for reports and results")
    parser.add_argument("--models", nargs="+", default=["DeSTSeg"], help="model classes of anomalib_destseg")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--strategy", default="ddp", help="Lightning strategy name (a DDP variant)")
    args = parser.parse_args()
    torch.set_num_threads(1)  # the processes share the machine's cores
    out = Path(args.out)
    for name in args.models:
        seed_everything(args.seed)
        model_class = getattr(anomalib_destseg, name)
        # The visualizer on: the test counts the result images.
        model = tiny_model(
            model_class, args.weights, size=SIZE, student_steps=STEPS, segmentation_steps=STEPS, visualizer=True
        )
        datamodule = MVTecAD(
            root=args.data, category="synthetic", train_batch_size=BATCH, eval_batch_size=BATCH, num_workers=0
        )
        report: dict = {}
        probe = DDPProbe(report, out, name)
        engine = Engine(
            accelerator="cpu",
            strategy=args.strategy,
            devices=2,
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            default_root_dir=out / "results",
            callbacks=[probe],
        )
        engine.fit(model, datamodule=datamodule)
        metrics = engine.test(model, datamodule=datamodule, verbose=True)
        # Every rank's probe wrote its report; add the metrics where this process has them (with ddp_spawn only
        # the launching process returns from test, holding rank 0's).
        path = probe.path(engine.trainer.global_rank)
        stored = json.loads(path.read_text())
        stored["metrics"] = metrics
        stored["launcher_pid"] = os.getpid()
        path.write_text(json.dumps(stored, indent=1))


if __name__ == "__main__":
    main()
