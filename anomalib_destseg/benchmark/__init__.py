"""Benchmark DeSTSeg and PFADSeg against anomalib's Patchcore and Stfpm on real data, with one command.

``anomalib-destseg-benchmark`` (or ``python -m anomalib_destseg.benchmark``) trains and tests each model through
anomalib's ``Engine`` on MVTec-AD-layout categories or a Folder dataset, each run in its own process, with the same
ImageNet ResNet-18 weights, image size and seed for all, and the paper's metrics (:func:`anomalib_destseg.metrics.
paper_evaluator`) for all. It writes ``results.csv``, ``results.md``, ``results.json``, ``metrics.png``,
``costs.png`` and ``anomaly_maps_<category>.png`` to the output folder. Recipes are in :mod:`.protocols`.

Example:
    anomalib-destseg-benchmark --root datasets/MVTecAD --categories bottle --protocol cpu \
        --texture-dir datasets/dtd/images --output-dir results/benchmark

"""

from .protocols import MODEL_NAMES, PROTOCOLS, ModelSettings, Protocol, get_protocol, override

__all__ = ["MODEL_NAMES", "PROTOCOLS", "ModelSettings", "Protocol", "get_protocol", "override"]
