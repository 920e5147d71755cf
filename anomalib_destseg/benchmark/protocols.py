"""Benchmark protocols: the training recipe of every model, by name, in one place.

Each protocol is one table: a row per model with its batch sizes and training length, plus the settings shared by
all models (image size, seed, data-loader workers). Command-line options override single values (see
``anomalib-destseg-benchmark --help``); everything else comes from here.

``paper`` -- the reference recipes, meant for a GPU:

=========  =====  =====  ==============================================================================
model      batch  size   training
=========  =====  =====  ==============================================================================
DeSTSeg    32     256    1000 student + 4000 segmentation steps (the reference code, ``docs/destseg.md``)
PFADSeg    32     256    1000 + 4000 steps (the same two-stage schedule as DeSTSeg)
Patchcore  32     256    anomalib defaults: 1 epoch (memory bank), coreset ratio 0.1, 9 neighbours
Stfpm      32     256    anomalib's published config: 100 epochs, SGD lr 0.4 (the model's own optimiser)
=========  =====  =====  ==============================================================================

anomalib's published Stfpm config also stops early on ``pixel_AUROC`` of the validation set with patience 5. With
MVTec AD the validation set *is* the test set, so that would pick the stopping epoch on test data: the benchmark
never uses early stopping (or any other checkpoint selection) and always keeps the model after the last epoch.

``cpu`` -- a reduced recipe that runs all four models on one MVTec AD category (bottle: 209 training and 83 test
images) in under an hour on a 2-core CPU. Every reduction against ``paper``:

- image size 256 -> 128 for all four models (a DeSTSeg stage-2 step at batch 8 costs ~9.9 s at 256x256 and ~2.2 s
  at 128x128 on 2 cores in float32; stage 1 ~2.0 s and ~0.6 s: ``docs/benchmarks/training_speed.md``);
- batch size 32 -> 8 for all four models (training and evaluation);
- DeSTSeg / PFADSeg: float32 -> Lightning's bf16-mixed precision in the channels-last layout (a stage-2 step at
  128x128 takes ~1.0 s instead of ~2.2 s; on bottle, at 200 + 500 steps, image AUROC moved by at most 0.001 and
  the pixel metrics by at most 0.008 against float32: ``docs/results.md``), and the time saved spent on training
  longer: 1000 + 4000 steps -> 400 + 1000 steps, about the wall time of 200 + 500 steps in float32 (learning rates
  unchanged; the student loss is a batch sum, so at batch 8 its effective step is a quarter of the reference's);
- Stfpm: 100 epochs -> 20 epochs (about 540 steps at batch 8 on bottle);
- Patchcore: no reduction besides image size and batch size (its cost is one pass over the training set plus the
  coreset selection);
- data loading in the main process (0 workers): the machine has 2 cores.

To change a protocol, edit its table below; the report records the settings each run used.

Example:
    >>> from anomalib_destseg.benchmark.protocols import get_protocol
    >>> protocol = get_protocol("cpu")
    >>> protocol.image_size, protocol.models["DeSTSeg"].student_steps, protocol.models["DeSTSeg"].precision
    (128, 400, 'bf16-mixed')

"""

from dataclasses import asdict, dataclass, field, replace
from typing import Any

MODEL_NAMES = ("DeSTSeg", "PFADSeg", "Patchcore", "Stfpm")
"""Models the benchmark knows, in report order."""

TWO_STAGE_MODELS = ("DeSTSeg", "PFADSeg")
"""Models trained with the DeSTSeg two-stage schedule (``student_steps`` + ``segmentation_steps``)."""

SECOND_MAP_ROWS = {"DeSTSeg": "DeSTSeg (DeST map)", "PFADSeg": "PFADSeg (student-teacher map)"}
"""Report row of each two-stage model's DeST map: the same trained model as the model's own row, tested with its
second anomaly map (the teacher-student cosine-distance map) instead of the segmentation map."""


def report_rows(model: str) -> list[str]:
    """The rows one run of ``model`` fills: its own, then its DeST map's for DeSTSeg and PFADSeg.

    Example:
        >>> report_rows("PFADSeg"), report_rows("Stfpm")
        (['PFADSeg', 'PFADSeg (student-teacher map)'], ['Stfpm'])

    """
    return [model, SECOND_MAP_ROWS[model]] if model in SECOND_MAP_ROWS else [model]


@dataclass(frozen=True)
class ModelSettings:
    """One model's row of a protocol.

    Args:
        train_batch_size: Training batch size.
        eval_batch_size: Batch size of validation, test and the timed inference pass.
        student_steps: Stage-1 steps (DeSTSeg / PFADSeg only).
        segmentation_steps: Stage-2 steps (DeSTSeg / PFADSeg only).
        epochs: Training epochs (Stfpm only; Patchcore always trains one epoch).
        coreset_sampling_ratio: Patchcore's coreset ratio (Patchcore only).
        precision: Lightning precision of training and testing (``"32"``, ``"bf16-mixed"``, ``"16-mixed"``).
        channels_last: Train in the channels-last memory layout (``ChannelsLast`` callback).
        model_kwargs: Further constructor arguments of the model (e.g. ``{"student_lr": 0.1}``).

    """

    train_batch_size: int
    eval_batch_size: int
    student_steps: int | None = None
    segmentation_steps: int | None = None
    epochs: int | None = None
    coreset_sampling_ratio: float | None = None
    precision: str = "32"
    channels_last: bool = False
    model_kwargs: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        """A short human-readable summary, e.g. ``"batch 8, 200+500 steps"``."""
        parts = [f"batch {self.train_batch_size}"]
        if self.student_steps is not None:
            parts.append(f"{self.student_steps}+{self.segmentation_steps} steps")
        if self.epochs is not None:
            parts.append(f"{self.epochs} epoch{'s' if self.epochs != 1 else ''}")
        if self.coreset_sampling_ratio is not None:
            parts.append(f"1 epoch, coreset {self.coreset_sampling_ratio:g}")
        if self.precision != "32":
            parts.append(self.precision)
        if self.channels_last:
            parts.append("channels-last")
        parts.extend(f"{key}={value}" for key, value in self.model_kwargs.items())
        return ", ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form."""
        return asdict(self)


@dataclass(frozen=True)
class Protocol:
    """A named benchmark recipe: shared settings and one :class:`ModelSettings` per model.

    Args:
        name: Protocol name (``--protocol``).
        summary: One line for the report.
        image_size: Side of the square images every model sees (resize, no crop).
        seed: Seed of every run (``lightning.seed_everything`` and the datamodule).
        num_workers: Data-loader workers.
        models: Settings per model name.
        tile_size: Cut every (resized) image into square tiles of this side, without overlap, with anomalib's
            ``TilerConfigurationCallback`` (every model: training and testing run on tiles, maps are put back
            together); ``None`` (both protocols): no tiling.

    """

    name: str
    summary: str
    image_size: int
    seed: int
    num_workers: int
    models: dict[str, ModelSettings]
    tile_size: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form."""
        return asdict(self)


# --- the protocols -------------------------------------------------------------------------------------------------
PAPER = Protocol(
    name="paper",
    summary="reference recipes at 256x256, batch 32 (for a GPU)",
    image_size=256,
    seed=42,  # anomalib publishes its model results with seed 42
    num_workers=8,
    models={
        "DeSTSeg": ModelSettings(train_batch_size=32, eval_batch_size=32, student_steps=1000, segmentation_steps=4000),
        "PFADSeg": ModelSettings(train_batch_size=32, eval_batch_size=32, student_steps=1000, segmentation_steps=4000),
        "Patchcore": ModelSettings(train_batch_size=32, eval_batch_size=32, coreset_sampling_ratio=0.1),
        "Stfpm": ModelSettings(train_batch_size=32, eval_batch_size=32, epochs=100),
    },
)

TWO_STAGE_CPU = {"student_steps": 400, "segmentation_steps": 1000, "precision": "bf16-mixed", "channels_last": True}

CPU = Protocol(
    name="cpu",
    summary="reduced recipes at 128x128, batch 8: all four models on one category in < 1 h on 2 CPU cores",
    image_size=128,  # reduction: 256 in the paper protocol
    seed=42,
    num_workers=0,  # reduction: 2 cores, load in the main process
    models={
        # reductions: batch 32 -> 8; 1000 + 4000 steps -> 400 + 1000 steps in bf16-mixed, channels-last
        "DeSTSeg": ModelSettings(train_batch_size=8, eval_batch_size=8, **TWO_STAGE_CPU),
        "PFADSeg": ModelSettings(train_batch_size=8, eval_batch_size=8, **TWO_STAGE_CPU),
        # reduction: batch 32 -> 8 (the result does not depend on it: one pass over the training set)
        "Patchcore": ModelSettings(train_batch_size=8, eval_batch_size=8, coreset_sampling_ratio=0.1),
        # reductions: batch 32 -> 8; 100 epochs -> 20 epochs
        "Stfpm": ModelSettings(train_batch_size=8, eval_batch_size=8, epochs=20),
    },
)

PROTOCOLS: dict[str, Protocol] = {protocol.name: protocol for protocol in (PAPER, CPU)}


def get_protocol(name: str) -> Protocol:
    """Return the protocol called ``name``.

    Raises:
        KeyError: If there is no such protocol (the message lists the known ones).

    """
    try:
        return PROTOCOLS[name]
    except KeyError:
        msg = f"unknown protocol {name!r}; choose from {', '.join(PROTOCOLS)}"
        raise KeyError(msg) from None


def override(
    protocol: Protocol,
    image_size: int | None = None,
    seed: int | None = None,
    num_workers: int | None = None,
    train_batch_size: int | None = None,
    eval_batch_size: int | None = None,
    steps: tuple[int, int] | None = None,
    epochs: int | None = None,
    coreset_sampling_ratio: float | None = None,
    precision: str | None = None,
    channels_last: bool | None = None,
    tile_size: int | None = None,
) -> Protocol:
    """Return a copy of ``protocol`` with the given values replaced (``None`` keeps the protocol's value).

    ``steps`` applies to DeSTSeg and PFADSeg, ``epochs`` to Stfpm, ``coreset_sampling_ratio`` to Patchcore; batch
    sizes, ``precision`` and ``channels_last`` apply to every model.

    Example:
        >>> override(get_protocol("cpu"), steps=(1, 1)).models["PFADSeg"].segmentation_steps
        1

    """
    models = {}
    for name, settings in protocol.models.items():
        changes: dict[str, Any] = {}
        if train_batch_size is not None:
            changes["train_batch_size"] = train_batch_size
        if eval_batch_size is not None:
            changes["eval_batch_size"] = eval_batch_size
        if steps is not None and name in TWO_STAGE_MODELS:
            changes["student_steps"], changes["segmentation_steps"] = steps
        if epochs is not None and name == "Stfpm":
            changes["epochs"] = epochs
        if coreset_sampling_ratio is not None and name == "Patchcore":
            changes["coreset_sampling_ratio"] = coreset_sampling_ratio
        if precision is not None:
            changes["precision"] = precision
        if channels_last is not None:
            changes["channels_last"] = channels_last
        models[name] = replace(settings, **changes)
    shared = {"image_size": image_size, "seed": seed, "num_workers": num_workers, "tile_size": tile_size}
    return replace(protocol, models=models, **{key: value for key, value in shared.items() if value is not None})
