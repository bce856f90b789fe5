"""Grounding metrics for box answers: mAP at IoU 0.5 (RadVLM's grounding metric), mean IoU of
one-to-one matched boxes, and precision / recall at IoU 0.5.

Predictions parsed from text carry no confidence, so every predicted box is scored 1.0. With tied
scores COCO-style AP ranks the boxes in the order given (stable sort): samples in order, each
sample's boxes in the order the model wrote them. That makes AP deterministic, and for one box per
sample it is the usual single-operating-point value.

mAP comes from torchmetrics' `MeanAveragePrecision(iou_thresholds=[0.5], box_format="xyxy")`
(pycocotools backend) when torchvision is installed (torchmetrics needs it for its box-format
conversion). Without torchvision the same pycocotools `COCOeval` runs directly with the settings
torchmetrics passes it (IoU thresholds [0.5], 101 recall points, max detections 1/10/100, area =
w*h, iscrowd 0), which gives the same number. torch / torchmetrics / pycocotools are imported
lazily: they come with the `[train]` extra.
"""

from __future__ import annotations

import contextlib
import io
import itertools
from collections.abc import Hashable, Sequence

from radcorpora.ops.boxes import iou
from radcorpora.schemas.boxes import Box

IOU_THRESHOLD = 0.5
PREDICTION_SCORE = 1.0  # text answers carry no confidence
_REC_THRESHOLDS = [i / 100 for i in range(101)]
_MAX_DETECTIONS = [1, 10, 100]


def grounding_scores(predictions: Sequence[Sequence[Box]], targets: Sequence[Sequence[Box]],
                     labels: Sequence[Hashable] | None = None, backend: str = "auto") -> dict:
    """Scores of predicted boxes against target boxes, one list of each per sample.

    `labels` (optional) names each sample's class (the grounded finding or region); mAP is then
    the mean over classes (macro, as COCO), otherwise all boxes are one class. `backend`: "auto"
    (torchmetrics when torchvision is importable, else pycocotools), "torchmetrics" or
    "pycocotools".

    Returns `map50` (-1.0 when there are no target boxes, as torchmetrics reports an undefined
    value), `mean_iou` (over the min(#predicted, #target) one-to-one pairs of each sample, chosen to
    maximise the summed IoU; a pair that does not overlap counts 0; 0.0 when nothing can be paired), `precision50` / `recall50` (one-to-one matches with IoU >= 0.5, the
    number of matches maximised; 0.0 when there is nothing to divide by), and the counts
    `samples`, `predicted`, `targets`, `matched_pairs`, `true_positives`, plus `map_backend`.
    """
    predictions = [list(p) for p in predictions]
    targets = [list(t) for t in targets]
    if len(predictions) != len(targets):
        raise ValueError(f"{len(predictions)} prediction lists but {len(targets)} target lists")
    if labels is not None:
        labels = list(labels)
        if len(labels) != len(targets):
            raise ValueError(f"{len(labels)} labels but {len(targets)} samples")
    for boxes in itertools.chain(predictions, targets):
        for box in boxes:
            if not isinstance(box, Box):
                raise TypeError(f"expected Box, got {type(box).__name__}")

    pair_ious: list[float] = []
    true_positives = 0
    for pred, target in zip(predictions, targets):
        matrix = [[iou(p, t) for t in target] for p in pred]
        pair_ious.extend(matrix[i][j] for i, j in max_weight_matching(matrix))
        big = len(pred) + len(target) + 1  # more matches always beat a higher IoU sum
        hits = [[(big + v) if v >= IOU_THRESHOLD else 0.0 for v in row] for row in matrix]
        true_positives += sum(1 for i, j in max_weight_matching(hits) if matrix[i][j] >= IOU_THRESHOLD)
    n_pred = sum(len(p) for p in predictions)
    n_target = sum(len(t) for t in targets)

    class_ids = _class_ids(labels, len(targets))
    map50, used = _map50(predictions, targets, class_ids, backend) if n_target else (-1.0, "none")
    return {
        "map50": map50,
        "mean_iou": sum(pair_ious) / len(pair_ious) if pair_ious else 0.0,
        "precision50": true_positives / n_pred if n_pred else 0.0,
        "recall50": true_positives / n_target if n_target else 0.0,
        "samples": len(targets),
        "predicted": n_pred,
        "targets": n_target,
        "matched_pairs": len(pair_ious),
        "true_positives": true_positives,
        "map_backend": used,
    }


def _class_ids(labels: list | None, n: int) -> list[int]:
    if labels is None:
        return [0] * n
    names = sorted({str(v) for v in labels})
    index = {name: i for i, name in enumerate(names)}
    return [index[str(v)] for v in labels]


# ------------------------------------------------------------------------------ assignment


def max_weight_matching(weights: Sequence[Sequence[float]]) -> list[tuple[int, int]]:
    """A full one-to-one assignment (min(rows, columns) pairs `(row, column)`, sorted) maximising the
    summed weight.

    scipy's `linear_sum_assignment` when scipy is installed, else the Hungarian algorithm below
    (O(n^3); boxes per answer are few). Both return an optimal assignment.
    """
    rows = len(weights)
    cols = len(weights[0]) if rows else 0
    if rows == 0 or cols == 0:
        return []
    try:
        from scipy.optimize import linear_sum_assignment
    except ImportError:
        pairs = _hungarian_max(weights)
    else:
        import numpy as np

        r, c = linear_sum_assignment(np.asarray(weights, dtype=float), maximize=True)
        pairs = list(zip(r.tolist(), c.tolist()))
    return sorted(pairs)


def _hungarian_max(weights: Sequence[Sequence[float]]) -> list[tuple[int, int]]:
    """Maximum-weight assignment of a rectangular matrix (Kuhn-Munkres with potentials)."""
    transpose = len(weights) > len(weights[0])
    w = [list(col) for col in zip(*weights)] if transpose else [list(row) for row in weights]
    n, m = len(w), len(w[0])  # n <= m: every row gets a column
    top = max(max(row) for row in w)
    cost = [[top - v for v in row] for row in w]  # minimise cost == maximise weight
    inf = float("inf")
    u, v = [0.0] * (n + 1), [0.0] * (m + 1)
    owner = [0] * (m + 1)  # owner[j] = row (1-based) assigned to column j; 0 = free
    way = [0] * (m + 1)
    for i in range(1, n + 1):
        owner[0] = i
        j0 = 0
        minv = [inf] * (m + 1)
        used = [False] * (m + 1)
        while True:
            used[j0] = True
            i0, delta, j1 = owner[j0], inf, 0
            for j in range(1, m + 1):
                if not used[j]:
                    cur = cost[i0 - 1][j - 1] - u[i0] - v[j]
                    if cur < minv[j]:
                        minv[j], way[j] = cur, j0
                    if minv[j] < delta:
                        delta, j1 = minv[j], j
            for j in range(m + 1):
                if used[j]:
                    u[owner[j]] += delta
                    v[j] -= delta
                else:
                    minv[j] -= delta
            j0 = j1
            if owner[j0] == 0:
                break
        while j0:
            j1 = way[j0]
            owner[j0] = owner[j1]
            j0 = j1
    pairs = [(owner[j] - 1, j - 1) for j in range(1, m + 1) if owner[j]]
    return [(j, i) for i, j in pairs] if transpose else pairs


# -------------------------------------------------------------------------------------- mAP


def _map50(predictions: list[list[Box]], targets: list[list[Box]], class_ids: list[int],
           backend: str) -> tuple[float, str]:
    if backend not in ("auto", "torchmetrics", "pycocotools"):
        raise ValueError(f"backend must be auto, torchmetrics or pycocotools, got {backend!r}")
    if backend == "auto":
        backend = "torchmetrics" if _torchvision_available() else "pycocotools"
    if backend == "torchmetrics":
        return _map50_torchmetrics(predictions, targets, class_ids), "torchmetrics"
    return _map50_pycocotools(predictions, targets, class_ids), "pycocotools"


def _torchvision_available() -> bool:
    try:
        import torchvision  # noqa: F401
    except ImportError:
        return False
    return True


def _map50_torchmetrics(predictions: list[list[Box]], targets: list[list[Box]], class_ids: list[int]) -> float:
    import torch
    from torchmetrics.detection.mean_ap import MeanAveragePrecision

    def boxes(items: list[Box]) -> torch.Tensor:
        return torch.tensor([list(b.xyxy) for b in items], dtype=torch.float64).reshape(-1, 4)

    metric = MeanAveragePrecision(iou_thresholds=[IOU_THRESHOLD], box_format="xyxy", iou_type="bbox",
                                  backend="pycocotools")
    metric.update(
        [{"boxes": boxes(p), "scores": torch.full((len(p),), PREDICTION_SCORE, dtype=torch.float64),
          "labels": torch.full((len(p),), c, dtype=torch.int64)} for p, c in zip(predictions, class_ids)],
        [{"boxes": boxes(t), "labels": torch.full((len(t),), c, dtype=torch.int64)}
         for t, c in zip(targets, class_ids)],
    )
    return float(metric.compute()["map"])


def _map50_pycocotools(predictions: list[list[Box]], targets: list[list[Box]], class_ids: list[int]) -> float:
    import numpy as np
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    def xywh(b: Box) -> list[float]:
        return [b.x1, b.y1, b.x2 - b.x1, b.y2 - b.y1]

    images = [{"id": i} for i in range(len(targets))]
    categories = [{"id": c} for c in sorted(set(class_ids))]
    gt_annotations, dt_annotations = [], []
    for i, (pred, target, c) in enumerate(zip(predictions, targets, class_ids)):
        for b in target:
            bbox = xywh(b)
            gt_annotations.append({"id": len(gt_annotations) + 1, "image_id": i, "category_id": c, "bbox": bbox,
                                   "area": bbox[2] * bbox[3], "iscrowd": 0})
        for b in pred:
            bbox = xywh(b)
            dt_annotations.append({"id": len(dt_annotations) + 1, "image_id": i, "category_id": c, "bbox": bbox,
                                   "area": bbox[2] * bbox[3], "iscrowd": 0, "score": PREDICTION_SCORE})
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        gt, dt = COCO(), COCO()
        gt.dataset = {"images": images, "annotations": gt_annotations, "categories": categories}
        dt.dataset = {"images": images, "annotations": dt_annotations, "categories": categories}
        gt.createIndex()
        dt.createIndex()
        evaluator = COCOeval(gt, dt, iouType="bbox")
        evaluator.params.iouThrs = np.array([IOU_THRESHOLD], dtype=np.float64)
        evaluator.params.recThrs = np.array(_REC_THRESHOLDS, dtype=np.float64)
        evaluator.params.maxDets = list(_MAX_DETECTIONS)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return float(evaluator.stats[0])
