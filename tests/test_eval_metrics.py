"""Each HEAR score against values worked out by hand."""
from __future__ import annotations

import math

import numpy as np
import pytest

from eval import metrics

# Two classes, four examples. Class 0: positives score 0.9, 0.7, negatives 0.8, 0.6.
# Class 1: positives score 0.1, 0.4, negatives 0.3, 0.2.
SCORES = np.array([[0.9, 0.1], [0.8, 0.3], [0.7, 0.2], [0.6, 0.4]])
LABELS = np.array([[1, 1], [0, 0], [1, 0], [0, 1]])


def test_top1_and_pitch_acc():
    predictions = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    targets = np.array([[0, 1], [0, 1], [1, 0]])
    assert metrics.top1_acc(predictions, targets) == pytest.approx(1 / 3)
    assert metrics.get_score("pitch_acc").fn(predictions, targets) == pytest.approx(1 / 3)


def test_chroma_acc_forgives_octave_errors():
    predictions = np.zeros((2, 24))
    targets = np.zeros((2, 24))
    predictions[0, 14], targets[0, 2] = 1, 1  # one octave up: right chroma
    predictions[1, 3], targets[1, 2] = 1, 1  # a semitone off: wrong
    assert metrics.chroma_acc(predictions, targets) == 0.5
    assert metrics.top1_acc(predictions, targets) == 0.0


def test_mAP_macro_average():
    # Class 0 ranking: + - + -  -> AP = (1/1 + 2/3) / 2.  Class 1 ranking (0.4, 0.3, 0.2, 0.1): + - - + -> (1 + 2/4) / 2.
    assert metrics.mAP(SCORES, LABELS) == pytest.approx(((1 + 2 / 3) / 2 + (1 + 0.5) / 2) / 2)


def test_aucroc_and_d_prime():
    # Class 0: 3 of 4 positive-negative pairs ordered right -> 0.75; class 1: 2 of 4 -> 0.5.
    assert metrics.aucroc(SCORES, LABELS) == pytest.approx(0.625)
    # d' = sqrt(2) * Phi^-1(AUC); Phi^-1(0.75) = 0.6744897501960817, Phi^-1(0.5) = 0.
    assert metrics.d_prime(SCORES, LABELS) == pytest.approx(math.sqrt(2) * 0.6744897501960817 / 2)


def test_auc_scores_undefined_without_negatives():
    labels = LABELS.copy()
    labels[:, 1] = 1
    assert math.isnan(metrics.aucroc(SCORES, labels))
    assert math.isnan(metrics.d_prime(SCORES, labels))


def test_scene_scores_reject_mismatched_shapes():
    with pytest.raises(ValueError, match="same"):
        metrics.top1_acc(np.zeros((3, 2)), np.zeros((3, 4)))


# Reference: 'a' 1.0-2.0 s, 'b' 3.0-3.5 s. Predicted: 'a' 100 ms late, 'b' 20 ms late but ending 200 ms late,
# and a spurious 'a' at 5 s.
TARGET = {"x.wav": [{"label": "a", "start": 1000.0, "end": 2000.0}, {"label": "b", "start": 3000.0, "end": 3500.0}]}
PREDICTED = {"x.wav": [{"label": "a", "start": 1100.0, "end": 1900.0}, {"label": "b", "start": 3020.0, "end": 3700.0},
                       {"label": "a", "start": 5000.0, "end": 5100.0}]}


def test_event_onset_fms():
    # 200 ms collar: both onsets match -> P 2/3, R 1 -> F 0.8.
    assert metrics.event_onset_200ms_fms(PREDICTED, TARGET, ["a", "b"]) == pytest.approx(0.8)
    # 50 ms collar: only 'b' -> P 1/3, R 1/2 -> F 0.4.
    assert metrics.event_onset_50ms_fms(PREDICTED, TARGET, ["a", "b"]) == pytest.approx(0.4)


def test_event_onset_offset_fms():
    # 'b' offset misses by 200 ms > max(50 ms, 20% of 500 ms): no match at all -> F 0.
    assert metrics.event_onset_offset_50ms_20perc_fms(PREDICTED, TARGET, ["a", "b"]) == 0.0
    predicted = {"x.wav": [{"label": "b", "start": 3020.0, "end": 3580.0}]}  # offset 80 ms off: within 100 ms
    # P 1/1, R 1/2 -> F 2/3.
    assert metrics.event_onset_offset_50ms_20perc_fms(predicted, TARGET, ["a", "b"]) == pytest.approx(2 / 3)


def test_segment_1s_error_rate():
    # 1 s segments: 'a' active in segment 1 in both, 'b' in segment 3 in both; the spurious 'a' adds one
    # insertion in segment 5. ER = (S + D + I) / N_ref = (0 + 0 + 1) / 2.
    assert metrics.segment_1s_er(PREDICTED, TARGET, ["a", "b"]) == pytest.approx(0.5)
    assert not metrics.get_score("segment_1s_er").maximize


def test_no_predicted_events_gives_nan_fms():
    assert math.isnan(metrics.event_onset_200ms_fms({"x.wav": []}, TARGET, ["a", "b"]))


def test_is_better_treats_nan_as_worst():
    score = metrics.get_score("top1_acc")
    assert score.is_better(0.5, math.nan) and not score.is_better(math.nan, 0.1)
    assert not score.is_better(0.5, 0.5)
    assert metrics.get_score("segment_1s_er").is_better(0.2, 0.3)


def test_unknown_score_named():
    with pytest.raises(ValueError, match="bogus"):
        metrics.get_score("bogus")


def random_events(rng, n_files, labels, mean_events):
    events = {}
    for f in range(n_files):
        file_events = []
        for _ in range(rng.poisson(mean_events)):
            start = float(np.round(rng.uniform(0, 5000), 1))
            file_events.append({"label": str(rng.choice(labels)), "start": start,
                                "end": start + float(np.round(rng.uniform(20, 800), 1))})
        events[f"f{f}.wav"] = file_events
    return events


@pytest.mark.parametrize("name", ["event_onset_200ms_fms", "event_onset_50ms_fms",
                                  "event_onset_offset_50ms_20perc_fms"])
def test_fast_event_fms_equals_sed_eval(name):
    """The validation-time F-measure (no sed_eval) is sed_eval's, on random and jittered predictions."""
    rng = np.random.default_rng(0)
    labels = ["a", "b", "c"]
    score = metrics.get_score(name)
    for trial in range(6):
        target = random_events(rng, 8, labels, 4)
        predicted = random_events(rng, 8, labels, 3)
        for f, events in target.items():  # near misses and hits: jittered copies of reference events
            for e in events:
                if rng.random() < 0.6:
                    shift = float(np.round(rng.normal(0, 60), 1))
                    predicted[f].append({"label": e["label"], "start": e["start"] + shift,
                                         "end": e["end"] + float(np.round(rng.normal(0, 80), 1))})
        if trial == 5:
            predicted = {f: [] for f in predicted}  # no predictions at all: NaN in both
        expected = score.fn(predicted, target, labels)
        fast = score.fast_fn(predicted, target, labels)
        assert (math.isnan(expected) and math.isnan(fast)) or fast == pytest.approx(expected, abs=1e-12)


def heareval_value(name, *args):
    """hear-eval-kit's own score function (heareval.score) on the same input: its primary value and, for event
    scores, its sub-scores."""
    from heareval.score import available_scores

    score = available_scores[name](label_to_idx={label: i for i, label in enumerate("abcdefghijklm")})
    value = score(*args)
    return (value[0][1], dict(value)) if isinstance(value, tuple) else (value, None)


@pytest.mark.filterwarnings("ignore::UserWarning")  # sklearn on the class without positives (heareval's call)
@pytest.mark.parametrize("name", ["top1_acc", "pitch_acc", "chroma_acc", "mAP", "d_prime", "aucroc"])
def test_every_scene_score_equals_heareval_score(name):
    """On random scores with ties, one-hot and multi-hot targets, and a class with no positive example (mAP:
    0 for that class in both, see metrics.mAP; aucroc and d_prime: NaN in both)."""
    rng = np.random.default_rng(0)
    for trial in range(6):
        n, c = 60, 13
        predictions = np.round(rng.random((n, c)), 1)  # ties
        if trial % 2:
            targets = (rng.random((n, c)) < 0.3).astype(np.float32)
        else:
            targets = np.eye(c, dtype=np.float32)[rng.integers(0, c, n)]
        if trial >= 4:
            targets[:, 3] = 0  # no positive example of class 3
        ours = metrics.get_score(name).fn(predictions, targets)
        theirs, _ = heareval_value(name, predictions, targets)
        assert (math.isnan(ours) and math.isnan(theirs)) or ours == pytest.approx(theirs, abs=1e-12), trial
    assert math.isnan(ours) if name in ("aucroc", "d_prime") else not math.isnan(ours)


@pytest.mark.parametrize("name", list(metrics.EVENT_SCORES))
def test_every_event_score_and_its_subscores_equal_heareval_score(name):
    rng = np.random.default_rng(1)
    labels = ["a", "b", "c"]
    for _ in range(3):
        target = random_events(rng, 6, labels, 4)
        predicted = {f: events + [{"label": e["label"], "start": e["start"] + float(np.round(rng.normal(0, 80), 1)),
                                   "end": e["end"] + float(np.round(rng.normal(0, 80), 1))} for e in target[f][:2]]
                     for f, events in random_events(rng, 6, labels, 2).items()}
        theirs, subscores = heareval_value(name, predicted, target)
        ours = metrics.event_subscores(name, predicted, target, labels)
        assert ours == pytest.approx(subscores) and metrics.get_score(name).fn(predicted, target, labels) == \
            pytest.approx(theirs)
