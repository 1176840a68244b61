"""Embedded tasks: hear-eval-kit's on-disk embedding format, and reading it into one split type.

The format, as heareval.embeddings.runner writes it (eval.embed writes the same bytes; the downstream
models read either's with `load_task_data`):

    E/<module><-key=value for each option, slugified>/<task folder>/        (`model_dir_name`)
        task_metadata.json, labelvocabulary.csv, <split>.json      copies from the task folder
        <split>/<file>.embedding.npy          scene (D,) / event (n, D) float32 (np.save)
        <split>/<file>.target-labels.json     scene: the file's labels; event: labels per timestamp
        <split>/<file>.timestamps.json        event only: the n timestamps (ms)
        <split>.embeddings.npy                all embeddings of the split, files shuffled with
                                              random.Random(0) (seeded once per task,
                                              `memmap_file_order`): a raw float32 np.memmap,
                                              no .npy header
        <split>.embedding-dimensions.json     [rows, D] of that memmap
        <split>.target-labels.pkl             pickled list of the rows' labels
        <split>.filename-timestamps.json      event only: [[E/.../<split>/<file>, timestamp], ...]
        profile.embeddings.json               time_elapsed, gpu_max_mem, gpu_device_name (+ eval.embed's:
                                              peak_rss_mb, files, files_per_second, batch_size,
                                              world_size)
        .done.embeddings                      written last: the task is complete

eval.embed also writes, beside that format: <split>/<file>.audio-digest, the digest of the audio file as it
was read (eval.tasks.AudioDigest), before the file's embedding; and audio-digest.json, the task's digest
over those (eval.tasks.combine_digests, `read_audio_digest`), the digest eval.run reports with the scores.

An event file's labels per timestamp are those of the events with start <= t < end + 0.0001 ms, as in
hear-eval-kit (`labels_at_timestamps`; for overlapping events the order within a timestamp follows
<split>.json, where hear-eval-kit's interval tree gives an arbitrary order; its loader turns both into
the same multi-hot vector).

In memory a task is `TaskData`: its description (eval.tasks.Task) and one `SplitData` per split, the one
form every downstream model (eval.linear_probe, eval.hear_protocol) and the scores take:

    data = load_task_data(E / "<module dir>" / "<task folder>")   # checked against the split memmaps
    data.splits["fold01"].embeddings (N, D), .targets (N, C), .filenames (N,); event tasks also
        .timestamps (N,) ms and .events {file: [{"label", "start", "end"}]} (ms)
    data.concat(["fold00", "fold02"])      several splits as one, rows in <split>.json order
    data.training_rows(["train"])          the rows in hear-eval-kit's training order (its memmaps')
"""
from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from .tasks import Events, Task, inside, read_task

DONE_FILE = ".done.embeddings"
AUDIO_DIGEST_FILE = "audio-digest.json"
EVENT_END_TOLERANCE_MS = 0.0001  # hear-eval-kit includes timestamps up to end + 0.0001


# ----------------------------------------------------------------------------------------------
# Names and rules of the format

def slug(text: str) -> str:
    """python-slugify's default for ASCII text: lower case, runs of other characters -> '-'."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def model_dir_name(module: str, model_options: Dict) -> str:
    """'<module>' plus '-key=value' per option, e.g. 'hear_msm_mae-mode=reference'."""
    return module + "".join(f"-{slug(k)}={slug(str(v))}" for k, v in model_options.items())


def embedding_path(split_dir: Path, file_name: str) -> Path:
    return split_dir / f"{file_name}.embedding.npy"


def audio_digest_path(split_dir: Path, file_name: str) -> Path:
    return split_dir / f"{file_name}.audio-digest"


def read_audio_digest(task_embeddings_dir: Path) -> Optional[str]:
    """The digest of the audio an embedded task was made from (None: made by hear-eval-kit's runner)."""
    path = Path(task_embeddings_dir) / AUDIO_DIGEST_FILE
    return json.loads(path.read_text())["digest"] if path.is_file() else None


def memmap_file_order(task: Task) -> Dict[str, List[int]]:
    """Per split, the indices into `task.files(split)` of its files in the order of its merged
    <split>.embeddings.npy: each split's file list shuffled by one random.Random(0) per task, split
    after split in metadata order (hear-eval-kit's task_embeddings)."""
    prng = random.Random()
    prng.seed(0)
    order = {}
    for split in task.splits:
        order[split] = list(range(len(task.files(split))))
        prng.shuffle(order[split])
    return order


def labels_at_timestamps(events: List[dict], timestamps: np.ndarray) -> List[List[str]]:
    """For each timestamp (ms) the labels of the events covering it: start <= t < end + 0.0001."""
    unique = list(dict.fromkeys((e["start"], e["end"], e["label"]) for e in events))
    return [[label for start, end, label in unique if start <= t < end + EVENT_END_TOLERANCE_MS]
            for t in map(float, timestamps)]  # compared in float64, as hear-eval-kit's numpy 1 did


def multi_hot(labels: Sequence, label_to_idx: Dict[str, int]) -> np.ndarray:
    """(C,) float32: 1 at each label's index."""
    vector = np.zeros(len(label_to_idx), np.float32)
    vector[[label_to_idx[str(label)] for label in labels]] = 1.0
    return vector


# ----------------------------------------------------------------------------------------------
# The split type

@dataclass
class SplitData:
    """One split of an embedded task, or several as one.

    embeddings (N, D) float32: one row per file (scene tasks) or per timestamp (event tasks), files in
    <split>.json order; targets (N, C) float32 multi-hot; filenames (N,): the file of each row. Event tasks
    also: timestamps (N,) ms of each row, and events: the split's reference events. memmap_rows (N,): the
    rows in the order of the split's merged memmap (hear-eval-kit's training order); None: already in
    that order. Rows taken out of order (`rows`) carry only embeddings, targets and file names.
    """
    embeddings: np.ndarray
    targets: np.ndarray
    filenames: Optional[List[str]] = None
    timestamps: Optional[np.ndarray] = None
    events: Optional[Events] = None
    memmap_rows: Optional[np.ndarray] = None

    def rows(self, index: np.ndarray) -> "SplitData":
        """The rows `index` (an integer array), in that order."""
        filenames = None if self.filenames is None else [self.filenames[i] for i in index]
        return SplitData(self.embeddings[index], self.targets[index], filenames)

    def in_memmap_order(self) -> "SplitData":
        return self if self.memmap_rows is None else self.rows(self.memmap_rows)

    @staticmethod
    def concat(parts: Sequence["SplitData"]) -> "SplitData":
        """The parts' rows one after the other, events merged (one part: that part itself, memmap order kept)."""
        if len(parts) == 1:
            return parts[0]
        filenames = None if any(p.filenames is None for p in parts) else [f for p in parts for f in p.filenames]
        timestamps = events = None
        if all(p.events is not None for p in parts):
            timestamps = np.concatenate([p.timestamps for p in parts])
            events = {f: file_events for p in parts for f, file_events in p.events.items()}
        return SplitData(np.concatenate([p.embeddings for p in parts]), np.concatenate([p.targets for p in parts]),
                         filenames, timestamps, events)


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

    def _named(self, names: Sequence[str]) -> List[SplitData]:
        missing = [n for n in names if n not in self.splits]
        if missing:
            raise ValueError(f"task {self.task.name}: no embeddings for split(s) {missing}")
        return [self.splits[n] for n in names]

    def concat(self, names: Sequence[str], shuffle_seed: Optional[int] = None) -> SplitData:
        """The splits `names` as one, rows in <split>.json order; `shuffle_seed`: rows in a seeded random
        order (the linear probe's)."""
        data = SplitData.concat(self._named(names))
        if shuffle_seed is None:
            return data
        return data.rows(np.random.default_rng(shuffle_seed).permutation(len(data.embeddings)))

    def training_rows(self, names: Sequence[str]) -> SplitData:
        """What hear-eval-kit trains on: the memmaps of the splits `names`, concatenated in that order (its
        ConcatDataset)."""
        return SplitData.concat([split.in_memmap_order() for split in self._named(names)])


# ----------------------------------------------------------------------------------------------
# Reading

def embedded_task_dirs(model_dir) -> List[Path]:
    """The complete task folders (with .done.embeddings) of one module's embeddings folder, sorted."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"embeddings folder not found: {model_dir}")
    return sorted(p for p in model_dir.iterdir() if (p / DONE_FILE).is_file())


def read_embedded_task(task_embeddings_dir) -> Task:
    """The task description (metadata, vocabulary, split labels) copied into an embeddings folder."""
    task_embeddings_dir = Path(task_embeddings_dir)
    if not (task_embeddings_dir / DONE_FILE).exists():
        raise FileNotFoundError(f"{task_embeddings_dir}: embeddings incomplete (no {DONE_FILE}); run eval.embed")
    return read_task(task_embeddings_dir, check_audio_files=False)


def memmap_rows(file_order: Sequence[int], file_lengths: Sequence[int]) -> np.ndarray:
    """Row indices (N,) of files laid out in <split>.json order, taken file by file in `file_order`."""
    starts = np.concatenate([[0], np.cumsum(file_lengths)[:-1]]).astype(np.int64)
    return np.concatenate([np.arange(starts[f], starts[f] + file_lengths[f]) for f in file_order]).astype(np.int64)


def read_split(task: Task, split: str, file_order: Sequence[int]) -> SplitData:
    """One split's per-file arrays (which both eval.embed and heareval's embeddings runner write), files in
    <split>.json order; `file_order`: the files' order in the split's memmap."""
    split_dir = task.path / split
    names = task.files(split)
    paths = [inside(split_dir, embedding_path(split_dir, n).name, task.name, split) for n in names]
    missing = [str(path) for path in paths if not path.exists()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} embedding files missing, e.g. {missing[:3]}")
    arrays = [np.load(path).astype(np.float32) for path in paths]
    if task.embedding_type == "scene":
        labels = task.scene_labels(split)
        return SplitData(np.stack(arrays), np.stack([multi_hot(labels[n], task.label_to_idx) for n in names]), names,
                         memmap_rows=np.asarray(file_order, dtype=np.int64))
    targets, timestamps = [], []
    for name, array in zip(names, arrays):
        per_frame = json.loads((split_dir / f"{name}.target-labels.json").read_text())
        targets.append(np.stack([multi_hot(labels, task.label_to_idx) for labels in per_frame])
                       if per_frame else np.zeros((0, len(task.labels)), np.float32))
        timestamps.append(np.asarray(json.loads((split_dir / f"{name}.timestamps.json").read_text()), np.float64))
        if not len(array) == len(per_frame) == len(timestamps[-1]):
            raise ValueError(f"{embedding_path(split_dir, name)}: {len(array)} embeddings, {len(timestamps[-1])} "
                             f"timestamps, {len(per_frame)} label lists")
    lengths = [len(t) for t in timestamps]
    return SplitData(np.concatenate(arrays), np.concatenate(targets),
                     [name for name, n in zip(names, lengths) for _ in range(n)], np.concatenate(timestamps),
                     task.events(split), memmap_rows(file_order, lengths))


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
    """A task's embeddings (written by eval.embed or by heareval's embeddings runner), every split checked
    against its memmap."""
    task_dir = Path(task_embeddings_dir)
    task = read_embedded_task(task_dir)
    order = memmap_file_order(task)
    splits = {}
    for name in task.splits:
        splits[name] = read_split(task, name, order[name])
        check_memmap(task_dir, name, splits[name])
    return TaskData(task, splits)
