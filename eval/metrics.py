"""HEAR 2021 scores, computed as hear-eval-kit's `heareval/score.py` computes them.

Scene scores take `predictions` (N, C) class scores (softmax or sigmoid outputs) and `targets`
(N, C) one-hot / multi-hot. Event scores take two dicts `{filename: [{"label", "start", "end"}, ...]}`
(times in ms), the predicted events and the reference events, plus the task's label list; they are
sed_eval's event- and segment-based metrics with hear-eval-kit's parameters, evaluated file by file
over the files that have predictions and pooled over all files and labels ("overall", micro).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
from scipy import stats
from sklearn.metrics import average_precision_score, roc_auc_score

from .tasks import Events


def _check_scene_shapes(predictions: np.ndarray, targets: np.ndarray) -> None:
    if predictions.ndim != 2 or predictions.shape != targets.shape:
        raise ValueError(f"scene scores need predictions and targets of the same (N, C) shape, got "
                         f"{predictions.shape} and {targets.shape}")
    if len(targets) == 0:
        raise ValueError("scene scores need at least one example")


def top1_acc(predictions: np.ndarray, targets: np.ndarray) -> float:
    """Fraction of examples whose highest-scoring class is the target class (also `pitch_acc`)."""
    predictions, targets = np.asarray(predictions), np.asarray(targets)
    _check_scene_shapes(predictions, targets)
    return float(np.mean(predictions.argmax(1) == targets.argmax(1)))


def chroma_acc(predictions: np.ndarray, targets: np.ndarray) -> float:
    """Top-1 accuracy up to octave errors: class indices compared modulo 12 (semitone classes)."""
    predictions, targets = np.asarray(predictions), np.asarray(targets)
    _check_scene_shapes(predictions, targets)
    return float(np.mean(predictions.argmax(1) % 12 == targets.argmax(1) % 12))


def mAP(predictions: np.ndarray, targets: np.ndarray) -> float:
    """Average precision per class, macro-averaged (every class counts the same).

    A class with no positive example in the split: scikit-learn 1.1 and later warn and give it AP 0, which
    enters the mean; so does hear-eval-kit 2021.1.3 run with them (it calls the same function). With the
    scikit-learn of its time (before 1.1: recall 0/0) that class's AP, and so the mean, was NaN. We give
    what current scikit-learn gives (0 for the class).
    """
    predictions, targets = np.asarray(predictions), np.asarray(targets)
    _check_scene_shapes(predictions, targets)
    with warnings.catch_warnings():  # a class with no positive example: sklearn warns, AP is 0
        warnings.simplefilter("ignore")
        return float(average_precision_score(targets, predictions, average="macro"))


def _roc_auc(predictions: np.ndarray, targets: np.ndarray, average: Optional[str]):
    """sklearn's ROC AUC (macro mean, or per class with average=None); None where it is undefined."""
    predictions, targets = np.asarray(predictions), np.asarray(targets)
    _check_scene_shapes(predictions, targets)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return roc_auc_score(targets, predictions, average=average)
    except ValueError:  # some class has only positives or only negatives
        return None


def aucroc(predictions: np.ndarray, targets: np.ndarray) -> float:
    """ROC AUC per class, macro-averaged; NaN when some class has only positives or only negatives."""
    auc = _roc_auc(predictions, targets, "macro")
    return math.nan if auc is None else float(auc)


def d_prime(predictions: np.ndarray, targets: np.ndarray) -> float:
    """Mean over classes of sqrt(2) * Phi^-1(AUC_c); NaN where aucroc is undefined."""
    auc = _roc_auc(predictions, targets, None)  # (C,)
    if auc is None:
        return math.nan
    return float(np.mean(stats.norm().ppf(auc) * np.sqrt(2.0)))


def _sed_eval_container(filename: str, events: List[dict]):
    from dcase_util.containers import MetaDataContainer

    return MetaDataContainer([{"event_label": str(e["label"]), "event_onset": e["start"] / 1000.0,
                               "event_offset": e["end"] / 1000.0, "file": filename} for e in events])


def _sed_eval_overall(predicted: Events, target: Events, labels: Sequence[str], *, segment_based: bool,
                      **params) -> Dict[str, float]:
    """sed_eval's overall metrics, flattened: {'f_measure', 'precision', 'recall', 'error_rate', ...}."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # dcase_util / librosa import-time deprecation warnings
        import sed_eval

        metric_class = (sed_eval.sound_event.SegmentBasedMetrics if segment_based
                        else sed_eval.sound_event.EventBasedMetrics)
        metrics = metric_class(event_label_list=[str(label) for label in labels], **params)
        for filename in predicted:  # hear-eval-kit: the files with predictions, one at a time
            metrics.evaluate(reference_event_list=_sed_eval_container(filename, target.get(filename, [])),
                             estimated_event_list=_sed_eval_container(filename, predicted[filename]))
        overall = metrics.results_overall_metrics()
    return {name: float(value) for group in overall.values() for name, value in group.items()}


def _event_fms(predicted: Events, target: Events, *, t_collar: float, evaluate_offset: bool = False,
               percentage_of_length: float = 0.5) -> float:
    """sed_eval's event-based overall F-measure (optimal matching), computed directly: per file, the
    largest matching of reference and estimated events with the same label whose onsets (and offsets)
    agree within the collar; F = 2PR / (P + R) over the counts pooled across files (NaN without
    predictions, as sed_eval). Used where speed matters (validation checks); equal to sed_eval's value."""
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import maximum_bipartite_matching

    n_ref = n_sys = n_hits = 0
    for filename, estimated in predicted.items():  # as hear-eval-kit: the files with predictions
        reference = target.get(filename, [])
        n_ref, n_sys = n_ref + len(reference), n_sys + len(estimated)
        if not reference or not estimated:
            continue
        # seconds, as sed_eval compares them
        ref = np.array([(e["start"] / 1000.0, e["end"] / 1000.0) for e in reference])  # (R, 2)
        est = np.array([(e["start"] / 1000.0, e["end"] / 1000.0) for e in estimated])  # (E, 2)
        hits = np.equal.outer([str(e["label"]) for e in reference], [str(e["label"]) for e in estimated])
        hits &= np.abs(ref[:, None, 0] - est[None, :, 0]) <= t_collar
        if evaluate_offset:
            tolerance = np.maximum(t_collar, percentage_of_length * (ref[:, 1] - ref[:, 0]))  # (R,)
            hits &= np.abs(ref[:, None, 1] - est[None, :, 1]) <= tolerance[:, None]
        if hits.any():
            n_hits += int((maximum_bipartite_matching(csr_matrix(hits), perm_type="column") >= 0).sum())
    precision = n_hits / n_sys if n_sys else math.nan
    recall = n_hits / n_ref if n_ref else math.nan
    if precision == 0 and recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


# hear-eval-kit's event scores: sed_eval's overall metrics with these parameters, the sub-scores it reports
# (the first is the score itself).
EVENT_SCORES: Dict[str, tuple] = {
    "event_onset_200ms_fms": (("f_measure", "precision", "recall"),
                              dict(segment_based=False, evaluate_onset=True, evaluate_offset=False, t_collar=0.2)),
    "event_onset_50ms_fms": (("f_measure", "precision", "recall"),
                             dict(segment_based=False, evaluate_onset=True, evaluate_offset=False, t_collar=0.05)),
    "event_onset_offset_50ms_20perc_fms": (("f_measure", "precision", "recall"),
                                           dict(segment_based=False, evaluate_onset=True, evaluate_offset=True,
                                                t_collar=0.05, percentage_of_length=0.2)),
    "segment_1s_er": (("error_rate",), dict(segment_based=True, time_resolution=1.0)),
}


def event_subscores(name: str, predicted: Events, target: Events, labels: Sequence[str]) -> Dict[str, float]:
    """An event score's sub-scores as hear-eval-kit reports them, e.g. {'f_measure', 'precision', 'recall'}."""
    names, params = EVENT_SCORES[name]
    overall = _sed_eval_overall(predicted, target, labels, **params)
    return {sub: overall[sub] for sub in names}


def event_onset_200ms_fms(predicted: Events, target: Events, labels: Sequence[str]) -> float:
    """Event-based F-measure, an event matches when its onset is within 200 ms (offsets ignored)."""
    return event_subscores("event_onset_200ms_fms", predicted, target, labels)["f_measure"]


def event_onset_50ms_fms(predicted: Events, target: Events, labels: Sequence[str]) -> float:
    """Event-based F-measure, an event matches when its onset is within 50 ms (offsets ignored)."""
    return event_subscores("event_onset_50ms_fms", predicted, target, labels)["f_measure"]


def event_onset_offset_50ms_20perc_fms(predicted: Events, target: Events, labels: Sequence[str]) -> float:
    """Event-based F-measure: onset within 50 ms and offset within max(50 ms, 20% of the event length)."""
    return event_subscores("event_onset_offset_50ms_20perc_fms", predicted, target, labels)["f_measure"]


def segment_1s_er(predicted: Events, target: Events, labels: Sequence[str]) -> float:
    """Segment-based error rate on a 1 s grid (lower is better)."""
    return event_subscores("segment_1s_er", predicted, target, labels)["error_rate"]


@dataclass(frozen=True)
class Score:
    """A named score: `fn(predictions, targets)` for scene scores, `fn(predicted, target, labels)` for event ones."""
    name: str
    fn: Callable[..., float]
    is_event_score: bool
    maximize: bool = True
    fast_fn: Optional[Callable[..., float]] = None  # the same value without sed_eval (validation checks)

    def is_better(self, a: float, b: float) -> bool:
        """Strict improvement of a over b; NaN is never better (hear-eval-kit's checkpoint rule)."""
        if math.isnan(a):
            return False
        if math.isnan(b):
            return True
        return a > b if self.maximize else a < b


SCORES: Dict[str, Score] = {score.name: score for score in [
    Score("top1_acc", top1_acc, False),
    Score("pitch_acc", top1_acc, False),
    Score("chroma_acc", chroma_acc, False),
    Score("mAP", mAP, False),
    Score("d_prime", d_prime, False),
    Score("aucroc", aucroc, False),
    Score("event_onset_200ms_fms", event_onset_200ms_fms, True,
          fast_fn=lambda predicted, target, labels: _event_fms(predicted, target, t_collar=0.2)),
    Score("event_onset_50ms_fms", event_onset_50ms_fms, True,
          fast_fn=lambda predicted, target, labels: _event_fms(predicted, target, t_collar=0.05)),
    Score("event_onset_offset_50ms_20perc_fms", event_onset_offset_50ms_20perc_fms, True,
          fast_fn=lambda predicted, target, labels: _event_fms(predicted, target, t_collar=0.05, evaluate_offset=True,
                                                               percentage_of_length=0.2)),
    Score("segment_1s_er", segment_1s_er, True, maximize=False),
]}


def get_score(name: str) -> Score:
    if name not in SCORES:
        raise ValueError(f"unknown score {name!r}; known scores: {', '.join(SCORES)}")
    return SCORES[name]
