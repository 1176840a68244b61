"""Linear probe: scikit-learn logistic regression on standardised embeddings.

Per data split (the k-fold rotation or train/valid/test, as in the HEAR protocol): the embeddings are
standardised with the training rows' mean and standard deviation; one logistic regression per
regularisation strength C in `ProbeConfig.Cs` is fitted on the training rows, the C with the best
validation primary score is kept and scored on the test split.

- multiclass: one multinomial (softmax) regression; multilabel: one binary regression per label.
- event tasks: the same, on frames — one classification per timestamp embedding, whose per-label
  probabilities then go through the HEAR post-processing (median filter, threshold 0.5, minimum
  duration chosen on validation) into events scored with the task's event metrics, so probe and
  MLP scores are directly comparable. Large event tasks are subsampled to `max_train_rows` frames.
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import Tuple

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.multiclass import OneVsRestClassifier
from threadpoolctl import threadpool_limits

from .embedded import TaskData
from .scoring import Scorer
from .statistics import task_result


@dataclass
class ProbeConfig:
    Cs: Tuple[float, ...] = (1e-3, 1e-2, 1e-1, 1.0, 10.0)
    max_iter: int = 1000
    max_train_rows: int = 100_000  # frames of an event task; a seeded random subset above this
    seed: int = 0


def standardiser(x: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Mean and std (D,) of the training rows; constant dimensions get std 1."""
    mean, std = x.mean(0), x.std(0)
    return mean, np.where(std > 0, std, 1.0)


def fit_logistic(x: np.ndarray, y: np.ndarray, C: float, multilabel: bool, config: ProbeConfig):
    model = LogisticRegression(C=C, max_iter=config.max_iter)
    # lbfgs on probe-sized problems is latency-bound: threaded BLAS only adds synchronisation (tens of
    # times slower on a busy machine)
    with warnings.catch_warnings(), threadpool_limits(limits=1, user_api="blas"):
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", UserWarning)  # a label without positives: predicted constant
        if multilabel:
            return OneVsRestClassifier(model).fit(x, y)
        return model.fit(x, y.argmax(1))


def probabilities(model, x: np.ndarray, n_labels: int) -> np.ndarray:
    """(N, n_labels) class probabilities, with zeros for classes absent from the training rows."""
    proba = model.predict_proba(x)
    if proba.shape[1] == n_labels:
        return proba
    full = np.zeros((len(x), n_labels))
    full[:, model.classes_] = proba
    return full


def run_linear_probe(data: TaskData, config: ProbeConfig = ProbeConfig()) -> dict:
    """The probe on every data split of a task -> results dict (JSON-serialisable)."""
    start = time.perf_counter()
    scorer = Scorer(data)
    better = scorer.primary.is_better
    n_labels = len(data.labels)
    folds = []
    for split in data.task.data_splits():
        train = data.concat(split.train, shuffle_seed=config.seed)
        if len(train.embeddings) > config.max_train_rows:
            train = train.rows(np.arange(config.max_train_rows))
        valid, test = data.concat(split.valid), data.concat(split.test)
        mean, std = standardiser(train.embeddings)
        x_train, x_valid, x_test = ((s.embeddings - mean) / std for s in (train, valid, test))
        valid_decoder = scorer.decoder(valid)
        best = None  # (validation primary score, C, model, post-processing)
        for C in config.Cs:
            model = fit_logistic(x_train, train.targets, C, data.is_multilabel, config)
            scores, post = scorer.evaluate(probabilities(model, x_valid, n_labels), valid, valid_decoder,
                                           all_scores=False)
            if best is None or better(scores[scorer.primary.name], best[0]):
                best = (scores[scorer.primary.name], C, model, post)
        validation_score, C, model, post = best
        scores, _ = scorer.evaluate(probabilities(model, x_test, n_labels), test, scorer.decoder(test), post or None)
        folds.append({"test": "|".join(split.test), "validation_score": validation_score, "C": C,
                      "postprocessing": dict(post), "scores": scores})
    return task_result(data.task.name, "linear", scorer.primary.name, folds, start)
