"""The HEAR 2021 downstream protocol (hear-eval-kit 2021.1.3's `heareval/predictions`), in plain current PyTorch.

What it does, as hear-eval-kit does it:
- an MLP on the frozen embeddings (eval.mlp: its layers, initialisation, optimiser); softmax + cross-entropy
  (multiclass) or sigmoid + BCE (multilabel), on the raw (unstandardised) embeddings in float32;
- mini-batches of `batch_size` (1024) consecutive rows of the training splits' memmaps, concatenated in the
  order the fold lists them (k-fold: sorted), the same batches every epoch. A memmap's rows are its split's
  files in the order `random.Random(0)` shuffled them when it was written (eval.embedded.memmap_file_order),
  an event file's frames contiguous and in time order; hear-eval-kit's loader never reshuffles them (it
  would only shuffle a split given as the string "train"; it always passes a list);
- `--grid-points` (8) of the grid points of `ParameterGrid(grid)` drawn by `random.shuffle` after seeding
  Python's `random` with the seed (42, `seed_everything(42)`), which also seeds the initialisation and
  dropout; every grid point trained on the first data split and ranked by its best validation primary
  score (Python's stable sort, so ties keep grid order); the best one re-trained on each other split;
  k-fold rotation test = fold i, valid = fold i+1, train = the rest;
- validation every `check_val_every_n_epoch` (3) epochs; early stopping after `patience` (20) checks without
  strict improvement, or at the first non-finite score (Lightning's `check_finite`), at most `max_epochs`
  (500); the test uses the weights of the best check (the first check counts whatever its score, as
  Lightning's ModelCheckpoint saves it); DCASE 2016 checks every 10 epochs; tasks whose metadata sets
  `use_scoring_for_early_stopping: false` (MAESTRO) monitor the validation loss instead;
  `evaluation_params` in the metadata override the grid (every key of it; a value not implemented here is
  an error, see `check_grid_point`) and the event post-processing grid;
- event tasks: one prediction per timestamp, post-processed per file into events, the post-processing
  chosen on validation at each check (eval.scoring);
- scores over folds, and over seeds with `ProtocolConfig.seeds`: eval.statistics.
`embedding_norm` is built by hear-eval-kit and never applied (its forward has the call commented out), so
its values are accepted and have no effect here either.

How it differs, for speed: all grid points of one shape train together as one batched model
(eval.mlp.BatchedMLP), and models leave the stack as they stop; no Lightning, no data loader, no
checkpoint files (the best weights of each model are kept in memory). Random draws (initialisation,
dropout) come from torch's generator seeded with the seed, so scores match hear-eval-kit's in
distribution, not bit for bit. `ProtocolConfig.dtype = "bfloat16"` (`--fast`) runs the matmuls in
bfloat16 on centred inputs (eval.mlp): the same model in exact arithmetic.
"""
from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.model_selection import ParameterGrid

from .embedded import SplitData, TaskData
from .mlp import INITIALIZATIONS, OPTIMIZERS, BatchedMLP, shape_key
from .scoring import Scorer
from .statistics import combine_seeds, task_result

# hear-eval-kit's PARAM_GRID, under its own key names (ParameterGrid orders by sorted key, so the names fix
# the order the grid points are drawn in). Classes and functions are replaced by their names.
PARAM_GRID: Dict[str, list] = {
    "hidden_layers": [1, 2],
    "hidden_dim": [1024],
    "dropout": [0.1],
    "lr": [3.2e-3, 1e-3, 3.2e-4, 1e-4],
    "patience": [20],
    "max_epochs": [500],
    "check_val_every_n_epoch": [3],
    "batch_size": [1024],
    "hidden_norm": ["BatchNorm1d"],
    "norm_after_activation": [False],
    "embedding_norm": ["Identity"],
    "initialization": ["xavier_uniform", "xavier_normal"],
    "optim": ["Adam"],
}
# its `--grid fast` and `--grid faster`
GRIDS: Dict[str, Dict[str, list]] = {
    "default": PARAM_GRID,
    "fast": {**PARAM_GRID, "max_epochs": [10, 50], "check_val_every_n_epoch": [3, 10]},
    "faster": {**PARAM_GRID, "hidden_layers": [0, 1], "hidden_dim": [64, 128], "patience": [1, 3],
               "max_epochs": [10], "check_val_every_n_epoch": [1]},
}
# hear-eval-kit's TASK_SPECIFIC_PARAM_GRID (sed_eval is slow on DCASE 2016's long files).
TASK_SPECIFIC_PARAM_GRID: Dict[str, Dict[str, list]] = {"dcase2016_task2": {"check_val_every_n_epoch": [10]}}
HEAREVAL_SEED = 42  # seed_everything(42) in hear-eval-kit's task_predictions

# The values of the class-valued keys implemented here (hear-eval-kit's grids name these classes).
IMPLEMENTED_VALUES: Dict[str, tuple] = {
    "hidden_norm": ("BatchNorm1d", "Identity"),
    "norm_after_activation": (False, True),
    "embedding_norm": ("Identity", "BatchNorm1d", "LayerNorm"),  # built, never applied by hear-eval-kit
    "initialization": tuple(INITIALIZATIONS),
    "optim": tuple(OPTIMIZERS),
}
# The numeric keys: (type, smallest value, largest value or None).
NUMERIC_KEYS: Dict[str, tuple] = {
    "hidden_layers": (int, 0, None), "hidden_dim": (int, 1, None), "dropout": (float, 0.0, 0.999),
    "lr": (float, 1e-12, None), "patience": (int, 0, None), "max_epochs": (int, 1, None),
    "check_val_every_n_epoch": (int, 1, None), "batch_size": (int, 2, None),
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def check_grid_point(conf: dict, task: str) -> None:
    """ValueError naming the key, the value and the task, for a grid point this protocol cannot train as
    hear-eval-kit would."""
    for key, value in conf.items():
        if key in IMPLEMENTED_VALUES:
            if not any(value == v and type(value) is type(v) for v in IMPLEMENTED_VALUES[key]):
                raise ValueError(f"task {task}: grid key {key!r} = {value!r} is not implemented "
                                 f"(implemented: {list(IMPLEMENTED_VALUES[key])})")
        elif key in NUMERIC_KEYS:
            kind, low, high = NUMERIC_KEYS[key]
            ok = not isinstance(value, bool) and isinstance(value, int if kind is int else (int, float))
            if not ok or value < low or (high is not None and value > high):
                raise ValueError(f"task {task}: grid key {key!r} = {value!r} is not a valid value "
                                 f"({kind.__name__} >= {low}{f' and <= {high}' if high is not None else ''})")
        else:
            raise ValueError(f"task {task}: grid key {key!r} = {value!r} is not a hear-eval-kit grid key "
                             f"(known: {sorted(PARAM_GRID)})")


@dataclass
class ProtocolConfig:
    grid_points: int = 8
    grid: str = "default"  # hear-eval-kit's --grid: default | fast | faster
    seeds: Tuple[int, ...] = (HEAREVAL_SEED,)  # each: grid sampling, initialisation and dropout
    threshold: float = 0.5
    device: str = "cpu"
    dtype: str = "float32"  # of the matmuls: "float32" (hear-eval-kit) | "bfloat16" (faster, centred inputs)
    eval_batch_size: int = 65536


def seeds(n: int) -> Tuple[int, ...]:
    """n training seeds: hear-eval-kit's 42, then 43, 44, ..."""
    if n < 1:
        raise ValueError(f"need at least one seed, got {n}")
    return tuple(range(HEAREVAL_SEED, HEAREVAL_SEED + n))


@dataclass
class ModelResult:
    """What training one grid point on one split gives: its best check and what came of it."""
    conf: dict
    validation_score: float
    epoch: int  # of the best check (0-based)
    epochs_trained: int = 0
    postprocessing: Tuple[Tuple[str, float], ...] = ()
    state: Dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    input_shift: Optional[torch.Tensor] = field(default=None, repr=False)  # (D,) subtracted from the inputs
    train_seconds: float = 0.0  # of the training run that made it (with the grid points trained beside it)


def task_param_grid(metadata: dict, grid: str = "default") -> Dict[str, list]:
    """hear-eval-kit's grid for a task: the named grid, then its task table, then the metadata's own grid."""
    if grid not in GRIDS:
        raise ValueError(f"unknown grid {grid!r}; grids: {', '.join(GRIDS)}")
    out = dict(GRIDS[grid])
    out.update(TASK_SPECIFIC_PARAM_GRID.get(metadata["task_name"], {}))
    out.update(metadata.get("evaluation_params", {}).get("task_specific_param_grid", {}))
    return out


def sample_grid_points(grid: Dict[str, list], n: int, seed: int = HEAREVAL_SEED) -> List[dict]:
    """The first n points of `ParameterGrid(grid)` shuffled by Python's `random` seeded with `seed`."""
    confs = list(ParameterGrid(grid))
    random.Random(seed).shuffle(confs)
    return confs[:n]


def batch_slices(n_rows: int, batch_size: int) -> List[slice]:
    """A torch DataLoader's batches over n rows, not shuffled, last batch kept."""
    return [slice(i, min(i + batch_size, n_rows)) for i in range(0, n_rows, batch_size)]


class Trainer:
    """Trains grid points of one task on one data split, early-stopped as hear-eval-kit does."""

    def __init__(self, data: TaskData, config: ProtocolConfig):
        if config.dtype not in DTYPES:
            raise ValueError(f"dtype {config.dtype!r}: expected one of {list(DTYPES)}")
        self.data, self.config = data, config
        self.scorer = Scorer(data, config.threshold)
        self.primary = self.scorer.primary
        self.use_scoring = data.metadata.get("use_scoring_for_early_stopping", True)
        if data.is_event_task and not self.use_scoring and len(self.scorer.postprocessing_grid) != 1:
            raise ValueError("a task that stops on the validation loss needs exactly one event post-processing")
        self.matmul_dtype = DTYPES[config.dtype]

    @property
    def maximize(self) -> bool:
        """The direction of the monitored validation value: the primary score's, or the loss's."""
        return self.primary.maximize if self.use_scoring else False

    def _tensor(self, a: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.asarray(a, dtype=np.float32), device=self.config.device)

    def _loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-model mean loss (G,): cross-entropy on the target index (multiclass) or BCE (multilabel)."""
        logits = logits.float()
        if self.data.is_multilabel:
            return F.binary_cross_entropy_with_logits(logits, y.expand_as(logits), reduction="none").mean((1, 2))
        target = y.argmax(-1).expand(logits.shape[0], -1)  # (G, B)
        return F.cross_entropy(logits.transpose(1, 2), target, reduction="none").mean(1)

    @torch.no_grad()
    def predict(self, model: BatchedMLP, x: torch.Tensor) -> torch.Tensor:
        """Eval-mode logits (G, N, C), in chunks."""
        return torch.cat([model.logits(x[i:i + self.config.eval_batch_size], train=False)
                          for i in range(0, len(x), self.config.eval_batch_size)], dim=1)

    def probabilities(self, logits: torch.Tensor) -> np.ndarray:
        act = torch.sigmoid(logits) if self.data.is_multilabel else torch.softmax(logits, -1)
        return act.float().cpu().numpy()

    def train(self, confs: List[dict], train: SplitData, valid: SplitData) -> List[ModelResult]:
        """Train models with the given grid points on `train` (rows in training order), early-stopped on
        `valid`; one result each."""
        results: List[Optional[ModelResult]] = [None] * len(confs)
        by_shape: Dict[tuple, List[int]] = {}
        for i, conf in enumerate(confs):
            by_shape.setdefault(shape_key(conf), []).append(i)
        for indices in by_shape.values():
            for i, result in zip(indices, self._train_group([confs[i] for i in indices], train, valid)):
                results[i] = result
        return results

    def _train_group(self, confs: List[dict], train: SplitData, valid: SplitData) -> List[ModelResult]:
        start = time.perf_counter()
        conf = confs[0]
        x, y = self._tensor(train.embeddings), self._tensor(train.targets)
        xv, yv = self._tensor(valid.embeddings), self._tensor(valid.targets)
        shift = None
        if self.matmul_dtype != torch.float32:  # centre by the training rows' mean (see the module's docstring)
            shift = torch.as_tensor(train.embeddings.mean(0, dtype=np.float64), dtype=torch.float32,
                                    device=self.config.device)
            x, xv = x - shift, xv - shift
        decoder = self.scorer.decoder(valid)
        model = BatchedMLP(confs, x.shape[1], y.shape[1], self.config.device, matmul_dtype=self.matmul_dtype,
                           input_shift=shift)
        maximize = self.maximize
        results = [ModelResult(conf=c, validation_score=-math.inf if maximize else math.inf, epoch=-1,
                               input_shift=shift) for c in confs]
        waits = [0] * len(confs)
        running = list(range(len(confs)))  # stack row -> grid point, for the models still training
        batches = batch_slices(len(x), conf["batch_size"])
        for epoch in range(conf["max_epochs"]):
            for batch in batches:
                loss = self._loss(model.logits(x[batch], train=True), y[batch])
                loss.sum().backward()  # models share no parameters: each gets its own loss's gradient
                model.optimizer.step()
            if (epoch + 1) % conf["check_val_every_n_epoch"]:
                continue
            logits = self.predict(model, xv)  # (G, Nv, C)
            if self.use_scoring:
                probabilities = self.probabilities(logits)
                checks = [self.scorer.evaluate(probabilities[row], valid, decoder, all_scores=False)
                          for row in range(len(running))]
                current = [scores[self.primary.name] for scores, _ in checks]
                posts = [post for _, post in checks]
            else:
                current = self._loss(logits, yv).tolist()
                posts = [self.scorer.postprocessing_grid[0]] * len(running)
            stopped = torch.zeros(len(running), dtype=torch.bool)
            for row, g in enumerate(running):
                result, score = results[g], current[row]
                better = (score > result.validation_score) if maximize else (score < result.validation_score)
                # Lightning's ModelCheckpoint: saves at the first check whatever the score (NaN included), then
                # on strict improvement; EarlyStopping: stops at a non-finite score (check_finite) or after
                # `patience` checks without strict improvement.
                if result.epoch < 0 or better:
                    result.validation_score = score
                    result.epoch, result.postprocessing, result.state = epoch, posts[row], model.state(row)
                waits[g] = 0 if better else waits[g] + 1
                stopped[row] = not math.isfinite(score) or waits[g] >= conf["patience"]
                result.epochs_trained = epoch + 1
            if stopped.all():
                break
            if stopped.any():
                model.keep(~stopped)
                running = [g for row, g in enumerate(running) if not stopped[row]]
        if any(r.epoch < 0 for r in results):
            raise ValueError(f"max_epochs {conf['max_epochs']} < check_val_every_n_epoch "
                             f"{conf['check_val_every_n_epoch']}: no validation check, no model to test")
        for result in results:
            result.train_seconds = time.perf_counter() - start
        return results

    def test(self, result: ModelResult, test: SplitData) -> dict:
        """The best check's model on a test split: its scores, event sub-scores and loss."""
        model = BatchedMLP.from_state(result.conf, result.state, self.matmul_dtype, result.input_shift)
        x = self._tensor(test.embeddings)
        if result.input_shift is not None:
            x = x - result.input_shift
        logits = self.predict(model, x)  # (1, N, C)
        scores, subscores = self.scorer.test_scores(self.probabilities(logits)[0], test, result.postprocessing)
        return {"scores": scores, "subscores": subscores,
                "loss": float(self._loss(logits, self._tensor(test.targets))[0])}


def rank_grid_points(results: List[ModelResult], maximize: bool) -> List[ModelResult]:
    """Best validation score first: hear-eval-kit's sort_grid_points (Python's stable sort, so ties keep grid
    order; NaN scores go where the same sort puts them)."""
    return sorted(results, key=lambda r: r.validation_score, reverse=maximize)


def run_seed(data: TaskData, config: ProtocolConfig, seed: int) -> dict:
    """The protocol on one task with one seed, as hear-eval-kit's task_predictions after seed_everything(seed)
    -> results dict (JSON-serialisable)."""
    start = time.perf_counter()
    device = torch.device(config.device)
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        torch.manual_seed(seed)  # initialisation and dropout: seeded, caller's RNG untouched
        return _run_seed(data, config, seed, start)


def _run_seed(data: TaskData, config: ProtocolConfig, seed: int, start: float) -> dict:
    trainer = Trainer(data, config)
    splits = data.task.data_splits()
    confs = sample_grid_points(task_param_grid(data.metadata, config.grid), config.grid_points, seed)
    for conf in confs:
        check_grid_point(conf, data.task.name)

    def fit(conf_list: List[dict], split) -> List[ModelResult]:
        return trainer.train(conf_list, data.training_rows(split.train), data.concat(split.valid))

    grid_results = fit(confs, splits[0])
    best = rank_grid_points(grid_results, trainer.maximize)[0]
    split_results = [best] + [fit([best.conf], split)[0] for split in splits[1:]]
    folds = [{"test": "|".join(split.test), "validation_score": result.validation_score, "epoch": result.epoch,
              "epochs_trained": result.epochs_trained, "postprocessing": dict(result.postprocessing),
              "train_seconds": result.train_seconds, **trainer.test(result, data.concat(split.test))}
             for split, result in zip(splits, split_results)]
    return task_result(data.task.name, "hear", trainer.primary.name, folds, start, skip_nan=True, seed=seed,
                       settings={"grid_points": config.grid_points, "grid": config.grid, "dtype": config.dtype},
                       score_mode="max" if trainer.maximize else "min", hparams=best.conf,
                       grid=[{**{k: r.conf[k] for k in ("hidden_layers", "lr", "initialization")},
                              "validation_score": r.validation_score, "epoch": r.epoch} for r in grid_results])


def run_protocol(data: TaskData, config: ProtocolConfig = ProtocolConfig()) -> dict:
    """The whole protocol on one task, once per seed of `config.seeds` -> results dict (JSON-serialisable)."""
    return combine_seeds([run_seed(data, config, seed) for seed in config.seeds])
