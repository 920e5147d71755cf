r"""Digests of a short same-seed training run: compare two versions of the code for bit-identical behaviour.

Trains DeSTSeg and PFADSeg for 3 + 3 steps on MVTec AD bottle (128x128, batch 8, DTD textures, seed 0) through
anomalib's Engine, predicts the test set, and prints SHA-256 digests (16 hex digits) of the trained weights, the
post-processor's thresholds and ranges, and the raw test maps and scores. Run it with each version of the code
(e.g. ``PYTHONPATH=<checkout>``); equal digests mean bit-identical training and inference.

Usage::

    .venv/bin/python benchmarks/same_seed_digest.py --data-root ../shared/data/mvtec_ad \
        --teacher-weights ../shared/weights/resnet18_imagenet1k_layer1to3.pth --texture-dir ../shared/data/dtd/images

"""

import argparse
import hashlib
import tempfile
from collections.abc import Iterable

import torch


def digest(named_tensors: Iterable[tuple[str, torch.Tensor]]) -> str:
    """SHA-256 of names and raw bytes, in the given order."""
    sha = hashlib.sha256()
    for name, tensor in named_tensors:
        sha.update(name.encode())
        sha.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return sha.hexdigest()[:16]


def main(argv: list[str] | None = None) -> None:
    """Train, predict and print the digests of both models."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--teacher-weights", required=True)
    parser.add_argument("--texture-dir", required=True)
    args = parser.parse_args(argv)
    from anomalib.data import MVTecAD
    from anomalib.engine import Engine
    from lightning import seed_everything

    import anomalib_destseg
    from anomalib_destseg import DeSTSeg, PFADSeg

    print("code:", anomalib_destseg.__file__)
    for model_class in (DeSTSeg, PFADSeg):
        seed_everything(0)
        model = model_class(
            student_steps=3,
            segmentation_steps=3,
            teacher_weights=args.teacher_weights,
            texture_dir=args.texture_dir,
            pre_processor=model_class.configure_pre_processor((128, 128)),
            visualizer=False,
        )
        datamodule = MVTecAD(
            root=args.data_root, category="bottle", train_batch_size=8, eval_batch_size=8, num_workers=0, seed=0
        )
        with tempfile.TemporaryDirectory() as root:
            engine = Engine(
                default_root_dir=root, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False
            )
            engine.fit(model, datamodule=datamodule)
            predictions = engine.predict(model, datamodule=datamodule)
        print(
            f"{model_class.__name__}: steps {model.global_step}"
            f" weights {digest(sorted(model.model.state_dict().items()))}"
            f" post_processor {digest(sorted(model.post_processor.state_dict().items()))}"
            f" raw_maps {digest((str(i), batch.raw_anomaly_map) for i, batch in enumerate(predictions))}"
            f" raw_scores {digest((str(i), batch.raw_pred_score) for i, batch in enumerate(predictions))}",
            flush=True,
        )


if __name__ == "__main__":
    main()
