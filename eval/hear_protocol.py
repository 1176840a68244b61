"""The HEAR 2021 downstream protocol (hear-eval-kit 2021.1.3's `heareval/predictions`), in plain current PyTorch.

What it does, as hear-eval-kit does it:
- an MLP on the frozen embeddings: `hidden_layers` hidden layers of `hidden_dim`, each Linear -> BatchNorm ->
  Dropout -> ReLU (or Linear -> Dropout -> ReLU -> BatchNorm with `norm_after_activation`), then a Linear
  projection; Xavier (uniform or normal) weights with gain 1 for the first layer and sqrt(2) after a ReLU,
  torch.nn.Linear's bias initialisation; Adam; softmax + cross-entropy (multiclass) or sigmoid + BCE
  (multilabel), on the raw (unstandardised) embeddings in float32;
- mini-batches of `batch_size` (1024) consecutive rows of the training splits' memmaps, concatenated in the
  order the fold lists them (k-fold: sorted), the same batches every epoch. A memmap's rows are its split's
  files in the order `random.Random(0)` shuffled them when it was written (eval.embed.memmap_file_order),
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
- event tasks: one prediction per timestamp, post-processed per file into events (median filter of
  250 ms, threshold 0.5, events shorter than 125 or 250 ms dropped, chosen on validation at each check:
  the best primary score with NaN counted as 0, ties to the larger option, as hear-eval-kit's
  `sort(reverse=True)`).
`embedding_norm` is built by hear-eval-kit and never applied (its forward has the call commented out), so
its values are accepted and have no effect here either.

How it differs, for speed: all grid points of one shape train together as one batched model (stacked
weights, `torch.bmm`, per-model BatchNorm statistics, fused Adam with a learning rate per model),
and models leave the stack as they stop; no Lightning, no data loader, no checkpoint files (the best
weights of each model are kept in memory). Random draws (initialisation, dropout) come from torch's
generator seeded with the seed, so scores match hear-eval-kit's in distribution, not bit for bit.

`ProtocolConfig.dtype = "bfloat16"` (`--fast`) runs the matmuls in bfloat16 (BatchNorm, losses and the
optimiser stay in float32). The inputs are then centred by the training rows' mean m, and the first layer
computes W (x - m) + (W m + b), W m in float32: the same function of x in exact arithmetic, for every
architecture and in eval mode too (BatchNorm's running statistics see the same values), while bfloat16's
8-bit mantissa no longer erases features whose offset is large against their spread.
"""
from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats
from scipy.ndimage import median_filter
from sklearn.model_selection import ParameterGrid

from .embed import EventSplit, load_split, memmap_file_order, read_embedded_task
from .metrics import Events, Score, event_subscores, get_score
from .tasks import Task

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
EVENT_POSTPROCESSING_GRID: Dict[str, list] = {"median_filter_ms": [250], "min_duration": [125, 250]}
HEAREVAL_SEED = 42  # seed_everything(42) in hear-eval-kit's task_predictions

INITIALIZATIONS = {"xavier_uniform": torch.nn.init.xavier_uniform_, "xavier_normal": torch.nn.init.xavier_normal_}
OPTIMIZERS = {"Adam": torch.optim.Adam, "SGD": torch.optim.SGD}  # hear-eval-kit: optim(parameters, lr=lr)
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
class SplitData:
    """One split (or fold) of a task, embedded.

    embeddings (N, D): one row per file (scene tasks) or per timestamp (event tasks), files in <split>.json
    order; targets (N, C) multi-hot. Event tasks also give, per row, the file and the timestamp (ms), and the
    split's reference events. memmap_rows (N,): the rows in the order of the split's merged memmap
    (hear-eval-kit's training order); None: already in that order.
    """
    embeddings: np.ndarray
    targets: np.ndarray
    filenames: Optional[List[str]] = None
    timestamps: Optional[np.ndarray] = None
    events: Optional[Events] = None
    memmap_rows: Optional[np.ndarray] = None


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


def memmap_rows(file_order: Sequence[int], file_lengths: Sequence[int]) -> np.ndarray:
    """Row indices (N,) of files laid out in <split>.json order, taken file by file in `file_order`."""
    starts = np.concatenate([[0], np.cumsum(file_lengths)[:-1]]).astype(np.int64)
    return np.concatenate([np.arange(starts[f], starts[f] + file_lengths[f]) for f in file_order]).astype(np.int64)


def check_memmap(task_dir: Path, split: str, data: SplitData, chunk: int = 65536) -> None:
    """ValueError unless <split>.embeddings.npy holds exactly `data`'s rows in `data.memmap_rows` order."""
    path = task_dir / f"{split}.embeddings.npy"
    shape = tuple(json.loads((task_dir / f"{split}.embedding-dimensions.json").read_text()))
    if shape != data.embeddings.shape or path.stat().st_size != shape[0] * shape[1] * 4:
        raise ValueError(f"{path}: shape {shape}, but the split's files hold {data.embeddings.shape}")
    memmap = np.memmap(path, dtype=np.float32, mode="r", shape=shape)
    for i in range(0, shape[0], chunk):
        if not np.array_equal(memmap[i:i + chunk], data.embeddings[data.memmap_rows[i:i + chunk]], equal_nan=True):
            raise ValueError(f"{path}: its rows are not the split's files in the order random.Random(0) "
                             "gives them (eval.embed and hear-eval-kit's embeddings runner write that order)")


def load_task_data(task_embeddings_dir) -> TaskData:
    """Read a task's embeddings (written by eval.embed or by heareval's embeddings runner), with each split's
    memmap order (checked against its memmap)."""
    task_dir = Path(task_embeddings_dir)
    task = read_embedded_task(task_dir)
    order = memmap_file_order(task)
    splits = {}
    for name in task.splits:
        split = load_split(task_dir, name)
        if isinstance(split, EventSplit):
            embeddings, targets, file_index = split.stacked()
            data = SplitData(embeddings, targets, [split.filenames[i] for i in file_index],
                             np.concatenate(split.timestamps),
                             {f: [{"label": e.label, "start": e.start, "end": e.end} for e in events]
                              for f, events in split.events.items()},
                             memmap_rows(order[name], [len(t) for t in split.timestamps]))
        else:
            data = SplitData(split.embeddings, split.targets, memmap_rows=np.asarray(order[name], dtype=np.int64))
        check_memmap(task_dir, name, data)
        splits[name] = data
    return TaskData(task, splits)


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


def event_postprocessing_grid(metadata: dict) -> List[Tuple[Tuple[str, float], ...]]:
    grid = metadata.get("evaluation_params", {}).get("event_postprocessing_grid", EVENT_POSTPROCESSING_GRID)
    return [tuple(conf.items()) for conf in ParameterGrid(grid)]


def _parts(data: TaskData, names: Sequence[str]) -> List[SplitData]:
    missing = [n for n in names if n not in data.splits]
    if missing:
        raise ValueError(f"task {data.task.name}: no embeddings for split(s) {missing}")
    return [data.splits[n] for n in names]


def concat_splits(data: TaskData, names: Sequence[str], shuffle_seed: Optional[int] = None) -> SplitData:
    """The splits `names` as one, rows in <split>.json order; `shuffle_seed`: rows in a seeded random order
    (the linear probe's)."""
    parts = _parts(data, names)
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


def training_rows(data: TaskData, names: Sequence[str]) -> SplitData:
    """What hear-eval-kit trains on: the memmaps of the splits `names`, concatenated in that order (its
    ConcatDataset). Its loader's batches are consecutive `batch_size` rows of this, the last one shorter,
    the same every epoch (`batch_slices`)."""
    parts = _parts(data, names)
    rows = [p.memmap_rows if p.memmap_rows is not None else slice(None) for p in parts]
    return SplitData(np.concatenate([p.embeddings[r] for p, r in zip(parts, rows)]),
                     np.concatenate([p.targets[r] for p, r in zip(parts, rows)]))


def batch_slices(n_rows: int, batch_size: int) -> List[slice]:
    """A torch DataLoader's batches over n rows, not shuffled, last batch kept."""
    return [slice(i, min(i + batch_size, n_rows)) for i in range(0, n_rows, batch_size)]


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
# G MLPs of the same shape as one batched model

def dropout(h: torch.Tensor, p: float, train: bool) -> torch.Tensor:
    """`F.dropout(h, p, train)`, with the keep-mask drawn by `torch.rand`: on CPU, F.dropout's Bernoulli draw
    costs about five times as much and was the largest single cost of a training step."""
    if not train or p == 0:
        return h
    return h * ((torch.rand_like(h) >= p) * (1.0 / (1.0 - p)))


def shape_key(conf: dict) -> tuple:
    """What the models of one BatchedMLP (and one training loop) share; lr and initialisation may differ."""
    return tuple(conf[k] for k in ("hidden_layers", "hidden_dim", "dropout", "hidden_norm", "norm_after_activation",
                                   "optim", "batch_size", "max_epochs", "patience", "check_val_every_n_epoch"))


class BatchedMLP:
    """G independent MLPs (same shape) with stacked parameters, computed features-first.

    Layer l weight (G, out, in) and bias (G, out, 1); BatchNorm gain, shift and running statistics (G, H).
    Activations are (G, features, batch), so that each model's BatchNorm is one channel block of a
    single `F.batch_norm` call on (1, G*H, B) and runs on the fast contiguous path. Parameters in `dtype`,
    matmuls in `matmul_dtype`; `input_shift` m (D,): the inputs given are x - m, and the first layer adds
    W m back (see the module's docstring).
    """

    def __init__(self, confs: List[dict], n_features: int, n_labels: int, device: str,
                 dtype: torch.dtype = torch.float32, matmul_dtype: Optional[torch.dtype] = None,
                 input_shift: Optional[torch.Tensor] = None):
        conf = confs[0]
        assert all(shape_key(c) == shape_key(conf) for c in confs), "one BatchedMLP holds models of one shape"
        self._configure(conf, len(confs), dtype, matmul_dtype, input_shift)
        dims = [n_features] + [conf["hidden_dim"]] * self.depth + [n_labels]
        self.params: Dict[str, torch.Tensor] = {}
        for layer, (fan_in, fan_out) in enumerate(zip(dims[:-1], dims[1:])):
            gain = torch.nn.init.calculate_gain("linear" if layer == 0 else "relu")
            self.params[f"w{layer}"] = torch.stack([INITIALIZATIONS[c["initialization"]](
                torch.empty(fan_out, fan_in, dtype=dtype), gain=gain) for c in confs])
            bound = 1.0 / math.sqrt(fan_in)  # torch.nn.Linear's bias initialisation
            self.params[f"b{layer}"] = torch.empty(self.G, fan_out, 1, dtype=dtype).uniform_(-bound, bound)
            if layer < self.depth and self.batch_norm:
                self.params[f"gain{layer}"] = torch.ones(self.G, fan_out, dtype=dtype)
                self.params[f"shift{layer}"] = torch.zeros(self.G, fan_out, dtype=dtype)
        self.params = {k: v.to(device).requires_grad_() for k, v in self.params.items()}
        self.buffers = {}
        for layer in range(self.depth if self.batch_norm else 0):
            self.buffers[f"mean{layer}"] = torch.zeros(self.G, conf["hidden_dim"], dtype=dtype, device=device)
            self.buffers[f"var{layer}"] = torch.ones(self.G, conf["hidden_dim"], dtype=dtype, device=device)
        self.optimizer = BatchedOptimizer(self.params, [c["lr"] for c in confs], conf["optim"])

    def _configure(self, conf: dict, G: int, dtype: torch.dtype, matmul_dtype: Optional[torch.dtype],
                   input_shift: Optional[torch.Tensor]) -> None:
        self.G, self.depth, self.dropout = G, conf["hidden_layers"], conf["dropout"]
        self.batch_norm = conf["hidden_norm"] == "BatchNorm1d"
        self.norm_after_activation = conf["norm_after_activation"]
        self.dtype, self.matmul_dtype = dtype, matmul_dtype or dtype
        self.input_shift = input_shift

    def _linear(self, layer: int, h: torch.Tensor) -> torch.Tensor:
        """(G, in, B) -> W h + b (G, out, B) in self.dtype, the product in matmul_dtype."""
        w, b = self.params[f"w{layer}"], self.params[f"b{layer}"]
        if layer == 0 and self.input_shift is not None:
            b = b + torch.bmm(w, self.input_shift.to(w).view(1, -1, 1).expand(self.G, -1, 1))  # + W m (G, out, 1)
        if self.matmul_dtype == self.dtype:
            return torch.baddbmm(b, w, h)
        return torch.bmm(w.to(self.matmul_dtype), h.to(self.matmul_dtype)).to(self.dtype) + b

    def _norm(self, layer: int, h: torch.Tensor, train: bool) -> torch.Tensor:
        if not self.batch_norm:
            return h
        G, H, B = h.shape
        return F.batch_norm(h.reshape(1, G * H, B), self.buffers[f"mean{layer}"].view(-1),
                            self.buffers[f"var{layer}"].view(-1), self.params[f"gain{layer}"].view(-1),
                            self.params[f"shift{layer}"].view(-1), training=train, momentum=0.1,
                            eps=1e-5).view(G, H, B)

    def logits(self, x: torch.Tensor, train: bool) -> torch.Tensor:
        """x (B, D) -> logits (G, B, C). Training mode: batch statistics (running ones updated, momentum
        0.1, unbiased variance) and dropout from torch's global generator; eval mode: running statistics."""
        x = x.to(self.matmul_dtype)
        h = x.t().unsqueeze(0).expand(self.G, *x.t().shape)  # (G, D, B)
        for layer in range(self.depth):
            h = self._linear(layer, h)  # (G, H, B)
            if not self.norm_after_activation:
                h = self._norm(layer, h, train)
            h = torch.relu(dropout(h, self.dropout, train))
            if self.norm_after_activation:
                h = self._norm(layer, h, train)
        return self._linear(self.depth, h).transpose(1, 2)  # (G, B, C)

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
    def from_state(cls, conf: dict, state: Dict[str, torch.Tensor], matmul_dtype: Optional[torch.dtype] = None,
                   input_shift: Optional[torch.Tensor] = None) -> "BatchedMLP":
        model = cls.__new__(cls)
        model._configure(conf, 1, state["w0"].dtype, matmul_dtype, input_shift)
        model.params = {k: v for k, v in state.items() if not k.startswith(("mean", "var"))}
        model.buffers = {k: v.clone() for k, v in state.items() if k.startswith(("mean", "var"))}
        return model


class BatchedOptimizer:
    """torch.optim.Adam (fused kernel, defaults: betas 0.9/0.999, eps 1e-8) or SGD (defaults: no momentum),
    with one learning rate per model.

    Model g's parameters are the views `stacked[g]`, one parameter group per model; each step hands them
    the matching slices of the stacked gradients.
    """

    def __init__(self, params: Dict[str, torch.Tensor], lrs: List[float], optim: str,
                 state: Optional[list] = None):
        self.params, self.lrs, self.optim = params, list(lrs), optim
        self.views = [[p.detach()[g] for p in params.values()] for g in range(len(lrs))]  # [model][param]
        fused = all(p.device.type in ("cpu", "cuda") for p in params.values())
        self.torch_optimizer = OPTIMIZERS[optim]([{"params": v, "lr": lr} for v, lr in zip(self.views, self.lrs)],
                                                 fused=fused)
        for views, model_state in zip(self.views, state or []):
            for view, view_state in zip(views, model_state):
                if view_state is not None:
                    self.torch_optimizer.state[view] = view_state

    @torch.no_grad()
    def step(self) -> None:
        for i, p in enumerate(self.params.values()):
            for g, views in enumerate(self.views):
                views[i].grad = p.grad[g]
            p.grad = None
        self.torch_optimizer.step()

    def keep(self, params: Dict[str, torch.Tensor], models: List[int]) -> "BatchedOptimizer":
        """The optimiser for the models `models` of this one, now stacked in `params`."""
        state = [[self.torch_optimizer.state.get(view) for view in self.views[g]] for g in models]
        return BatchedOptimizer(params, [self.lrs[g] for g in models], self.optim, state)


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


def task_result(data: TaskData, protocol: str, primary: str, folds: List[dict], start: float, *,
                skip_nan: bool = False, **extra) -> dict:
    """One task's results (JSON-serialisable): the per-fold records (each with its test split's "scores"),
    those scores aggregated over folds (`aggregate`), `extra` entries, and the seconds since `start`."""
    return {"task": data.task.name, "protocol": protocol, "primary_score": primary,
            "scores": aggregate({fold["test"]: fold["scores"] for fold in folds}, skip_nan), "folds": folds,
            **extra, "train_seconds": time.perf_counter() - start}


def seed_statistics(values: Sequence[float]) -> Dict[str, object]:
    """Mean, standard deviation (ddof 1) and 95% t-interval of the mean of per-seed values."""
    values = np.asarray(values, dtype=np.float64)
    mean, std = float(values.mean()), float(values.std(ddof=1))
    half = float(stats.t.ppf(0.975, len(values) - 1) * std / math.sqrt(len(values)))
    return {"mean": mean, "std": std, "ci95": [mean - half, mean + half], "per_seed": values.tolist()}


def combine_seeds(runs: List[dict]) -> dict:
    """One task's result over training seeds (`run_seed`'s results, in seed order). One seed: its result,
    scores over folds (hear-eval-kit's aggregate). Several: scores over seeds of each seed's mean over folds
    (`seed_statistics`), "spread": "seeds", every seed's result in "runs"; "folds" are the first seed's."""
    if len(runs) == 1:
        return {**runs[0], "spread": "folds"}
    first = runs[0]
    return {"task": first["task"], "protocol": first["protocol"], "primary_score": first["primary_score"],
            "scores": {name: seed_statistics([run["scores"][name]["mean"] for run in runs])
                       for name in first["scores"]},
            "spread": "seeds", "seeds": [run["seed"] for run in runs], "settings": first["settings"],
            "folds": first["folds"], "runs": runs, "train_seconds": sum(run["train_seconds"] for run in runs)}


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
        return trainer.train(conf_list, training_rows(data, split.train), concat_splits(data, split.valid))

    grid_results = fit(confs, splits[0])
    best = rank_grid_points(grid_results, trainer.maximize)[0]
    split_results = [best] + [fit([best.conf], split)[0] for split in splits[1:]]
    folds = [{"test": "|".join(split.test), "validation_score": result.validation_score, "epoch": result.epoch,
              "epochs_trained": result.epochs_trained, "postprocessing": dict(result.postprocessing),
              "train_seconds": result.train_seconds, **trainer.test(result, concat_splits(data, split.test))}
             for split, result in zip(splits, split_results)]
    return task_result(data, "hear", trainer.primary.name, folds, start, skip_nan=True, seed=seed,
                       settings={"grid_points": config.grid_points, "grid": config.grid, "dtype": config.dtype},
                       score_mode="max" if trainer.maximize else "min", hparams=best.conf,
                       grid=[{**{k: r.conf[k] for k in ("hidden_layers", "lr", "initialization")},
                              "validation_score": r.validation_score, "epoch": r.epoch} for r in grid_results])


def run_protocol(data: TaskData, config: ProtocolConfig = ProtocolConfig()) -> dict:
    """The whole protocol on one task, once per seed of `config.seeds` -> results dict (JSON-serialisable)."""
    return combine_seeds([run_seed(data, config, seed) for seed in config.seeds])
