"""HEAR task folders (hear-preprocess layout): reading, writing, digests; the 19 HEAR 2021 tasks' specifications.

A task folder, as in the HEAR 2021 tarballs and as `write_task` writes it::

    <folder>/task_metadata.json       task_name, embedding_type (scene|event), prediction_type
                                      (multiclass|multilabel), split_mode (trainvaltest |
                                      new_split_kfold | presplit_kfold), splits, sample_duration,
                                      evaluation [metric, ...], optional evaluation_params
    <folder>/labelvocabulary.csv      idx,label  (idx 0..n-1)
    <folder>/<split>.json             scene: {file: [label, ...]}; event: {file: [{label, start, end}]} (ms)
    <folder>/<sample_rate>/<split>/<file>

`read_task(folder, sample_rate)` checks all of it (every listed audio file present and readable, every
label in the vocabulary) and raises one TaskError naming every missing or bad file; `list_tasks(dir)`
reads every task folder under a directory. A file name in <split>.json must be a plain name inside its
split folder: one that is absolute, holds a path separator, '..' or a NUL, or resolves (through a link)
outside the folder is refused, naming task, split and entry, before any audio is read or anything
written (`check_file_name`; eval.embedded applies the same to embedding folders).

Sample rates: the audio is read from the folder of the rate asked for when the task has one, else from
its highest-rate folder (the HEAR 2021 tasks on Zenodo have only 48000/), and `Task.read_audio`
resamples it on the way as hear-preprocess made its rate folders (hear_msm_mae.audio).

`Task.data_splits()` gives the train/valid/test split names per fold exactly as hear-eval-kit rotates
them: one fold for trainvaltest; for k folds, test = fold i, valid = fold i+1 (mod k), train = the rest.
Event records are dicts {"label", "start", "end"} (ms) everywhere (`Events`), as in <split>.json and as
the event scores take them.

`write_task(folder, metadata, splits)` writes a task folder from audio arrays and labels (the synthetic
tasks, the benchmarks' derived tasks and the tests' all go through it). Digests: a file's is the sha256 of
its name, sample rate, channels and samples as read (float32), `AudioDigest`; a task's (`task_digest`,
which eval.synthetic records in each task's metadata) the sha256 of every split's labels and its files'
digests (`combine_digests`), so that eval.embed can compute it from the files it reads, as it reads them.

`HEAR2021_TASKS` holds the 19 tasks of the HEAR 2021 leaderboard (`TaskSpec`: folder name of the
16 kHz tarball, leaderboard column, types, split mode, primary metric and the evaluation list).
`task_spec(task)` finds a folder's spec (None for other tasks; the primary metric is then the
first of its `evaluation` list, as in hear-eval-kit).
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import soundfile

from hear_msm_mae.audio import mono_at_rate, read_blocks

SAMPLE_RATE = 16000
EMBEDDING_TYPES = ("scene", "event")
PREDICTION_TYPES = ("multiclass", "multilabel")
SPLIT_MODES = ("trainvaltest", "new_split_kfold", "presplit_kfold")
TRAINVALTEST = ("train", "valid", "test")
MAX_LISTED = 20  # problems listed by name in one TaskError

Events = Dict[str, List[dict]]  # file -> its events [{"label": str, "start": ms, "end": ms}, ...]
Example = Tuple[np.ndarray, list]  # one file to write: (audio (S,) in [-1, 1], its labels as <split>.json holds them)


class TaskError(ValueError):
    """A task folder that is missing files or has unreadable/inconsistent ones (all named)."""


class AudioDigest:
    """sha256 of one audio file as read: its name, rate and channels, then its samples (float32, channels
    interleaved), fed by passing the file's blocks through `through`."""

    def __init__(self, name: str, rate: int, channels: int):
        self.sha = hashlib.sha256(json.dumps([name, rate, channels]).encode())

    def through(self, blocks):
        for block in blocks:
            self.sha.update(np.ascontiguousarray(block, dtype="<f4").tobytes())
            yield block

    def hexdigest(self) -> str:
        return f"sha256:{self.sha.hexdigest()}"


@dataclass(frozen=True)
class TaskSpec:
    """What the harness knows about one HEAR 2021 task."""
    folder: str  # folder name in the official 16 kHz tarball, e.g. "tfds_crema_d-1.0.0-full"
    title: str  # column of the HEAR 2021 leaderboard
    task_name: str  # task_metadata.json "task_name"
    embedding_type: str
    prediction_type: str
    split_mode: str
    nfolds: Optional[int]  # None for trainvaltest
    evaluation: Tuple[str, ...]  # the first is the primary metric

    @property
    def primary_metric(self) -> str:
        return self.evaluation[0]


SCENE_CLASS_METRICS = ("top1_acc", "mAP", "d_prime", "aucroc")
HEAR2021_TASKS: Dict[str, TaskSpec] = {spec.folder: spec for spec in (
    TaskSpec("beehive_states_fold0-v2-full", "Beehive", "beehive_states_fold0", "scene", "multiclass",
             "trainvaltest", None, ("aucroc", "mAP", "d_prime", "top1_acc")),
    TaskSpec("beijing_opera-v1.0-hear2021-full", "Beijing Opera", "beijing_opera", "scene", "multiclass",
             "new_split_kfold", 5, SCENE_CLASS_METRICS),
    TaskSpec("tfds_crema_d-1.0.0-full", "CREMA-D", "tfds_crema_d", "scene", "multiclass",
             "new_split_kfold", 5, SCENE_CLASS_METRICS),
    TaskSpec("dcase2016_task2-hear2021-full", "DCASE 2016", "dcase2016_task2", "event", "multilabel",
             "trainvaltest", None, ("event_onset_200ms_fms", "segment_1s_er")),
    TaskSpec("esc50-v2.0.0-full", "ESC-50", "esc50", "scene", "multiclass",
             "presplit_kfold", 5, SCENE_CLASS_METRICS),
    TaskSpec("fsd50k-v1.0-full", "FSD50K", "fsd50k", "scene", "multilabel",
             "trainvaltest", None, ("mAP", "d_prime", "aucroc", "top1_acc")),
    TaskSpec("tfds_gtzan-1.0.0-full", "GTZAN Genre", "tfds_gtzan", "scene", "multiclass",
             "new_split_kfold", 10, SCENE_CLASS_METRICS),
    TaskSpec("tfds_gtzan_music_speech-1.0.0-full", "GTZAN Music/Speech", "tfds_gtzan_music_speech", "scene",
             "multiclass", "new_split_kfold", 10, SCENE_CLASS_METRICS),
    TaskSpec("gunshot_triangulation-v1.0-full", "Gunshot", "gunshot_triangulation", "scene", "multiclass",
             "new_split_kfold", 7, SCENE_CLASS_METRICS),
    TaskSpec("libricount-v1.0.0-hear2021-full", "Libricount", "libricount", "scene", "multiclass",
             "new_split_kfold", 5, SCENE_CLASS_METRICS),
    TaskSpec("maestro-v3.0.0-5h", "Maestro 5h", "maestro", "event", "multilabel",
             "new_split_kfold", 5, ("event_onset_50ms_fms", "event_onset_offset_50ms_20perc_fms")),
    TaskSpec("mridangam_stroke-v1.5-full", "Mridangam Stroke", "mridangam_stroke", "scene", "multiclass",
             "new_split_kfold", 5, SCENE_CLASS_METRICS),
    TaskSpec("mridangam_tonic-v1.5-full", "Mridangam Tonic", "mridangam_tonic", "scene", "multiclass",
             "new_split_kfold", 5, SCENE_CLASS_METRICS),
    TaskSpec("nsynth_pitch-v2.2.3-50h", "NSynth Pitch 50h", "nsynth_pitch", "scene", "multiclass",
             "trainvaltest", None, ("pitch_acc", "chroma_acc")),
    TaskSpec("nsynth_pitch-v2.2.3-5h", "NSynth Pitch 5h", "nsynth_pitch", "scene", "multiclass",
             "trainvaltest", None, ("pitch_acc", "chroma_acc")),
    TaskSpec("speech_commands-v0.0.2-5h", "Speech commands 5h", "speech_commands", "scene", "multiclass",
             "trainvaltest", None, ("top1_acc",)),
    TaskSpec("speech_commands-v0.0.2-full", "Speech commands full", "speech_commands", "scene", "multiclass",
             "trainvaltest", None, ("top1_acc",)),
    TaskSpec("vocal_imitation-v1.1.3-full", "Vocal Imitation", "vocal_imitation", "scene", "multiclass",
             "new_split_kfold", 3, ("mAP", "d_prime", "aucroc", "top1_acc")),
    TaskSpec("vox_lingua_top10-hear2021-full", "VoxLingua107 top 10", "vox_lingua_top10", "scene", "multiclass",
             "new_split_kfold", 5, SCENE_CLASS_METRICS),
)}


@dataclass(frozen=True)
class DataSplit:
    """The split names one fold trains, validates and tests on."""
    train: Tuple[str, ...]
    valid: Tuple[str, ...]
    test: Tuple[str, ...]


@dataclass
class Task:
    """A task folder read by `read_task` (checked); split label files are parsed on first use."""
    path: Path
    metadata: dict
    labels: List[str]  # the vocabulary, index = position
    sample_rate: int = SAMPLE_RATE  # of the audio read_audio returns
    audio_rate: int = SAMPLE_RATE  # of the folder it reads (module docstring)
    split_labels: Dict[str, dict] = field(default_factory=dict, repr=False)  # split -> raw <split>.json

    @property
    def name(self) -> str:
        """The folder name, e.g. 'tfds_crema_d-1.0.0-full' (the key of HEAR2021_TASKS)."""
        return self.path.name

    @property
    def task_name(self) -> str:
        return self.metadata["task_name"]

    @property
    def embedding_type(self) -> str:
        return self.metadata["embedding_type"]

    @property
    def prediction_type(self) -> str:
        return self.metadata["prediction_type"]

    @property
    def split_mode(self) -> str:
        return self.metadata["split_mode"]

    @property
    def splits(self) -> List[str]:
        return list(self.metadata["splits"])

    @property
    def sample_duration(self) -> Optional[float]:
        return self.metadata.get("sample_duration")

    @property
    def evaluation(self) -> List[str]:
        return list(self.metadata["evaluation"])

    @cached_property
    def spec(self) -> Optional[TaskSpec]:
        return task_spec(self)

    @property
    def primary_metric(self) -> str:
        return self.spec.primary_metric if self.spec else self.evaluation[0]

    @cached_property
    def label_to_idx(self) -> Dict[str, int]:
        return {label: i for i, label in enumerate(self.labels)}

    def files(self, split: str) -> List[str]:
        """File names of a split, in the order of its <split>.json."""
        return list(self.split_labels[split])

    def audio_dir(self, split: str) -> Path:
        return self.path / str(self.audio_rate) / split

    def read_audio(self, split: str, name: str) -> Tuple[np.ndarray, str]:
        """(one file of a split (S,) float32 mono at `sample_rate`, the digest of the file as read)."""
        rate, channels, blocks = read_blocks(inside(self.audio_dir(split), name, self.name, split))
        digest = AudioDigest(name, rate, channels)
        return mono_at_rate(digest.through(blocks), rate, self.sample_rate), digest.hexdigest()

    def audio_paths(self, split: str) -> List[Path]:
        return [self.audio_dir(split) / name for name in self.files(split)]

    def scene_labels(self, split: str) -> Dict[str, List[str]]:
        """Scene task: file -> its labels (exactly one for multiclass)."""
        if self.embedding_type != "scene":
            raise ValueError(f"{self.name} is an {self.embedding_type} task, not a scene task")
        return {f: [str(label) for label in labels] for f, labels in self.split_labels[split].items()}

    def events(self, split: str) -> Events:
        """Event task: file -> its events, labels as strings, start and end as float ms."""
        if self.embedding_type != "event":
            raise ValueError(f"{self.name} is a {self.embedding_type} task, not an event task")
        return {f: [{"label": str(e["label"]), "start": float(e["start"]), "end": float(e["end"])} for e in events]
                for f, events in self.split_labels[split].items()}

    def data_splits(self) -> List[DataSplit]:
        """Train/valid/test split names per fold, rotated as hear-eval-kit does."""
        if self.split_mode == "trainvaltest":
            return [DataSplit(("train",), ("valid",), ("test",))]
        return fold_rotation(self.splits)


def fold_rotation(folds: List[str]) -> List[DataSplit]:
    """k folds (sorted): fold i tests, fold i+1 (mod k) validates, the others train."""
    folds = sorted(folds)
    if len(set(folds)) != len(folds) or len(folds) < 3:
        raise ValueError(f"k-fold evaluation needs at least 3 distinct folds, got {folds}")
    rotation = []
    for i, test in enumerate(folds):
        valid = folds[(i + 1) % len(folds)]
        rotation.append(DataSplit(tuple(f for f in folds if f not in (test, valid)), (valid,), (test,)))
    return rotation


def task_spec(task: Task) -> Optional[TaskSpec]:
    """The HEAR 2021 spec of a task folder: by folder name, else by task_name + mode if unambiguous."""
    if task.name in HEAR2021_TASKS:
        return HEAR2021_TASKS[task.name]
    candidates = [s for s in HEAR2021_TASKS.values() if s.task_name == task.metadata.get("task_name")]
    if len(candidates) > 1:
        candidates = [s for s in candidates if s.folder.endswith("-" + str(task.metadata.get("mode")))]
    return candidates[0] if len(candidates) == 1 else None


def read_json(path: Path, problems: List[str]):
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        problems.append(f"missing file {path}")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        problems.append(f"unreadable file {path}: {e}")
    return None


def read_vocabulary(path: Path, problems: List[str]) -> List[str]:
    """labelvocabulary.csv -> labels in idx order (idx must be 0..n-1)."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except FileNotFoundError:
        problems.append(f"missing file {path}")
        return []
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        problems.append(f"unreadable file {path}: {e}")
        return []
    try:
        indexed = sorted((int(row["idx"]), str(row["label"])) for row in rows)
    except (KeyError, TypeError, ValueError):
        problems.append(f"bad file {path}: needs columns idx,label with integer idx")
        return []
    if [i for i, _ in indexed] != list(range(len(indexed))) or not indexed:
        problems.append(f"bad file {path}: idx must run 0..n-1 (n >= 1)")
        return []
    return [label for _, label in indexed]


def check_metadata(metadata, path: Path, problems: List[str]) -> bool:
    if not isinstance(metadata, dict):
        problems.append(f"bad file {path}: not a JSON object")
        return False
    required = ("task_name", "embedding_type", "prediction_type", "split_mode", "splits", "evaluation")
    missing = [k for k in required if k not in metadata]
    if missing:
        problems.append(f"bad file {path}: missing fields {missing}")
        return False
    for key, allowed in (("embedding_type", EMBEDDING_TYPES), ("prediction_type", PREDICTION_TYPES),
                         ("split_mode", SPLIT_MODES)):
        if metadata[key] not in allowed:
            problems.append(f"bad file {path}: {key} {metadata[key]!r} is not one of {list(allowed)}")
    splits = metadata["splits"]
    if not (isinstance(splits, list) and splits and all(isinstance(s, str) for s in splits)):
        problems.append(f"bad file {path}: splits must be a non-empty list of names")
    elif any(check_file_name(split) for split in splits):
        problems.append(f"bad file {path}: split names must be plain folder names, got "
                        f"{[split for split in splits if check_file_name(split)]}")
    elif metadata["split_mode"] == "trainvaltest" and sorted(splits) != sorted(TRAINVALTEST):
        problems.append(f"bad file {path}: trainvaltest tasks need splits {list(TRAINVALTEST)}, got {splits}")
    elif metadata["split_mode"] != "trainvaltest" and len(splits) < 3:
        problems.append(f"bad file {path}: k-fold tasks need at least 3 folds, got {splits}")
    if not (isinstance(metadata["evaluation"], list) and metadata["evaluation"]):
        problems.append(f"bad file {path}: evaluation must be a non-empty list of metric names")
    return not problems


def check_file_name(name) -> Optional[str]:
    """Why a <split>.json key is not a plain file name inside its split folder (None: it is)."""
    if not isinstance(name, str) or not name:
        return "is not a file name"
    if "\0" in name:
        return "holds a NUL character"
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return "is an absolute path"
    if "/" in name or "\\" in name or os.sep in name:
        return "holds a path separator"
    if name == ".":
        return "is '.'"
    if ".." in name:
        return "holds '..'"
    return None


def check_split_labels(task: Task, split: str, content, problems: List[str]) -> bool:
    """Shape of <split>.json, its file names (`check_file_name`) and every label in the vocabulary; whether
    its file names are all safe to read."""
    where = task.path / f"{split}.json"
    if not isinstance(content, dict):
        problems.append(f"bad file {where}: must map file names to labels")
        return False
    unsafe = [(name, why) for name in content if (why := check_file_name(name))]
    for name, why in unsafe:
        problems.append(f"task {task.name}, split {split}: entry {name!r} {why}; refused")
    vocabulary = task.label_to_idx
    for name, labels in content.items():
        if not isinstance(labels, list):
            problems.append(f"bad file {where}: labels of {name} are not a list")
            continue
        if task.embedding_type == "event":
            if not all(isinstance(e, dict) and {"label", "start", "end"} <= set(e) for e in labels):
                problems.append(f"bad file {where}: events of {name} need label, start, end")
                continue
            labels = [e["label"] for e in labels]
        elif task.prediction_type == "multiclass" and len(labels) != 1:
            problems.append(f"bad file {where}: {name} has {len(labels)} labels in a multiclass task")
        unknown = [label for label in labels if str(label) not in vocabulary]
        if unknown:
            problems.append(f"bad file {where}: {name} has labels {unknown} not in labelvocabulary.csv")
    return not unsafe


def inside(folder: Path, name: str, task: str, split: str) -> Path:
    """folder / name, a checked file name; TaskError if it resolves (through a link) outside `folder`."""
    path = folder / name
    if path.resolve().parent != folder.resolve():
        raise TaskError(f"task {task}, split {split}: entry {name!r} resolves to {path.resolve()}, outside "
                        f"{folder}; refused")
    return path


def check_audio(task: Task, split: str, problems: List[str]) -> None:
    audio_dir = task.audio_dir(split)
    if not audio_dir.is_dir():
        problems.append(f"missing folder {audio_dir}")
        return
    for name in task.files(split):
        try:
            path = inside(audio_dir, name, task.name, split)
        except TaskError as e:
            problems.append(str(e))
            continue
        if not path.is_file():
            problems.append(f"missing file {path}")
            continue
        try:
            info = soundfile.info(str(path))
        except (RuntimeError, soundfile.LibsndfileError) as e:
            problems.append(f"unreadable file {path}: {e}")
            continue
        if info.samplerate != task.audio_rate or info.frames == 0:
            problems.append(f"bad file {path}: {info.frames} frames at {info.samplerate} Hz, "
                            f"expected audio at {task.audio_rate} Hz")


def rate_folders(path: Path) -> List[int]:
    """The sample rates a task folder has audio folders for (its numeric sub-folders), sorted."""
    return sorted(int(p.name) for p in path.iterdir() if p.is_dir() and p.name.isdigit() and int(p.name) > 0)


def read_task(path, sample_rate: int = SAMPLE_RATE, check_audio_files: bool = True) -> Task:
    """Read and check a task folder whose audio is read at `sample_rate` (from the folder of that rate, else
    resampled from its highest-rate folder); TaskError listing every missing/unreadable/inconsistent file."""
    path = Path(path)
    if not path.is_dir():
        raise TaskError(f"task folder not found: {path}")
    problems: List[str] = []
    metadata = read_json(path / "task_metadata.json", problems)
    labels = read_vocabulary(path / "labelvocabulary.csv", problems)
    if metadata is None or not check_metadata(metadata, path / "task_metadata.json", problems) or not labels:
        raise_problems(path, problems)
    rates = rate_folders(path)
    task = Task(path, metadata, labels, sample_rate, sample_rate if sample_rate in rates or not rates else rates[-1])
    for split in task.splits:
        content = read_json(path / f"{split}.json", problems)
        if content is None:
            continue
        safe = check_split_labels(task, split, content, problems)
        task.split_labels[split] = content if isinstance(content, dict) else {}
        if check_audio_files and safe:
            check_audio(task, split, problems)
    raise_problems(path, problems)
    return task


def raise_problems(path: Path, problems: List[str]) -> None:
    if problems:
        shown = problems[:MAX_LISTED]
        more = f"\n  ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
        raise TaskError(f"task {path}: {len(problems)} problem(s):\n  " + "\n  ".join(shown) + more)


def list_tasks(tasks_dir, **kwargs) -> List[Task]:
    """Every task folder (one with a task_metadata.json) directly under `tasks_dir`, sorted by name."""
    tasks_dir = Path(tasks_dir)
    if not tasks_dir.is_dir():
        raise TaskError(f"tasks folder not found: {tasks_dir}")
    folders = sorted(p for p in tasks_dir.iterdir() if p.is_dir() and not p.name.startswith(".")
                     and (p / "task_metadata.json").exists())
    if not folders:
        raise TaskError(f"no task folders (with a task_metadata.json) in {tasks_dir}")
    return [read_task(folder, **kwargs) for folder in folders]


def used_labels(splits: Dict[str, Dict[str, Example]], embedding_type: str) -> List[str]:
    """The labels the files of `splits` carry, sorted."""
    labels = set()
    for examples in splits.values():
        for _, labelled in examples.values():
            labels |= {str(e["label"]) for e in labelled} if embedding_type == "event" else set(map(str, labelled))
    return sorted(labels)


def combine_digests(split_labels: Dict[str, dict], file_digests: Dict[str, Dict[str, str]]) -> str:
    """A task's digest: per split (in the given order) its labels (<split>.json) and, in sorted order, every
    file's name and `AudioDigest`. It depends on what the task holds, not on how its files are laid out."""
    digest = hashlib.sha256()
    for split, labels in split_labels.items():
        digest.update(json.dumps([split, labels], sort_keys=True).encode())
        for file_name in sorted(labels):
            digest.update(json.dumps([file_name, file_digests[split][file_name]]).encode())
    return f"sha256:{digest.hexdigest()}"


def task_digest(folder, splits: Sequence[str], sample_rate: int = SAMPLE_RATE) -> str:
    """`combine_digests` of the task folder's labels and of its files in the `sample_rate` folder."""
    folder = Path(folder)
    split_labels, file_digests = {}, {}
    for split in splits:
        split_labels[split] = json.loads((folder / f"{split}.json").read_text())
        file_digests[split] = {}
        for file_name in split_labels[split]:
            rate, channels, blocks = read_blocks(folder / str(sample_rate) / split / file_name)
            digest = AudioDigest(file_name, rate, channels)
            for _ in digest.through(blocks):
                pass
            file_digests[split][file_name] = digest.hexdigest()
    return combine_digests(split_labels, file_digests)


def write_task(folder, metadata: dict, splits: Dict[str, Dict[str, Example]], labels: Optional[Sequence[str]] = None,
               subtype: str = "PCM_16", sample_rate: int = SAMPLE_RATE, digest: bool = False) -> Path:
    """Write a task folder in hear-preprocess's layout, checked by `read_task`; returns its path.

    metadata: the fields of task_metadata.json (task_name, embedding_type, prediction_type, split_mode,
    evaluation, ...); "splits" is set to the names of `splits`, in order, and with `digest` the last field
    is "digest" (`task_digest` of what was written). splits: {split: {file name: (audio (S,), labels)}},
    files in <split>.json in this order; scene labels [label, ...], event labels [{"label", "start", "end"}]
    (ms). labels: the vocabulary in idx order (default: the labels used, sorted). subtype: the audio files'
    (soundfile's name: "PCM_16", as in the HEAR 2021 tarballs, or "FLOAT").
    The folder is built under a hidden temporary name beside it and renamed when complete (a folder of
    the same name is replaced), so a killed run never leaves a half-written task.
    """
    folder = Path(folder)
    if metadata.get("embedding_type") not in EMBEDDING_TYPES:
        raise ValueError(f"{folder.name}: metadata needs an embedding_type in {list(EMBEDDING_TYPES)}, "
                         f"got {metadata.get('embedding_type')!r}")
    empty = [split for split, examples in splits.items() if not examples]
    if empty or not splits:
        raise ValueError(f"{folder.name}: every split needs files; empty: {empty or 'no splits at all'}")
    unsafe = [f"split {split}: entry {name!r} {why}" for split, examples in splits.items() for name in examples
              if (why := check_file_name(name))]
    if unsafe:
        raise TaskError(f"task {folder.name}: refused file names: {'; '.join(unsafe)}")
    vocabulary = list(labels) if labels is not None else used_labels(splits, metadata["embedding_type"])
    tmp = folder.parent / f".{folder.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        for split, examples in splits.items():
            audio_dir = tmp / str(sample_rate) / split
            audio_dir.mkdir(parents=True)
            for file_name, (audio, _) in examples.items():
                soundfile.write(str(audio_dir / file_name), audio, sample_rate, subtype=subtype)
            (tmp / f"{split}.json").write_text(json.dumps({name: labelled for name, (_, labelled) in examples.items()},
                                                          indent=1))
        (tmp / "labelvocabulary.csv").write_text("idx,label\n" + "".join(f"{i},{label}\n"
                                                                          for i, label in enumerate(vocabulary)))
        full = {**metadata, "splits": list(splits)}
        if digest:
            full["digest"] = task_digest(tmp, list(splits), sample_rate)
        (tmp / "task_metadata.json").write_text(json.dumps(full, indent=1))
        read_task(tmp, sample_rate)  # a TaskError naming what is inconsistent, before anything is replaced
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    return folder
