"""Tests of the DeSTSeg instance-level metrics (IAP, IAP@90) and of the paper evaluator.

Expected values of the small cases are worked out by hand in the comments. Conventions (see
``anomalib_destseg/metrics/instance_ap.py``): 8-connected instances, instance score = descending rank
``floor(n / 2)`` of its ``n`` pixel scores, a pixel is predicted positive when its score is ``>= t``, precision is
interpolated with the max over equal-or-lower thresholds, IAP = mean over instances, IAP@90 = interpolated precision
at the first point with recall >= 0.9.
"""

from __future__ import annotations

import bisect
import math
import warnings

import numpy as np
import pytest
import torch
from anomalib.data import ImageBatch
from anomalib.metrics import AUPR, Evaluator

from anomalib_destseg.metrics import (
    IAP,
    IAP90,
    InstanceAP,
    InstanceAP90,
    RawScorePostProcessor,
    compute_instance_scores,
    instance_average_precision,
    label_instances,
    paper_evaluator,
)
from anomalib_destseg.metrics.instance_ap_metric import _InstanceAP


def _basic_case(missed_scores: tuple[float, float] = (0.3, 0.2)) -> tuple[torch.Tensor, torch.Tensor]:
    """Three 4x4 images; see the tests for the numbers.

    Image 0: instance A = row 0, columns 0..2 (3 pixels, scores .9 .6 .8), instance B = pixel (3, 3) (score .7);
             a false positive (2, 0) = .85, other pixels .1.
    Image 1: no defect; a false positive (1, 1) = .75, other pixels .1.
    Image 2: instance C = (1, 1) and (2, 2), touching at a corner (one 8-connected instance of 2 pixels) with
             scores ``missed_scores``; other pixels .1.
    """
    maps = torch.full((3, 4, 4), 0.1)
    masks = torch.zeros((3, 4, 4), dtype=torch.bool)
    maps[0, 0, :3] = torch.tensor([0.9, 0.6, 0.8])
    masks[0, 0, :3] = True
    maps[0, 3, 3] = 0.7
    masks[0, 3, 3] = True
    maps[0, 2, 0] = 0.85
    maps[1, 1, 1] = 0.75
    maps[2, 1, 1], maps[2, 2, 2] = missed_scores
    masks[2, 1, 1] = masks[2, 2, 2] = True
    return maps, masks


def _batches(maps: torch.Tensor, masks: torch.Tensor, size: int) -> list[ImageBatch]:
    return [
        ImageBatch(
            image=torch.zeros(len(maps[i : i + size]), 3, *maps.shape[-2:]),
            anomaly_map=maps[i : i + size],
            gt_mask=masks[i : i + size],
        )
        for i in range(0, len(maps), size)
    ]


def _blob_data(num_images: int, size: int, seed: int, levels: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Random images with 0-3 random rectangles/discs as defects and noisy maps correlated with them."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    masks = np.zeros((num_images, size, size), dtype=bool)
    for image in range(num_images):
        for _ in range(rng.integers(0, 4)):
            cy, cx = rng.integers(0, size, 2)
            radius = rng.integers(1, max(2, size // 5))
            if rng.random() < 0.5:
                masks[image] |= (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
            else:
                masks[image] |= (abs(yy - cy) <= radius) & (abs(xx - cx) <= rng.integers(0, radius + 1))
    # scores in [0, 1] like anomalib's normalised maps (torchmetrics' AUPR/AUROC apply a sigmoid to batches outside)
    maps = rng.random((num_images, size, size)) * 0.6 + masks * rng.random((num_images, size, size)) * 0.4
    if levels is not None:  # coarse scores -> many ties
        maps = np.round(maps * levels) / levels
    return torch.from_numpy(maps).float(), torch.from_numpy(masks)


def _naive_iap(maps: torch.Tensor, masks: torch.Tensor, recall_level: float = 0.9) -> tuple[float, float]:
    """Straightforward re-implementation: flood fill, per-threshold re-thresholding, position-based recall."""
    maps_np, masks_np = maps.double().numpy(), masks.numpy()
    scores = []
    for image in range(len(masks_np)):
        seen = np.zeros_like(masks_np[image])
        height, width = masks_np[image].shape
        for y0 in range(height):
            for x0 in range(width):
                if not masks_np[image, y0, x0] or seen[y0, x0]:
                    continue
                stack, values = [(y0, x0)], []
                seen[y0, x0] = True
                while stack:
                    y, x = stack.pop()
                    values.append(maps_np[image, y, x])
                    for dy in (-1, 0, 1):
                        for dx in (-1, 0, 1):
                            ny, nx = y + dy, x + dx
                            if 0 <= ny < height and 0 <= nx < width and masks_np[image, ny, nx] and not seen[ny, nx]:
                                seen[ny, nx] = True
                                stack.append((ny, nx))
                values.sort(reverse=True)
                scores.append(values[len(values) // 2])
    scores.sort()  # low -> high threshold
    precision, recall = [], []
    for position, threshold in enumerate(scores):
        predicted = maps_np >= threshold
        precision.append((predicted & masks_np).sum() / predicted.sum())
        recall.append(1 - position / len(scores))
    for position in range(1, len(precision)):  # running max from low to high thresholds
        precision[position] = max(precision[position], precision[position - 1])
    iap = sum(precision) / len(precision)
    recall, precision = recall[::-1], precision[::-1]
    return iap, precision[bisect.bisect_left(recall, recall_level - 1e-12)]


# --------------------------------------------------------------------------- instances


def test_instance_score_is_descending_rank_floor_half_n() -> None:
    # One instance per 1x5 image, made of its first n pixels (other pixels 0):
    # n=1 [.3]               -> sorted .3             index 0 -> .3
    # n=2 [.2 .6]            -> sorted .6 .2          index 1 -> .2
    # n=3 [.1 .9 .5]         -> sorted .9 .5 .1       index 1 -> .5
    # n=4 [.4 .5 .4 .5]      -> sorted .5 .5 .4 .4    index 2 -> .4 (ties)
    # n=5 [.1 .9 .5 .7 .3]   -> sorted .9 .7 .5 .3 .1 index 2 -> .5
    rows = [[0.3], [0.2, 0.6], [0.1, 0.9, 0.5], [0.4, 0.5, 0.4, 0.5], [0.1, 0.9, 0.5, 0.7, 0.3]]
    maps = torch.zeros(5, 1, 5)
    masks = torch.zeros(5, 1, 5, dtype=torch.bool)
    for image, row in enumerate(rows):
        maps[image, 0, : len(row)] = torch.tensor(row)
        masks[image, 0, : len(row)] = True
    expected = torch.tensor([0.3, 0.2, 0.5, 0.4, 0.5])
    torch.testing.assert_close(compute_instance_scores(maps, masks), expected)
    # coverage=0 -> the best pixel of each instance
    torch.testing.assert_close(
        compute_instance_scores(maps, masks, coverage=0.0), torch.tensor([0.3, 0.6, 0.9, 0.5, 0.9])
    )


def test_instances_are_8_connected_and_per_image() -> None:
    masks = torch.zeros(2, 4, 4, dtype=torch.bool)
    masks[0, 0, 0] = masks[0, 1, 1] = masks[0, 2, 2] = True  # diagonal: one 8-connected instance
    masks[0, 0, 3] = True  # separate
    masks[1, 0, 0] = True  # same position, other image: separate
    labels, count = label_instances(masks)
    assert count == 3
    assert labels[0, 0, 0] == labels[0, 1, 1] == labels[0, 2, 2] == 1
    assert labels[0, 0, 3] == 2
    assert labels[1, 0, 0] == 3
    assert (labels[~masks] == 0).all()


def test_instance_scores_of_the_basic_case() -> None:
    # A: .9 .6 .8 -> sorted .9 .8 .6, index 1 -> .8; B: .7; C: .3 .2 -> index 1 -> .2 (raster order A, B, C)
    maps, masks = _basic_case()
    torch.testing.assert_close(compute_instance_scores(maps, masks), torch.tensor([0.8, 0.7, 0.2]))


# --------------------------------------------------------------------------- hand-computed IAP


def test_hand_computed_interpolation_two_instances_and_defect_free_image() -> None:
    # 6 defect pixels (.9 .6 .8 .7 .3 .2) and 42 others (.85, .75, forty times .1). Thresholds .8 > .7 > .2:
    # t=.8: TP = {.9, .8} = 2, FP = {.85} = 1                      -> precision 2/3, recall 1/3
    # t=.7: TP = {.9, .8, .7} = 3, FP = {.85, .75} = 2             -> precision 3/5, recall 2/3
    # t=.2: TP = all 6, FP = {.85, .75} = 2                         -> precision 6/8, recall 1
    # Interpolated (max over equal-or-lower thresholds): .75, .75, .75 -> IAP = .75; IAP@90 (recall 1) = .75.
    # (Without interpolation the mean would be (2/3 + 3/5 + 3/4) / 3 = 0.672.)
    maps, masks = _basic_case()
    iap, iap90 = instance_average_precision(maps, masks)
    assert iap == pytest.approx(0.75, abs=1e-12)
    assert iap90 == pytest.approx(0.75, abs=1e-12)


def test_hand_computed_missed_image() -> None:
    # Same, but instance C scores 0 and 0: it is found only at t=0, where all 48 pixels are positive.
    # t=.8: 2/3 (recall 1/3); t=.7: 3/5 (recall 2/3); t=0: 6/48 = 1/8 (recall 1)
    # Interpolated: max(2/3, 3/5, 1/8) = 2/3, max(3/5, 1/8) = 3/5, 1/8
    # IAP = (2/3 + 3/5 + 1/8) / 3 = (80 + 72 + 15) / 360 = 167/360; IAP@90 -> first recall >= .9 is 1 -> 1/8
    maps, masks = _basic_case(missed_scores=(0.0, 0.0))
    iap, iap90 = instance_average_precision(maps, masks)
    assert iap == pytest.approx(167 / 360, abs=1e-12)
    assert iap90 == pytest.approx(1 / 8, abs=1e-12)
    # Recall levels are compared exactly: k = 2/3 is reached at the 2nd point (recall 2/3) -> 3/5; k = .6 too.
    assert instance_average_precision(maps, masks, recall_level=2 / 3)[1] == pytest.approx(3 / 5, abs=1e-12)
    assert instance_average_precision(maps, masks, recall_level=0.6)[1] == pytest.approx(3 / 5, abs=1e-12)
    assert instance_average_precision(maps, masks, recall_level=0.7)[1] == pytest.approx(1 / 8, abs=1e-12)


def test_hand_computed_ties() -> None:
    # One 4x4 image. A = (0,0),(0,1) scores .5 .5 -> .5;  D = (2,0) score .9 -> .9;  B = (3,3) score .5 -> .5.
    # Others: (1,3) = .95, (3,0) = .5 (tied with the thresholds), the remaining 10 pixels 0.
    # t=.9: TP = {.9} = 1, FP = {.95} = 1 -> 1/2 (recall 1/3)
    # t=.5 (A and B tie: both at recall 1): TP = 4, FP = {.95, .5} = 2 -> 4/6 = 2/3 (a score equal to t counts)
    # Interpolated: 2/3, 2/3, 2/3 -> IAP = 2/3, IAP@90 = 2/3
    maps = torch.zeros(1, 4, 4)
    masks = torch.zeros(1, 4, 4, dtype=torch.bool)
    for (y, x), score in {(0, 0): 0.5, (0, 1): 0.5, (2, 0): 0.9, (3, 3): 0.5}.items():
        maps[0, y, x], masks[0, y, x] = score, True
    maps[0, 1, 3], maps[0, 3, 0] = 0.95, 0.5
    assert instance_average_precision(maps, masks) == pytest.approx((2 / 3, 2 / 3), abs=1e-12)
    # The tie with a defect-free pixel matters: nudging (3,0) below .5 gives precision 4/5 at t=.5.
    maps[0, 3, 0] = 0.49
    assert instance_average_precision(maps, masks) == pytest.approx((0.8, 0.8), abs=1e-12)


def test_perfect_and_input_forms() -> None:
    maps, masks = _basic_case()
    maps = masks.float() * 0.5 + 0.25  # every defect pixel above every other pixel
    assert instance_average_precision(maps, masks) == (1.0, 1.0)
    # [N, 1, H, W], 0/1 float masks, integer maps and a single [H, W] image are accepted
    maps, masks = _basic_case(missed_scores=(0.0, 0.0))
    expected = instance_average_precision(maps, masks)
    assert instance_average_precision(maps[:, None], masks[:, None].float()) == expected
    assert instance_average_precision((maps * 100).round().int(), masks.int()) == pytest.approx(expected, abs=1e-12)
    assert instance_average_precision(maps[0], masks[0]) == instance_average_precision(maps[:1], masks[:1])


@pytest.mark.parametrize(("seed", "levels"), [(0, None), (1, 10), (2, 3)])
def test_matches_naive_implementation(seed: int, levels: int | None) -> None:
    maps, masks = _blob_data(num_images=6, size=16, seed=seed, levels=levels)
    iap, iap90 = instance_average_precision(maps, masks)
    naive_iap, naive_iap90 = _naive_iap(maps, masks)
    assert iap == pytest.approx(naive_iap, abs=1e-12)
    assert iap90 == pytest.approx(naive_iap90, abs=1e-12)


# --------------------------------------------------------------------------- errors


def test_empty_ground_truth_raises_in_function() -> None:
    with pytest.raises(ValueError, match="no defect pixel"):
        instance_average_precision(torch.rand(2, 8, 8), torch.zeros(2, 8, 8, dtype=torch.bool))


@pytest.mark.parametrize(
    ("maps", "masks", "message"),
    [
        (torch.rand(2, 8, 8), torch.zeros(2, 8, 9, dtype=torch.bool), "same shape"),
        (torch.rand(2, 8, 8), torch.zeros(3, 8, 8, dtype=torch.bool), "same shape"),
        (torch.rand(2, 3, 8, 8), torch.zeros(2, 3, 8, 8, dtype=torch.bool), "shape"),
        (torch.rand(8), torch.zeros(8, dtype=torch.bool), "shape"),
        (torch.rand(2, 8, 8), torch.full((2, 8, 8), 2), "binary"),
        (torch.rand(2, 8, 8), torch.full((2, 8, 8), 0.5), "binary"),
        (torch.full((2, 8, 8), math.nan), torch.ones(2, 8, 8, dtype=torch.bool), "NaN"),
        (torch.zeros(2, 8, 8, dtype=torch.bool), torch.ones(2, 8, 8, dtype=torch.bool), "real-valued"),
    ],
)
def test_bad_inputs_raise(maps: torch.Tensor, masks: torch.Tensor, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        instance_average_precision(maps, masks)
    with pytest.raises(ValueError, match=message):
        _InstanceAP().update(maps, masks)  # what IAP.update(batch) forwards the batch fields to


@pytest.mark.parametrize(("coverage", "recall_level"), [(1.0, 0.9), (-0.1, 0.9), (0.5, 0.0), (0.5, 1.5)])
def test_bad_parameters_raise(coverage: float, recall_level: float) -> None:
    maps, masks = _basic_case()
    with pytest.raises(ValueError, match=r"coverage|recall_level"):
        instance_average_precision(maps, masks, coverage=coverage, recall_level=recall_level)
    with pytest.raises(ValueError, match=r"coverage|recall_level"):
        IAP(coverage=coverage, recall_level=recall_level)


# --------------------------------------------------------------------------- anomalib metrics


@pytest.mark.parametrize("batch_size", [1, 2, 4])
def test_metric_accumulates_like_function(batch_size: int) -> None:
    maps, masks = _blob_data(num_images=8, size=24, seed=3)
    expected = instance_average_precision(maps, masks)
    iap, iap90 = IAP(prefix="pixel_"), IAP90(prefix="pixel_")
    for batch in _batches(maps, masks, batch_size):
        iap.update(batch)
        iap90.update(batch)
    assert (iap.name, iap90.name) == ("pixel_IAP", "pixel_IAP90")
    assert iap.compute().item() == pytest.approx(expected[0], abs=1e-6)
    assert iap90.compute().item() == pytest.approx(expected[1], abs=1e-6)
    assert InstanceAP is IAP
    assert InstanceAP90 is IAP90


def test_metric_hand_computed_values_through_image_batches() -> None:
    maps, masks = _basic_case(missed_scores=(0.0, 0.0))
    iap, iap90 = IAP(), IAP90()
    for batch in _batches(maps, masks, 2):
        iap.update(batch)
        iap90.update(batch)
    assert iap.compute().item() == pytest.approx(167 / 360, abs=1e-6)
    assert iap90.compute().item() == pytest.approx(1 / 8, abs=1e-6)
    iap.reset()
    iap.update(_batches(maps, masks, 3)[0])
    assert iap.compute().item() == pytest.approx(167 / 360, abs=1e-6)


def test_merged_states_like_ddp_equal_function() -> None:
    # torchmetrics' merge_state applies the same reductions ("cat" / "sum") as a DDP sync.
    maps, masks = _blob_data(num_images=8, size=24, seed=4)
    for compact in (False, True):
        first, second = IAP(compact=compact), IAP(compact=compact)
        for index, batch in enumerate(_batches(maps, masks, 2)):
            (first if index % 2 else second).update(batch)
        first.merge_state(second)
        reference = maps.half() if compact else maps
        assert first.compute().item() == pytest.approx(instance_average_precision(reference, masks)[0], abs=1e-6)


def test_compact_metric_is_exact_for_float16_maps_and_close_otherwise() -> None:
    maps, masks = _blob_data(num_images=8, size=32, seed=5)
    maps = maps * 2 - 0.5  # include negative scores
    exact = instance_average_precision(maps, masks)
    exact_half = instance_average_precision(maps.half(), masks)
    iap, iap90 = IAP(compact=True), IAP90(compact=True)
    for batch in _batches(maps, masks, 3):
        iap.update(batch)
        iap90.update(batch)
    assert iap.positive_hist.shape == iap.pixel_hist.shape == (65536,)
    assert not hasattr(iap, "positive_scores")
    assert not hasattr(iap, "pixel_scores")
    assert iap.compute().item() == pytest.approx(exact_half[0], abs=1e-6)
    assert iap90.compute().item() == pytest.approx(exact_half[1], abs=1e-6)
    assert iap.compute().item() == pytest.approx(exact[0], abs=5e-3)


def test_metric_empty_ground_truth_and_missing_masks() -> None:
    maps = torch.rand(2, 8, 8)
    empty = ImageBatch(image=torch.zeros(2, 3, 8, 8), anomaly_map=maps, gt_mask=torch.zeros(2, 8, 8, dtype=torch.bool))
    for compact in (False, True):
        metric = IAP(compact=compact)
        metric.update(empty)
        with pytest.warns(UserWarning, match="no ground-truth instance"):
            assert math.isnan(metric.compute().item())
    # strict=False: batches without gt_mask are skipped, nothing seen -> None (like anomalib's pixel metrics)
    no_mask = ImageBatch(image=torch.zeros(2, 3, 8, 8), anomaly_map=maps)
    lenient = IAP90(strict=False)
    lenient.update(no_mask)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert lenient.compute() is None
    with pytest.raises(ValueError, match="gt_mask"):
        IAP(strict=True).update(no_mask)


def test_pixel_ap_matches_sklearn() -> None:
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    maps, masks = _blob_data(num_images=6, size=24, seed=6, levels=20)  # with ties
    aupr = AUPR(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False)
    for batch in _batches(maps, masks, 4):
        aupr.update(batch)
    expected = sklearn_metrics.average_precision_score(masks.flatten().numpy(), maps.flatten().numpy())
    assert aupr.name == "pixel_AUPR"
    assert aupr.compute().item() == pytest.approx(expected, abs=1e-5)


def test_paper_evaluator_plugs_in_with_image_batches() -> None:
    maps, masks = _blob_data(num_images=6, size=32, seed=7)
    masks[[1, 4]] = False  # two defect-free images
    evaluator = paper_evaluator()
    assert isinstance(evaluator, Evaluator)
    names = [metric.name for metric in evaluator.test_metrics]
    assert names == [
        "image_AUROC",
        "image_F1Score",
        "pixel_AUROC",
        "pixel_F1Score",
        "pixel_AUPR",
        "pixel_AUPRO",
        "pixel_IAP",
        "pixel_IAP90",
    ]
    aupro = evaluator.test_metrics[5]
    assert float(aupro.fpr_limit) == pytest.approx(0.3)
    for index in range(0, 6, 3):
        sl = slice(index, index + 3)
        pred_score = maps[sl].flatten(1).max(1).values
        batch = ImageBatch(
            image=torch.zeros(3, 3, 32, 32),
            anomaly_map=maps[sl],
            gt_mask=masks[sl],
            pred_mask=maps[sl] > 0.6,
            pred_score=pred_score,
            pred_label=pred_score > 0.6,
            gt_label=masks[sl].flatten(1).any(1),
        )
        evaluator.on_test_batch_end(None, None, None, batch, index)
    values = {metric.name: metric.compute().item() for metric in evaluator.test_metrics}
    expected = instance_average_precision(maps, masks)
    assert values["pixel_IAP"] == pytest.approx(expected[0], abs=1e-6)
    assert values["pixel_IAP90"] == pytest.approx(expected[1], abs=1e-6)
    assert all(0.0 <= value <= 1.0 for value in values.values())


def test_float16_bins_preserve_order() -> None:
    from anomalib_destseg.metrics.instance_ap_metric import _half_keys

    bits = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16)
    halves = bits.view(torch.float16)
    keep = ~torch.isnan(halves) & (bits != -(2**15))  # every non-NaN float16 except -0.0
    halves = torch.sort(halves[keep]).values.float()
    keys = _half_keys(halves)
    assert keys.min() >= 0 and keys.max() < 2**16
    assert (keys.diff() > 0).all()
    assert _half_keys(torch.tensor([-0.0, 0.0])).tolist() == [32767, 32768]  # merged by the metric


def test_compact_metric_merges_signed_zeros() -> None:
    # Defect pixels at +0.0 / -0.0 and others at -0.0 / +0.0 / -1: zeros must compare equal in both modes.
    maps = torch.tensor([[[0.0, -0.0, -1.0, 0.5], [-0.0, 0.0, -1.0, -1.0]]])
    masks = torch.tensor([[[1, 0, 0, 0], [0, 0, 0, 1]]], dtype=torch.bool)  # instances: (0,0) -> 0.0, (1,3) -> -1
    # t=0: TP = {0.0} = 1, predicted = {0, -0, .5, -0, 0} = 5 -> 1/5; t=-1: TP 2 / all 8 -> 1/4
    # interpolated: 1/4, 1/4 -> IAP = 1/4
    expected = instance_average_precision(maps, masks)
    assert expected == pytest.approx((0.25, 0.25), abs=1e-12)
    metric = IAP(compact=True)
    metric.update(_batches(maps, masks, 1)[0])
    assert metric.compute().item() == pytest.approx(0.25, abs=1e-12)


def test_float16_histogram_matches_keys() -> None:
    from anomalib_destseg.metrics.instance_ap_metric import _half_histogram, _half_keys

    scores = torch.cat([torch.randn(5000) * 10, torch.tensor([0.0, -0.0, math.inf, -math.inf, 65504.0])]).half()
    expected = torch.bincount(_half_keys(scores).long(), minlength=2**16)
    assert torch.equal(_half_histogram(scores), expected)


def _post_processed_batch(post_processor) -> ImageBatch:
    """Scores 0.1, 0.2, 0.9, 0.95 (labels 0, 1, 0, 1) after validation set min 0, max 1 and threshold 0.9."""
    post_processor.image_min.fill_(0.0)
    post_processor.image_max.fill_(1.0)
    post_processor._image_threshold.fill_(0.9)
    batch = ImageBatch(
        image=torch.zeros(4, 3, 8, 8),
        pred_score=torch.tensor([0.1, 0.2, 0.9, 0.95]),
        gt_label=torch.tensor([0, 1, 0, 1]),
    )
    post_processor.on_test_batch_end(None, None, batch)
    return batch


def test_raw_scores_reach_the_metrics_while_labels_come_from_the_normalised_threshold() -> None:
    """Clamping ties 0.1 and 0.2 at 0: AUROC 0.625 on normalised scores, 0.75 on the raw ones (hand-computed).

    Normalised = clamp(score - 0.9 + 0.5, 0, 1) = 0, 0, 0.5, 0.55. Raw pairs (positive > negative): 0.2 > 0.1,
    0.2 < 0.9, 0.95 > 0.1, 0.95 > 0.9: 3 of 4. Normalised: the tie 0 = 0 counts half: 2.5 of 4.
    """
    raw_batch = _post_processed_batch(RawScorePostProcessor())
    assert torch.equal(raw_batch.raw_pred_score, torch.tensor([0.1, 0.2, 0.9, 0.95]))
    assert torch.allclose(raw_batch.pred_score, torch.tensor([0.0, 0.0, 0.5, 0.55]))
    assert raw_batch.pred_label.tolist() == [False, False, False, True]  # normalised > 0.5 <=> raw > 0.9
    paper = paper_evaluator()
    paper.test_metrics[0].update(raw_batch)
    assert paper.test_metrics[0].compute().item() == pytest.approx(0.75)
    anomalib_default = paper_evaluator(raw_scores=False)
    anomalib_default.test_metrics[0].update(raw_batch)
    assert anomalib_default.test_metrics[0].compute().item() == pytest.approx(0.625)


def test_the_paper_evaluator_falls_back_to_post_processed_scores_with_a_warning(caplog) -> None:
    from anomalib.post_processing import PostProcessor

    batch = _post_processed_batch(PostProcessor())  # anomalib's own keeps no raw scores
    evaluator = paper_evaluator()
    with caplog.at_level("WARNING"):
        evaluator.on_test_batch_end(None, None, batch, batch, 0)
    assert "kept no raw scores" in caplog.text
    assert evaluator.test_metrics[0].compute().item() == pytest.approx(0.625)


def test_the_second_maps_metrics_read_its_raw_fields_and_a_batch_without_it_is_refused() -> None:
    """DeST scores 0.3, 0.35, 0.4, 0.2 (labels 0, 1, 0, 1): image AUROC 0.25 by hand (1 of 4 pairs ordered right)."""
    batch = _post_processed_batch(RawScorePostProcessor())
    batch.dest_pred_score = torch.tensor([0.3, 0.35, 0.4, 0.2])
    batch.dest_anomaly_map = torch.zeros(4, 1, 8, 8)  # no gt_mask: the pixel metrics skip the batch
    evaluator = paper_evaluator(second_map="dest")
    evaluator.on_test_batch_end(None, None, batch, batch, 0)
    by_name = {metric.name: metric for metric in evaluator.test_metrics}
    assert by_name["image_AUROC"].compute().item() == pytest.approx(0.75)  # the output map's, as before
    assert by_name["DeST_image_AUROC"].compute().item() == pytest.approx(0.25)
    assert by_name["DeST_pixel_AUROC"].compute() is None
    missing = _post_processed_batch(RawScorePostProcessor())
    with pytest.raises(ValueError, match=r"does not carry it \(dest_anomaly_map\): test with the model's second_map"):
        evaluator.on_test_batch_end(None, None, missing, missing, 0)
    with pytest.raises(ValueError, match="second_map must be one of"):
        paper_evaluator(second_map="DeST")
