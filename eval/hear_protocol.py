"""The HEAR 2021 downstream protocol (hear-eval-kit's `heareval/predictions`), in plain current PyTorch.

What it does, as hear-eval-kit does it:
- an MLP on the frozen embeddings: 1 or 2 hidden layers of 1024, each Linear -> BatchNorm -> Dropout(0.1)
  -> ReLU, then a Linear projection; Xavier (uniform or normal) weights, gain 1 for the first layer and
  sqrt(2) after a ReLU; Adam; softmax + cross-entropy (multiclass) or sigmoid + BCE (multilabel);
- mini-batches of 1024 over the training rows in one fixed random order (hear-eval-kit's rows are its
  memmap's, files in random order, and its loader never reshuffles: it only shuffles a split named
  "train" given as a string, and it always passes a list);
- 8 of the 16 grid points {lr} x {hidden layers} x {initialisation}, drawn by `random.shuffle` of
  sklearn's `ParameterGrid` order after seeding Python's `random` with 42, as `seed_everything(42)` does;
- every grid point trained on the first data split and ranked by its best validation primary score; the
  best one re-trained on each other split; k-fold rotation test = fold i, valid = fold i+1, train = rest;
- validation every 3 epochs, early stopping after 20 checks without strict improvement (or at the first
  non-finite score, Lightning's `check_finite`), at most 500 epochs; test with the weights of the best
  check; task overrides: DCASE 2016 checks every 10 epochs; tasks whose metadata sets
  `use_scoring_for_early_stopping: false` (MAESTRO) monitor the validation loss instead;
  `evaluation_params` in the metadata override the grid and the event post-processing grid;
- event tasks: one prediction per timestamp, post-processed per file into events (median filter of
  250 ms, threshold 0.5, events shorter than 125 or 250 ms dropped, chosen on validation at each check).

How it differs, for speed: all grid points of one depth train together as one batched model (stacked
weights, `torch.baddbmm`, per-model BatchNorm statistics, fused Adam with a learning rate per model),
and models leave the stack as they stop; no Lightning, no data loader, no checkpoint files (the best
weights of each model are kept in memory); matmuls in bfloat16 where the hardware is fast at it
(`ProtocolConfig.dtype`, "auto": AMX CPUs, sm80+ GPUs), BatchNorm, losses and Adam in float32.
Random draws (initialisation, dropout) come from torch's generator seeded per task, so scores match
hear-eval-kit's in distribution, not bit for bit.
"""
from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import median_filter
from sklearn.model_selection import ParameterGrid

from hear_msm_mae.embedder import resolve_dtype

from .embed import SceneSplit, load_split, read_embedded_task
from .metrics import Events, Score, get_score
from .tasks import Task

# hear-eval-kit's default PARAM_GRID, under its own key names (ParameterGrid orders by sorted key, so the
# names fix the order the grid points are drawn in). Classes are replaced by the names of what they select.
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
# hear-eval-kit's TASK_SPECIFIC_PARAM_GRID (sed_eval is slow on DCASE 2016's long files).
TASK_SPECIFIC_PARAM_GRID: Dict[str, Dict[str, list]] = {"dcase2016_task2": {"check_val_every_n_epoch": [10]}}
EVENT_POSTPROCESSING_GRID: Dict[str, list] = {"median_filter_ms": [250], "min_duration": [125, 250]}
GRID_SEED = 42  # seed_everything(42) in hear-eval-kit's task_predictions


@dataclass
class SplitData:
    """One split (or fold) of a task, embedded.

    embeddings (N, D): one row per file (scene tasks) or per timestamp (event tasks); targets (N, C) multi-hot.
    Event tasks also give, per row, the file and the timestamp (ms), and the split's reference events.
    """
    embeddings: np.ndarray
    targets: np.ndarray
    filenames: Optional[List[str]] = None
    timestamps: Optional[np.ndarray] = None
    events: Optional[Events] = None


@dataclass
class TaskData:
    """An embedded task: its description (eval.tasks.Task: metadata, label vocabulary) and its splits."""
    task: Task
    splits: Dict[str, SplitData]

    @property
    def metadata(self) -> dict:
        return self.task.metadata

    @property
    def labels(self) -> List[str]:
        return self.task.labels

    @property
    def is_event_task(self) -> bool:
        return self.task.embedding_type == "event"

    @property
    def is_multilabel(self) -> bool:
        return self.task.prediction_type == "multilabel"


def load_task_data(task_embeddings_dir) -> TaskData:
    """Read a task's embeddings (written by eval.embed or by heareval's embeddings runner)."""
    task = read_embedded_task(task_embeddings_dir)
    splits = {}
    for name in task.splits:
        split = load_split(task_embeddings_dir, name)
        if isinstance(split, SceneSplit):
            splits[name] = SplitData(split.embeddings, split.targets)
            continue
        embeddings, targets, file_index = split.stacked()
        splits[name] = SplitData(embeddings, targets, [split.filenames[i] for i in file_index],
                                 np.concatenate(split.timestamps),
                                 {f: [{"label": e.label, "start": e.start, "end": e.end} for e in events]
                                  for f, events in split.events.items()})
    return TaskData(task, splits)


@dataclass
class ProtocolConfig:
    grid_points: int = 8
    grid_seed: int = GRID_SEED
    train_seed: int = 0
    threshold: float = 0.5
    device: str = "cpu"
    dtype: str = "auto"  # of the matmuls: "bfloat16" (autocast) | "float32" | "auto": bf16 where it is fast
    eval_batch_size: int = 65536


@dataclass
class ModelResult:
    """What training one grid point on one split gives: its best check and what came of it."""
    conf: dict
    validation_score: float
    epoch: int  # of the best check (0-based)
    epochs_trained: int = 0
    postprocessing: Tuple[Tuple[str, float], ...] = ()
    state: Dict[str, torch.Tensor] = field(default_factory=dict, repr=False)


def task_param_grid(metadata: dict) -> Dict[str, list]:
    """hear-eval-kit's grid for a task: defaults, then its task table, then the metadata's own grid."""
    grid = dict(PARAM_GRID)
    grid.update(TASK_SPECIFIC_PARAM_GRID.get(metadata["task_name"], {}))
    grid.update(metadata.get("evaluation_params", {}).get("task_specific_param_grid", {}))
    return grid


def sample_grid_points(grid: Dict[str, list], n: int, seed: int = GRID_SEED) -> List[dict]:
    """The first n points of `ParameterGrid(grid)` shuffled by Python's `random` seeded with `seed`."""
    confs = list(ParameterGrid(grid))
    random.Random(seed).shuffle(confs)
    return confs[:n]


def event_postprocessing_grid(metadata: dict) -> List[Tuple[Tuple[str, float], ...]]:
    grid = metadata.get("evaluation_params", {}).get("event_postprocessing_grid", EVENT_POSTPROCESSING_GRID)
    return [tuple(conf.items()) for conf in ParameterGrid(grid)]


def concat_splits(data: TaskData, names: Sequence[str], shuffle_seed: Optional[int] = None) -> SplitData:
    """The splits `names` as one; `shuffle_seed`: rows in a seeded random order, as hear-eval-kit trains on
    its memmap, whose rows are the files in random order (and never reshuffles)."""
    missing = [n for n in names if n not in data.splits]
    if missing:
        raise ValueError(f"task {data.task.name}: no embeddings for split(s) {missing}")
    parts = [data.splits[n] for n in names]
    x, y = np.concatenate([p.embeddings for p in parts]), np.concatenate([p.targets for p in parts])
    if shuffle_seed is not None:
        order = np.random.default_rng(shuffle_seed).permutation(len(x))
        return SplitData(x[order], y[order])
    if not data.is_event_task:
        return SplitData(x, y)
    events: Events = {}
    for p in parts:
        events.update(p.events)
    return SplitData(x, y, [f for p in parts for f in p.filenames], np.concatenate([p.timestamps for p in parts]),
                     events)


# ----------------------------------------------------------------------------------------------------------
# Event post-processing (hear-eval-kit's create_events_from_prediction, vectorised per file)

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


# ----------------------------------------------------------------------------------------------------------
# G MLPs of the same depth as one batched model

def dropout(h: torch.Tensor, p: float, train: bool) -> torch.Tensor:
    """`F.dropout(h, p, train)`, with the keep-mask drawn by `torch.rand`: on CPU, F.dropout's Bernoulli draw
    costs about five times as much and was the largest single cost of a training step."""
    if not train or p == 0:
        return h
    return h * ((torch.rand_like(h) >= p) * (1.0 / (1.0 - p)))


class BatchedMLP:
    """G independent MLPs (same depth and width) with stacked parameters, computed features-first.

    Layer l weight (G, out, in) and bias (G, out, 1); BatchNorm gain, shift and running statistics (G, H).
    Activations are (G, features, batch), so that each model's BatchNorm is one channel block of a
    single `F.batch_norm` call on (1, G*H, B) and runs on the fast contiguous path.
    """

    def __init__(self, confs: List[dict], n_features: int, n_labels: int, device: str):
        self.G = len(confs)
        self.depth = confs[0]["hidden_layers"]
        width, self.dropout = confs[0]["hidden_dim"], confs[0]["dropout"]
        assert all(c["hidden_layers"] == self.depth and c["hidden_dim"] == width and c["dropout"] == self.dropout
                   for c in confs), "one BatchedMLP holds models of one shape"
        dims = [n_features] + [width] * self.depth + [n_labels]
        self.params: Dict[str, torch.Tensor] = {}
        for layer, (fan_in, fan_out) in enumerate(zip(dims[:-1], dims[1:])):
            gain = 1.0 if layer == 0 else math.sqrt(2.0)  # calculate_gain('linear') / ('relu')
            std = gain * math.sqrt(2.0 / (fan_in + fan_out))
            weights = []
            for conf in confs:
                if conf["initialization"] == "xavier_uniform":
                    w = (torch.rand(fan_out, fan_in) * 2 - 1) * (math.sqrt(3.0) * std)
                elif conf["initialization"] == "xavier_normal":
                    w = torch.randn(fan_out, fan_in) * std
                else:
                    raise ValueError(f"unknown initialization {conf['initialization']!r}")
                weights.append(w)
            bound = 1.0 / math.sqrt(fan_in)  # torch.nn.Linear's default bias initialisation
            self.params[f"w{layer}"] = torch.stack(weights)
            self.params[f"b{layer}"] = (torch.rand(self.G, fan_out, 1) * 2 - 1) * bound
            if layer < self.depth:
                self.params[f"gain{layer}"] = torch.ones(self.G, fan_out)
                self.params[f"shift{layer}"] = torch.zeros(self.G, fan_out)
        self.params = {k: v.to(device).requires_grad_() for k, v in self.params.items()}
        self.buffers = {}
        for layer in range(self.depth):
            self.buffers[f"mean{layer}"] = torch.zeros(self.G, width, device=device)
            self.buffers[f"var{layer}"] = torch.ones(self.G, width, device=device)
        self.optimizer = BatchedAdam(self.params, [c["lr"] for c in confs])

    def logits(self, x: torch.Tensor, train: bool) -> torch.Tensor:
        """x (B, D) -> logits (G, B, C). Training mode: batch statistics (running ones updated, momentum
        0.1, unbiased variance) and dropout from torch's global generator; eval mode: running statistics."""
        p = self.params
        h = x.t().unsqueeze(0).expand(self.G, *x.t().shape)  # (G, D, B)
        for layer in range(self.depth):
            h = torch.baddbmm(p[f"b{layer}"], p[f"w{layer}"], h).float()  # (G, H, B)
            G, H, B = h.shape
            h = F.batch_norm(h.view(1, G * H, B), self.buffers[f"mean{layer}"].view(-1),
                             self.buffers[f"var{layer}"].view(-1), p[f"gain{layer}"].view(-1),
                             p[f"shift{layer}"].view(-1), training=train, momentum=0.1, eps=1e-5)
            h = torch.relu(dropout(h, self.dropout, train)).view(G, H, B)
        return torch.baddbmm(p[f"b{self.depth}"], p[f"w{self.depth}"], h).float().transpose(1, 2)  # (G, B, C)

    def keep(self, models: torch.Tensor) -> None:
        """Drop the models not in `models` (bool (G,)) from the stack, with their optimiser state."""
        index = models.nonzero().view(-1)
        self.G = len(index)
        self.params = {k: v.detach()[index].requires_grad_() for k, v in self.params.items()}
        self.buffers = {k: v[index] for k, v in self.buffers.items()}
        self.optimizer = self.optimizer.keep(self.params, index.tolist())

    def state(self, g: int) -> Dict[str, torch.Tensor]:
        """Model g's parameters and statistics, each (1, ...)."""
        return {k: v.detach()[g:g + 1].clone() for k, v in {**self.params, **self.buffers}.items()}

    @classmethod
    def from_state(cls, conf: dict, state: Dict[str, torch.Tensor]) -> "BatchedMLP":
        model = cls.__new__(cls)
        model.G, model.depth, model.dropout = 1, conf["hidden_layers"], conf["dropout"]
        model.params = {k: v for k, v in state.items() if not k.startswith(("mean", "var"))}
        model.buffers = {k: v.clone() for k, v in state.items() if k.startswith(("mean", "var"))}
        return model


class BatchedAdam:
    """torch.optim.Adam (fused kernel, defaults: betas 0.9/0.999, eps 1e-8) with one learning rate per model.

    Model g's parameters are the views `stacked[g]`, one parameter group per model; each step hands them
    the matching slices of the stacked gradients.
    """

    def __init__(self, params: Dict[str, torch.Tensor], lrs: List[float], state: Optional[list] = None):
        self.params, self.lrs = params, list(lrs)
        self.views = [[p.detach()[g] for p in params.values()] for g in range(len(lrs))]  # [model][param]
        fused = all(p.device.type in ("cpu", "cuda") for p in params.values())
        self.adam = torch.optim.Adam([{"params": v, "lr": lr} for v, lr in zip(self.views, self.lrs)],
                                     fused=fused)
        for views, model_state in zip(self.views, state or []):
            for view, view_state in zip(views, model_state):
                self.adam.state[view] = view_state

    @torch.no_grad()
    def step(self) -> None:
        for i, p in enumerate(self.params.values()):
            for g, views in enumerate(self.views):
                views[i].grad = p.grad[g]
            p.grad = None
        self.adam.step()

    def keep(self, params: Dict[str, torch.Tensor], models: List[int]) -> "BatchedAdam":
        """The optimiser for the models `models` of this one, now stacked in `params`."""
        state = [[self.adam.state[view] for view in self.views[g]] for g in models]
        return BatchedAdam(params, [self.lrs[g] for g in models], state)


# ----------------------------------------------------------------------------------------------------------
# Training with early stopping, and scoring

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
        score (NaN counted as 0).
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
        # hear-eval-kit sorts (score, post-processing) pairs descending and takes the first
        _, option, primary, events = max(candidates, key=lambda c: (c[0], c[1]))
        result = {self.primary.name: primary}
        result.update({s.name: s.fn(events, split.events, self.data.labels) for s in scores[1:]})
        return result, option


class Trainer:
    """Trains grid points of one task on one data split, early-stopped as hear-eval-kit does."""

    def __init__(self, data: TaskData, config: ProtocolConfig):
        self.data, self.config = data, config
        self.scorer = Scorer(data, config.threshold)
        self.primary = self.scorer.primary
        self.use_scoring = data.metadata.get("use_scoring_for_early_stopping", True)
        if data.is_event_task and not self.use_scoring and len(self.scorer.postprocessing_grid) != 1:
            raise ValueError("a task that stops on the validation loss needs exactly one event post-processing")
        device = torch.device(config.device)
        self.autocast = torch.autocast(device.type, dtype=torch.bfloat16,
                                       enabled=resolve_dtype(config.dtype, device) == torch.bfloat16)

    def _tensor(self, a: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.asarray(a, dtype=np.float32), device=self.config.device)

    def _loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-model mean loss (G,): cross-entropy on the target index (multiclass) or BCE (multilabel)."""
        if self.data.is_multilabel:
            return F.binary_cross_entropy_with_logits(logits, y.expand_as(logits), reduction="none").mean((1, 2))
        target = y.argmax(-1).expand(logits.shape[0], -1)  # (G, B)
        return F.cross_entropy(logits.transpose(1, 2), target, reduction="none").mean(1)

    @torch.no_grad()
    def predict(self, model: BatchedMLP, x: torch.Tensor) -> torch.Tensor:
        """Eval-mode logits (G, N, C), in chunks."""
        with self.autocast:
            return torch.cat([model.logits(x[i:i + self.config.eval_batch_size], train=False)
                              for i in range(0, len(x), self.config.eval_batch_size)], dim=1)

    def probabilities(self, logits: torch.Tensor) -> np.ndarray:
        act = torch.sigmoid(logits) if self.data.is_multilabel else torch.softmax(logits, -1)
        return act.float().cpu().numpy()

    def train(self, confs: List[dict], train: SplitData, valid: SplitData) -> List[ModelResult]:
        """Train models with the given grid points on `train`, early-stopped on `valid`; one result each."""
        results: List[Optional[ModelResult]] = [None] * len(confs)
        by_shape: Dict[tuple, List[int]] = {}
        for i, conf in enumerate(confs):
            by_shape.setdefault((conf["hidden_layers"], conf["hidden_dim"], conf["dropout"], conf["batch_size"],
                                 conf["max_epochs"], conf["patience"], conf["check_val_every_n_epoch"]), []).append(i)
        for indices in by_shape.values():
            for i, result in zip(indices, self._train_group([confs[i] for i in indices], train, valid)):
                results[i] = result
        return results

    def _train_group(self, confs: List[dict], train: SplitData, valid: SplitData) -> List[ModelResult]:
        conf = confs[0]
        x, y = self._tensor(train.embeddings), self._tensor(train.targets)
        xv, yv = self._tensor(valid.embeddings), self._tensor(valid.targets)
        decoder = self.scorer.decoder(valid)
        model = BatchedMLP(confs, x.shape[1], y.shape[1], self.config.device)
        maximize = self.primary.maximize if self.use_scoring else False
        worst = -math.inf if maximize else math.inf
        results = [ModelResult(conf=c, validation_score=worst, epoch=-1) for c in confs]
        waits = [0] * len(confs)
        running = list(range(len(confs)))  # stack row -> grid point, for the models still training
        batch = conf["batch_size"]
        for epoch in range(conf["max_epochs"]):
            for i in range(0, len(x), batch):
                with self.autocast:
                    loss = self._loss(model.logits(x[i:i + batch], train=True), y[i:i + batch])
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
                # Lightning's ModelCheckpoint: saves at the first check whatever the score, then on strict
                # improvement; EarlyStopping: stops at a non-finite score (check_finite) or after `patience`
                # checks without strict improvement.
                if result.epoch < 0 or better:
                    result.validation_score = score if math.isfinite(score) else worst
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
        return results

    def test(self, result: ModelResult, test: SplitData) -> Dict[str, float]:
        model = BatchedMLP.from_state(result.conf, result.state)
        probabilities = self.probabilities(self.predict(model, self._tensor(test.embeddings)))[0]
        decoder = self.scorer.decoder(test)
        scores, _ = self.scorer.evaluate(probabilities, test, decoder, result.postprocessing or None)
        return scores


def rank_grid_points(results: List[ModelResult], maximize: bool) -> List[ModelResult]:
    """Best validation score first; ties keep grid order (Python's stable sort, as hear-eval-kit)."""
    return sorted(results, key=lambda r: r.validation_score, reverse=maximize)


def aggregate(fold_scores: Dict[str, Dict[str, float]]) -> Dict[str, Dict[str, float]]:
    """{test fold: {score: value}} -> {score: {'mean', 'std'}}; std with ddof=1 as pandas' (0 for one fold)."""
    names = next(iter(fold_scores.values())).keys()
    out = {}
    for name in names:
        values = np.array([scores[name] for scores in fold_scores.values()], dtype=np.float64)
        out[name] = {"mean": float(np.mean(values)),
                     "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0}
    return out


def task_result(data: TaskData, protocol: str, primary: str, folds: List[dict], start: float, **extra) -> dict:
    """One task's results (JSON-serialisable): the per-fold records (each with its test split's "scores"),
    those scores aggregated over folds, `extra` entries, and the seconds since `start`."""
    return {"task": data.task.name, "protocol": protocol, "primary_score": primary,
            "scores": aggregate({fold["test"]: fold["scores"] for fold in folds}), "folds": folds, **extra,
            "train_seconds": time.perf_counter() - start}


def run_protocol(data: TaskData, config: ProtocolConfig = ProtocolConfig()) -> dict:
    """The whole protocol on one task -> results dict (JSON-serialisable)."""
    start = time.perf_counter()
    with torch.random.fork_rng(devices=[]):  # initialisation and dropout: seeded, caller's RNG untouched
        torch.manual_seed(config.train_seed)
        return _run_protocol(data, config, start)


def _run_protocol(data: TaskData, config: ProtocolConfig, start: float) -> dict:
    trainer = Trainer(data, config)
    splits = data.task.data_splits()
    confs = sample_grid_points(task_param_grid(data.metadata), config.grid_points, config.grid_seed)

    def fit(conf_list: List[dict], split) -> List[ModelResult]:
        return trainer.train(conf_list, concat_splits(data, split.train, shuffle_seed=config.train_seed),
                             concat_splits(data, split.valid))

    grid_results = fit(confs, splits[0])
    maximize = trainer.primary.maximize if trainer.use_scoring else False
    best = rank_grid_points(grid_results, maximize)[0]
    split_results = [best] + [fit([best.conf], split)[0] for split in splits[1:]]
    folds = [{"test": "|".join(split.test), "validation_score": result.validation_score, "epoch": result.epoch,
              "epochs_trained": result.epochs_trained, "postprocessing": dict(result.postprocessing),
              "scores": trainer.test(result, concat_splits(data, split.test))}
             for split, result in zip(splits, split_results)]
    return task_result(data, "hear", trainer.primary.name, folds, start,
                       hparams={k: best.conf[k] for k in ("hidden_layers", "lr", "initialization")},
                       grid=[{"hidden_layers": r.conf["hidden_layers"], "lr": r.conf["lr"],
                              "initialization": r.conf["initialization"], "validation_score": r.validation_score,
                              "epoch": r.epoch} for r in grid_results])
