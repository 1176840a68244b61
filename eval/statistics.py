"""Result statistics: scores over folds (hear-eval-kit's aggregation), over training seeds, and one task's
results record (JSON-serialisable) as eval.hear_protocol and eval.linear_probe return it.

A record: {"task", "protocol", "primary_score", "scores": {score: {"mean", "std"}}, "folds": [per test
fold: {"test", ..., "scores": {score: value}}], ..., "train_seconds"}; over several seeds the scores
also carry "ci95" and "per_seed", "spread" says which ("folds" or "seeds") the std is over.
"""
from __future__ import annotations

import math
import time
from typing import Dict, List, Sequence, Tuple

import numpy as np
from scipy import stats


def mean_std(values: Sequence[float], skip_nan: bool = False) -> Tuple[float, float]:
    """Mean and std (ddof=1; 0 for one value). skip_nan: over the values that are not NaN, as pandas'
    mean() and std() in hear-eval-kit's aggregate_test_results (NaN when too few are left)."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 1:
        return float(values[0]), 0.0
    if skip_nan:
        values = values[~np.isnan(values)]
    with np.errstate(invalid="ignore"):  # +inf and -inf (d' of a tiny fold) give NaN, as in pandas
        mean = float(np.mean(values)) if len(values) else math.nan
        return mean, float(np.std(values, ddof=1)) if len(values) > 1 else math.nan


def aggregate(fold_scores: Dict[str, Dict[str, float]], skip_nan: bool = False) -> Dict[str, Dict[str, float]]:
    """{test fold: {score: value}} -> {score: {'mean', 'std'}} (`mean_std`)."""
    names = next(iter(fold_scores.values())).keys()
    out = {}
    for name in names:
        mean, std = mean_std([scores[name] for scores in fold_scores.values()], skip_nan)
        out[name] = {"mean": mean, "std": std}
    return out


def task_result(task: str, protocol: str, primary: str, folds: List[dict], start: float, *,
                skip_nan: bool = False, **extra) -> dict:
    """One task's results (JSON-serialisable): the per-fold records (each with its test split's "scores"),
    those scores aggregated over folds (`aggregate`), `extra` entries, and the seconds since `start`."""
    return {"task": task, "protocol": protocol, "primary_score": primary,
            "scores": aggregate({fold["test"]: fold["scores"] for fold in folds}, skip_nan), "folds": folds,
            **extra, "train_seconds": time.perf_counter() - start}


def seed_statistics(values: Sequence[float]) -> Dict[str, object]:
    """Mean, standard deviation (ddof 1) and 95% t-interval of the mean of per-seed values."""
    values = np.asarray(values, dtype=np.float64)
    mean, std = float(values.mean()), float(values.std(ddof=1))
    half = float(stats.t.ppf(0.975, len(values) - 1) * std / math.sqrt(len(values)))
    return {"mean": mean, "std": std, "ci95": [mean - half, mean + half], "per_seed": values.tolist()}


def combine_seeds(runs: List[dict]) -> dict:
    """One task's result over training seeds (eval.hear_protocol.run_seed's results, in seed order). One seed:
    its result, scores over folds (hear-eval-kit's aggregate). Several: scores over seeds of each seed's mean
    over folds (`seed_statistics`), "spread": "seeds", every seed's result in "runs"; "folds" are the first
    seed's."""
    if len(runs) == 1:
        return {**runs[0], "spread": "folds"}
    first = runs[0]
    return {"task": first["task"], "protocol": first["protocol"], "primary_score": first["primary_score"],
            "scores": {name: seed_statistics([run["scores"][name]["mean"] for run in runs])
                       for name in first["scores"]},
            "spread": "seeds", "seeds": [run["seed"] for run in runs], "settings": first["settings"],
            "folds": first["folds"], "runs": runs, "train_seconds": sum(run["train_seconds"] for run in runs)}
