"""Scoring a task's predictions as hear-eval-kit does: scene scores on the probabilities, event scores on
the events that post-processing makes of per-timestamp probabilities.

Event post-processing (hear-eval-kit's create_events_from_prediction, vectorised per file): per file and
label, the probabilities in time order are median-filtered (`median_filter_ms`, 250 ms), thresholded
(0.5), and each run of active timestamps becomes an event from its first to its last timestamp; events
shorter than `min_duration` (125 or 250 ms) are dropped. The post-processing is chosen on validation
(`Scorer.evaluate`): the best primary score with NaN counted as 0, ties to the larger option, as
hear-eval-kit's `sort(reverse=True)`. A task's metadata may replace the grid
(`evaluation_params.event_postprocessing_grid`).

Both the HEAR protocol (eval.hear_protocol) and the linear probe (eval.linear_probe) score through
`Scorer`, so their numbers are directly comparable.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from scipy.ndimage import median_filter
from sklearn.model_selection import ParameterGrid

from .embedded import SplitData, TaskData
from .metrics import Score, event_subscores, get_score
from .tasks import Events

EVENT_POSTPROCESSING_GRID: Dict[str, list] = {"median_filter_ms": [250], "min_duration": [125, 250]}


def event_postprocessing_grid(metadata: dict) -> List[Tuple[Tuple[str, float], ...]]:
    grid = metadata.get("evaluation_params", {}).get("event_postprocessing_grid", EVENT_POSTPROCESSING_GRID)
    return [tuple(conf.items()) for conf in ParameterGrid(grid)]


class EventDecoder:
    """Turns per-timestamp probabilities of one split into events, file by file."""

    def __init__(self, split: SplitData, labels: Sequence[str], threshold: float):
        self.labels = list(labels)
        self.threshold = threshold
        order = np.lexsort((split.timestamps, split.filenames))  # by file, then time
        names = np.asarray([f.rsplit("/", 1)[-1] for f in split.filenames])[order]
        starts = np.flatnonzero(np.r_[True, names[1:] != names[:-1]])
        self.files = [(names[s], order[s:e]) for s, e in zip(starts, np.r_[starts[1:], len(order)])]
        self.timestamps = np.asarray(split.timestamps, dtype=np.float64)

    def decode(self, probabilities: np.ndarray, median_filter_ms: float, min_duration: float) -> Events:
        """probabilities (N, C) in the split's row order -> {file: [{'label', 'start', 'end'}]} (ms)."""
        events: Events = {}
        for name, rows in self.files:
            times = self.timestamps[rows]  # (T,)
            probs = probabilities[rows]  # (T, C)
            if median_filter_ms and len(times) > 1:
                width = int(round(median_filter_ms / np.mean(np.diff(times))))
                if width:
                    probs = median_filter(probs, size=(width, 1))
            active = probs > self.threshold  # (T, C)
            edges = np.diff(np.pad(active.astype(np.int8), ((1, 1), (0, 0))), axis=0)  # (T+1, C)
            file_events = []
            for label in range(active.shape[1]):
                first = np.flatnonzero(edges[:, label] == 1)
                last = np.flatnonzero(edges[:, label] == -1) - 1
                for a, b in zip(first, last):
                    if times[b] - times[a] >= min_duration:
                        file_events.append({"label": self.labels[label], "start": float(times[a]),
                                            "end": float(times[b])})
            file_events.sort(key=lambda e: e["start"])
            events[name] = file_events
        return events



class Scorer:
    """Scores a task's predictions as hear-eval-kit does; event tasks via post-processing into events."""

    def __init__(self, data: TaskData, threshold: float = 0.5):
        self.data, self.threshold = data, threshold
        self.scores: List[Score] = [get_score(name) for name in data.task.evaluation]
        self.primary = self.scores[0]
        self.postprocessing_grid = event_postprocessing_grid(data.metadata) if data.is_event_task else [()]

    def decoder(self, split: SplitData) -> Optional[EventDecoder]:
        return EventDecoder(split, self.data.labels, self.threshold) if self.data.is_event_task else None

    def evaluate(self, probabilities: np.ndarray, split: SplitData, decoder: Optional[EventDecoder],
                 postprocessing: Optional[tuple] = None, all_scores: bool = True) -> Tuple[Dict[str, float], tuple]:
        """Task scores (all, or the primary only) for one model's probabilities (N, C) on a split, and the
        post-processing used. Event tasks: the given post-processing, else the one with the best primary
        score (NaN counted as 0; ties to the larger option, as hear-eval-kit's sort(reverse=True)[0]).
        """
        scores = self.scores if all_scores else [self.primary]
        if decoder is None:
            return {s.name: s.fn(probabilities, split.targets) for s in scores}, ()
        options = [postprocessing] if postprocessing is not None else self.postprocessing_grid
        # validation checks: the primary score's sed_eval-free twin where it has one (same value, tested)
        primary_fn = self.primary.fn if all_scores else (self.primary.fast_fn or self.primary.fn)
        candidates = []  # (primary with NaN as 0, post-processing, primary, events)
        for option in options:
            events = decoder.decode(probabilities, **dict(option))
            primary = primary_fn(events, split.events, self.data.labels)
            candidates.append((0.0 if math.isnan(primary) else primary, option, primary, events))
        _, option, primary, events = max(candidates, key=lambda c: (c[0], c[1]))
        result = {self.primary.name: primary}
        result.update({s.name: s.fn(events, split.events, self.data.labels) for s in scores[1:]})
        return result, option

    def test_scores(self, probabilities: np.ndarray, split: SplitData, postprocessing: tuple
                    ) -> Tuple[Dict[str, float], Dict[str, Dict[str, float]]]:
        """Every score of the task on a test split, and hear-eval-kit's sub-scores of its event scores
        ({score: {'f_measure', 'precision', 'recall'} or {'error_rate'}})."""
        if not self.data.is_event_task:
            return {s.name: s.fn(probabilities, split.targets) for s in self.scores}, {}
        events = self.decoder(split).decode(probabilities, **dict(postprocessing))
        subscores = {s.name: event_subscores(s.name, events, split.events, self.data.labels) for s in self.scores}
        return {name: next(iter(values.values())) for name, values in subscores.items()}, subscores
