"""eval.scoring: event post-processing by hand-computed cases, and the choice of post-processing (ties, NaN).
Against hear-eval-kit's own post-processing: tests/test_heareval_reference.py."""
from __future__ import annotations

import math

import numpy as np
import pytest

from eval.embedded import SplitData, TaskData
from eval.scoring import EventDecoder, Scorer
from test_hear_protocol import toy_task


def test_event_decoder_matches_hear_eval_kit_rules():
    # one file, timestamps every 50 ms; label 0 active at 100..300 ms, label 1 one frame at 400 ms
    times = np.arange(0, 500, 50.0)
    probs = np.zeros((10, 2))
    probs[2:7, 0] = 0.9
    probs[8, 1] = 0.8
    split = SplitData(np.zeros((10, 1), np.float32), np.zeros((10, 2), np.float32), ["dir/a.wav"] * 10, times, {})
    decoder = EventDecoder(split, ["x", "y"], threshold=0.5)
    events = decoder.decode(probs, median_filter_ms=0, min_duration=0)
    assert events == {"a.wav": [{"label": "x", "start": 100.0, "end": 300.0},
                                {"label": "y", "start": 400.0, "end": 400.0}]}
    # events shorter than min_duration go; a 150 ms median filter (3 frames) removes the lone frame
    assert decoder.decode(probs, median_filter_ms=0, min_duration=250)["a.wav"] == []
    assert decoder.decode(probs, median_filter_ms=150, min_duration=0)["a.wav"] == [
        {"label": "x", "start": 100.0, "end": 300.0}]
    # rows given out of order are sorted by time within the file
    shuffled = np.random.default_rng(0).permutation(10)
    split2 = SplitData(split.embeddings, split.targets, ["a.wav"] * 10, times[shuffled], {})
    assert EventDecoder(split2, ["x", "y"], 0.5).decode(probs[shuffled], 0, 0) == events


def event_scorer(grid=None):
    params = {"event_postprocessing_grid": grid} if grid else {}
    task = toy_task("event", n_labels=2, evaluation=("event_onset_200ms_fms",), evaluation_params=params)
    task.labels[:] = ["x", "y"]
    times = np.arange(0, 2000, 50.0)
    split = SplitData(np.zeros((40, 1), np.float32), np.zeros((40, 2), np.float32), ["a.wav"] * 40, times,
                         {"a.wav": [{"label": "x", "start": 500.0, "end": 1000.0},
                                    {"label": "y", "start": 1500.0, "end": 1650.0}]})
    return Scorer(TaskData(task, {})), split


def test_postprocessing_tie_break_and_nan_as_zero():
    scorer, split = event_scorer({"median_filter_ms": [0], "min_duration": [125, 250]})
    decoder = scorer.decoder(split)
    probabilities = np.zeros((40, 2))
    probabilities[10:21, 0] = 0.9  # 500-1000 ms: long enough for both options
    scores, option = scorer.evaluate(probabilities, split, decoder, all_scores=False)
    assert (scores["event_onset_200ms_fms"], option) == (pytest.approx(2 / 3), (("median_filter_ms", 0),
                                                                                 ("min_duration", 250)))
    probabilities[30:34, 1] = 0.9  # 1500-1650 ms: only min_duration 125 keeps it
    scores, option = scorer.evaluate(probabilities, split, decoder, all_scores=False)
    assert (scores["event_onset_200ms_fms"], dict(option)["min_duration"]) == (1.0, 125)
    # nothing predicted: F is NaN for both, counted as 0 to choose (tie: the larger option); reported NaN
    scores, option = scorer.evaluate(np.zeros((40, 2)), split, decoder, all_scores=False)
    assert math.isnan(scores["event_onset_200ms_fms"]) and dict(option)["min_duration"] == 250

