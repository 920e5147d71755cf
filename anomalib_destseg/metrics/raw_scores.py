"""Metrics on raw scores, as the paper computes them, while anomalib's normalised outputs drive thresholds and pictures.

anomalib's ``PostProcessor`` min-max normalises scores and maps around the adaptive threshold and clamps them to
``[0, 1]`` before its evaluator sees them. Clamping ties the highest (or lowest) values, which changes AUROC, AP,
AUPRO and IAP; the paper scores the raw maps. Here:

- :class:`RawScorePostProcessor` (the models' default post-processor) keeps the raw ``pred_score`` and
  ``anomaly_map`` on the batch as ``raw_pred_score`` and ``raw_anomaly_map`` before normalising; predicted labels,
  masks and the visualizer's pictures still use the normalised values, exactly as with anomalib's own.
- :class:`PaperEvaluator` computes ranking metrics on those raw fields. When a batch has none (a post-processor that
  does not keep them), it warns once and uses the post-processed values. An evaluator built for a second anomaly map
  refuses, with an error naming the fix, a test batch that does not carry that map.

Example:
    >>> import torch
    >>> from anomalib.data import ImageBatch
    >>> batch = ImageBatch(image=torch.rand(1, 3, 8, 8), pred_score=torch.tensor([3.0]))
    >>> keep_raw_scores(batch)
    >>> batch.raw_pred_score
    tensor([3.])

"""

import logging
from typing import Any

from anomalib.data import Batch
from anomalib.metrics import Evaluator
from anomalib.post_processing import PostProcessor
from lightning.pytorch import LightningModule, Trainer

from anomalib_destseg.components.maps import check_map_name, map_fields

logger = logging.getLogger(__name__)

RAW_PRED_SCORE = "raw_pred_score"
RAW_ANOMALY_MAP = "raw_anomaly_map"


def keep_raw_scores(batch: Batch) -> None:
    """Store the batch's current ``pred_score`` and ``anomaly_map`` as ``raw_pred_score`` / ``raw_anomaly_map``."""
    setattr(batch, RAW_PRED_SCORE, batch.pred_score)
    setattr(batch, RAW_ANOMALY_MAP, batch.anomaly_map)


class RawScorePostProcessor(PostProcessor):
    """anomalib's ``PostProcessor`` that keeps the raw scores and maps on the batch before normalising them.

    Takes the same arguments as ``anomalib.post_processing.PostProcessor`` and behaves the same otherwise.
    """

    def post_process_batch(self, batch: Batch) -> None:
        """Keep the raw values (:func:`keep_raw_scores`), then normalise and threshold as anomalib does."""
        keep_raw_scores(batch)
        super().post_process_batch(batch)


class PaperEvaluator(Evaluator):
    """An ``Evaluator`` whose metrics may read ``raw_pred_score`` / ``raw_anomaly_map``; missing ones are filled in.

    A test batch without raw fields (its post-processor did not keep them) gets its post-processed values as raw
    ones, with one warning: the metrics are then those of anomalib's default (normalised and clamped) outputs.

    Args:
        *args: ``Evaluator``'s arguments (``val_metrics``, ``test_metrics``, ``compute_on_cpu``).
        second_map: The second anomaly map whose metrics are among the test metrics (``"dest"``,
            ``"segmentation"``) or ``None``; test batches must then carry it (``<name>_anomaly_map``).
        **kwargs: ``Evaluator``'s keyword arguments.

    Raises:
        ValueError: From ``on_test_batch_end``, when a test batch lacks the second map.

    """

    _warned = False

    def __init__(self, *args: Any, second_map: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.second_map = None if second_map is None else check_map_name(second_map, "second_map")
        self.register_load_state_dict_pre_hook(_keep_own_metric_buffers)

    def on_test_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Fill in missing raw fields, check that the second map is there, then update the metrics."""
        if self.second_map is not None and getattr(batch, map_fields(self.second_map)[1], None) is None:
            msg = (
                f"The evaluator reports metrics of the {self.second_map!r} map, but the test batch does not carry "
                f"it ({map_fields(self.second_map)[1]}): test with the model's second_map=True, or build the "
                "evaluator with paper_evaluator(second_map=None)."
            )
            raise ValueError(msg)
        if not hasattr(batch, RAW_ANOMALY_MAP):
            if not self._warned:
                logger.warning(
                    "The post-processor kept no raw scores (use anomalib_destseg.metrics.RawScorePostProcessor): "
                    "metrics are computed on the post-processed (normalised and clamped) scores and maps."
                )
                self._warned = True
            keep_raw_scores(batch)
        super().on_test_batch_end(trainer, pl_module, outputs, batch, batch_idx, dataloader_idx)


def _keep_own_metric_buffers(module: Evaluator, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
    """Load-state-dict pre-hook: the evaluator keeps its own metric buffers, whatever the checkpoint holds.

    Its only persistent buffers are metric settings (AUPRO's ``fpr_limit``); metric states are not saved. A checkpoint
    written with another set of metrics (without the second map's, or by release 0.1.0) then still loads strictly.
    """
    del args
    own = module.state_dict(prefix=prefix)
    for key in [key for key in state_dict if key.startswith(prefix) and key not in own]:
        del state_dict[key]
    state_dict.update(own)
