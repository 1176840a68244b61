"""Embedding extraction for any HEAR module, written in hear-eval-kit's on-disk format.

    python -m eval.embed MODULE --tasks-dir T --embeddings-dir E [--model CKPT]
                         [--model-options JSON] [--task FOLDER ...] [--batch-size N]

e.g. `python -m eval.embed hear_msm_mae --tasks-dir tasks --embeddings-dir embeddings
--model ckpt.pth --model-options '{"mode": "reference"}'` or `python -m eval.embed hearbaseline
--model naive_baseline.pt ...`. MODULE is imported and `MODULE.load_model([CKPT,] **options)`
must return a torch.nn.Module with `sample_rate` (the HEAR 2021 API).

Output: exactly what heareval.embeddings.runner writes, so heareval's predictions runner reads our
embeddings and `load_split` below reads embeddings made by heareval:

    E/<module><-key=value for each option, slugified>/<task folder>/
        task_metadata.json, labelvocabulary.csv, <split>.json      copies from the task folder
        <split>/<file>.embedding.npy          scene (D,) / event (n, D) float32 (np.save)
        <split>/<file>.target-labels.json     scene: the file's labels; event: labels per timestamp
        <split>/<file>.timestamps.json        event only: the n timestamps (ms)
        <split>.embeddings.npy                all embeddings of the split, files shuffled with
                                              random.Random(0) (seeded once per task): a raw
                                              float32 np.memmap, no .npy header
        <split>.embedding-dimensions.json     [rows, D] of that memmap
        <split>.target-labels.pkl             pickled list of the rows' labels
        <split>.filename-timestamps.json      event only: [[E/.../<split>/<file>, timestamp], ...]
        profile.embeddings.json               time_elapsed, gpu_max_mem, gpu_device_name (+ ours:
                                              peak_rss_mb, files, files_per_second, batch_size,
                                              world_size)
        .done.embeddings                      written last: the task is complete

An event file's labels per timestamp are those of the events with start <= t < end + 0.0001 ms,
as in hear-eval-kit (for overlapping events the order within a timestamp follows <split>.json,
where hear-eval-kit's interval tree gives an arbitrary order; its loader turns both into the
same multi-hot vector).

Resuming: every file is written atomically (temporary file, then rename) and a file's
.embedding.npy is written after its labels and timestamps, so an existing .embedding.npy means
the file is complete. A re-run skips tasks with .done.embeddings and, inside a task, every batch
whose files all have embeddings; batches are formed the same way every time (fixed order, size
and sharding), so a resumed run writes the same bytes as an uninterrupted one. A run refuses to
resume into a directory made with a different module, checkpoint or options (`embedding-run.json`).

Batches: `--batch-size`, by default hear-eval-kit's size max(1, int(0.7 * 120 / sample_duration
* 16000 / sample_rate)) (which matters for models whose embeddings depend on their batch-mates,
e.g. hear_msm_mae in "reference" mode); files of different lengths never share a batch.
Runs on the GPU when there is one.

Scale-out over processes/GPUs with torchrun, e.g. 4 GPUs on one machine:

    torchrun --nproc_per_node 4 -m eval.embed MODULE --tasks-dir T --embeddings-dir E ...

Each rank loads the model (on cuda:LOCAL_RANK, or the CPU with the gloo backend where there is no
GPU) and embeds every WORLD_SIZE-th batch of each split; after a barrier rank 0 writes the
merged split files, the profile and .done.embeddings. The batches are the same as in a
one-process run, so the files are identical.

Reading embeddings back (for the downstream models), from our files or heareval's:

    for task_dir in embedded_task_dirs(E / "<module dir>"):     # complete tasks only
        task = read_embedded_task(task_dir)                    # eval.tasks.Task: metadata, labels,
                                                               # primary_metric, data_splits()
        for fold in task.data_splits():                        # train/valid/test split names
            train = [load_split(task_dir, s) for s in fold.train]
            ...
    scene: SceneSplit.embeddings (n, D) float32, .targets (n, n_labels) multi-hot, .labels, .filenames
    event: EventSplit.embeddings / .timestamps (ms) / .targets per file, .events {file: [Event]},
           .stacked() -> X (N, D), Y (N, n_labels), file index (N,)
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import random
import re
import resource
import sys
import time
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import soundfile
import torch
from tqdm import tqdm

from hear_msm_mae.atomic import atomic_write

from .tasks import Event, Task, TaskError, list_tasks, read_task

DONE_FILE = ".done.embeddings"
PROFILE_FILE = "profile.embeddings.json"
RUN_FILE = "embedding-run.json"
EVENT_END_TOLERANCE_MS = 0.0001  # hear-eval-kit includes timestamps up to end + 0.0001


# ----------------------------------------------------------------------------------------------
# Naming, as heareval.embeddings.runner names its output folder

def slug(text: str) -> str:
    """python-slugify's default for ASCII text: lower case, runs of other characters -> '-'."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def model_dir_name(module: str, model_options: Dict) -> str:
    """'<module>' plus '-key=value' per option, e.g. 'hear_msm_mae-mode=reference'."""
    return module + "".join(f"-{slug(k)}={slug(str(v))}" for k, v in model_options.items())


# ----------------------------------------------------------------------------------------------
# The model

@dataclass
class LoadedModule:
    """A HEAR module with its model on `device`."""
    name: str
    module: object
    model: torch.nn.Module
    device: torch.device

    @property
    def sample_rate(self) -> int:
        return int(self.model.sample_rate)

    def scene(self, audio: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return self.module.get_scene_embeddings(audio, self.model).detach().float().cpu().numpy()

    def timestamps(self, audio: torch.Tensor) -> Tuple[np.ndarray, np.ndarray]:
        with torch.no_grad():
            embeddings, stamps = self.module.get_timestamp_embeddings(audio, self.model)
        return embeddings.detach().float().cpu().numpy(), stamps.detach().cpu().numpy()


def load_module(name: str, model_path: Optional[str], model_options: Dict, device: torch.device) -> LoadedModule:
    module = import_module(name)
    model = module.load_model(model_path, **model_options) if model_path else module.load_model(**model_options)
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"{name}.load_model returned a {type(model).__name__}; only torch models are supported")
    return LoadedModule(name, module, model.to(device).eval(), device)


# ----------------------------------------------------------------------------------------------
# Per-file outputs

def save_json(path: Path, obj, indent: Optional[int] = None) -> None:
    with atomic_write(path, "w") as f:
        json.dump(obj, f, indent=indent)


def save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_write(path) as f:
        np.save(f, array)


def labels_at_timestamps(events: List[dict], timestamps: np.ndarray) -> List[List[str]]:
    """For each timestamp (ms) the labels of the events covering it: start <= t < end + 0.0001."""
    unique = list(dict.fromkeys((e["start"], e["end"], e["label"]) for e in events))
    return [[label for start, end, label in unique if start <= t < end + EVENT_END_TOLERANCE_MS]
            for t in map(float, timestamps)]  # compared in float64, as hear-eval-kit's numpy 1 did


def embedding_path(outdir: Path, file_name: str) -> Path:
    return outdir / f"{file_name}.embedding.npy"


def write_batch(loaded: LoadedModule, task: Task, split: str, names: Sequence[str], outdir: Path) -> None:
    """Embed one batch of equally long files and write each file's outputs (embedding last)."""
    audio = np.stack([soundfile.read(str(task.audio_dir(split) / n), dtype="float32")[0] for n in names])
    audio = torch.from_numpy(audio).to(loaded.device)  # (B, S)
    split_labels = task.split_labels[split]
    if task.embedding_type == "scene":
        embeddings = loaded.scene(audio)  # (B, D)
        for i, name in enumerate(names):
            save_json(outdir / f"{name}.target-labels.json", split_labels[name])
            save_npy(embedding_path(outdir, name), embeddings[i])
    else:
        embeddings, timestamps = loaded.timestamps(audio)  # (B, n, D), (B, n) ms
        for i, name in enumerate(names):
            save_json(outdir / f"{name}.timestamps.json", timestamps[i].tolist())
            save_json(outdir / f"{name}.target-labels.json",
                      labels_at_timestamps(split_labels[name], timestamps[i]), indent=4)
            save_npy(embedding_path(outdir, name), embeddings[i])


def default_batch_size(task: Task, sample_rate: int) -> int:
    """hear-eval-kit's batch size for a task."""
    if task.sample_duration is None:
        return 1
    return max(1, int(0.7 * (120 / task.sample_duration) * (16000 / sample_rate)))


def make_batches(task: Task, split: str, batch_size: int) -> List[List[str]]:
    """Consecutive files of <split>.json in batches of at most `batch_size` equally long files."""
    batches: List[List[str]] = []
    last_frames = None
    for name in task.files(split):
        frames = soundfile.info(str(task.audio_dir(split) / name)).frames
        if not batches or len(batches[-1]) == batch_size or frames != last_frames:
            batches.append([])
        batches[-1].append(name)
        last_frames = frames
    return batches


# ----------------------------------------------------------------------------------------------
# Merged split files (rank 0), as heareval's memmap_embeddings writes them

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


def merge_split(task: Task, split: str, outdir: Path, task_out: Path, file_order: List[int]) -> None:
    names = task.files(split)
    embedding_files = [embedding_path(outdir, names[i]) for i in file_order]
    shapes = [np.load(f, mmap_mode="r").shape for f in embedding_files]  # headers only
    scene = task.embedding_type == "scene"
    rows = len(shapes) if scene else sum(shape[0] for shape in shapes)
    dim = shapes[0][-1]
    labels: list = []
    filename_timestamps: list = []
    with atomic_write(task_out / f"{split}.embeddings.npy") as f:  # raw float32 rows, like np.memmap
        for embedding_file in embedding_files:
            array = np.load(embedding_file)
            if array.dtype != np.float32 or array.ndim != (1 if scene else 2) or array.shape[-1] != dim:
                raise ValueError(f"{embedding_file}: expected float32 {'(D,)' if scene else '(n, D)'} with D={dim}, "
                                 f"got {array.dtype} {array.shape}")
            f.write(np.ascontiguousarray(array).tobytes())
            label = json.loads(Path(str(embedding_file).replace("embedding.npy", "target-labels.json")).read_text())
            if scene:
                labels.append(label)
            else:
                labels += label
                stamps = json.loads(Path(str(embedding_file).replace("embedding.npy", "timestamps.json")).read_text())
                if not len(stamps) == len(label) == array.shape[0]:
                    raise ValueError(f"{embedding_file}: {array.shape[0]} embeddings, {len(stamps)} timestamps, "
                                     f"{len(label)} label lists")
                file_slug = str(embedding_file).replace(".embedding.npy", "")
                filename_timestamps += [(file_slug, t) for t in stamps]
    with atomic_write(task_out / f"{split}.embedding-dimensions.json", "w") as f:
        f.write(json.dumps((rows, dim)))
    with atomic_write(task_out / f"{split}.target-labels.pkl") as f:
        pickle.dump(labels, f)
    if not scene:
        with atomic_write(task_out / f"{split}.filename-timestamps.json", "w") as f:
            f.write(json.dumps(filename_timestamps, indent=4))


# ----------------------------------------------------------------------------------------------
# Peak memory of this process per task (Linux: VmHWM, reset through /proc/self/clear_refs)

def reset_peak_rss() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:  # not Linux or not allowed: the peak then counts from the process start
        pass


def peak_rss_mb() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ----------------------------------------------------------------------------------------------
# Distributed helpers (torchrun); a single process needs none of this

@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owner: bool = False  # this one started the process group (and closes it)

    @classmethod
    def from_env(cls) -> "Dist":
        """This process's place under torchrun; joins the process group unless a caller already has."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        dist = cls(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))
        if world > 1 and not torch.distributed.is_initialized():
            torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
            dist.owner = True
        return dist

    def device(self) -> torch.device:
        if torch.cuda.is_available():
            torch.cuda.set_device(self.local_rank)
            return torch.device("cuda", self.local_rank)
        return torch.device("cpu")

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def close(self) -> None:
        if self.owner and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


# ----------------------------------------------------------------------------------------------
# One task, all tasks

def copy_task_files(task: Task, task_out: Path) -> None:
    for name in ["task_metadata.json", "labelvocabulary.csv"] + [f"{s}.json" for s in task.splits]:
        with atomic_write(task_out / name) as f:
            f.write((task.path / name).read_bytes())


def check_same_task(task: Task, task_out: Path) -> None:
    """Refuse to resume into (or reuse) embeddings of another version of the task: tasks that record a digest
    (eval.synthetic) must have the digest the embeddings were made from."""
    made_from = task_out / "task_metadata.json"
    if made_from.is_file():
        old, new = json.loads(made_from.read_text()).get("digest"), task.metadata.get("digest")
        if old != new:
            raise TaskError(f"{task_out} holds embeddings of task {task.name} with digest {old}, but {task.path} "
                            f"now has digest {new}: delete {task_out} (or embed into another folder)")


def embed_task(loaded: LoadedModule, task: Task, task_out: Path, batch_size: Optional[int], dist: Dist) -> dict:
    """Embed one task into `task_out` (resuming); returns its profile (rank 0's is written)."""
    start = time.time()
    reset_peak_rss()
    if loaded.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(loaded.device)
    if dist.rank == 0:
        copy_task_files(task, task_out)
    size = batch_size or default_batch_size(task, loaded.sample_rate)
    computed = 0
    for split in task.splits:
        outdir = task_out / split
        outdir.mkdir(parents=True, exist_ok=True)
        mine = make_batches(task, split, size)[dist.rank::dist.world]
        todo = [b for b in mine if not all(embedding_path(outdir, n).exists() for n in b)]
        with tqdm(total=sum(map(len, mine)), initial=sum(map(len, mine)) - sum(map(len, todo)), unit="file",
                  desc=f"{task.name} {split}", disable=dist.rank != 0 or None, leave=False) as bar:
            for names in todo:
                write_batch(loaded, task, split, names, outdir)
                computed += len(names)
                bar.update(len(names))
    dist.barrier()
    if dist.rank == 0:
        order = memmap_file_order(task)
        for split in task.splits:
            merge_split(task, split, task_out / split, task_out, order[split])
    elapsed = time.time() - start
    profile = {
        "time_elapsed": elapsed,
        "gpu_max_mem": torch.cuda.max_memory_allocated(loaded.device) if loaded.device.type == "cuda" else None,
        "gpu_device_name": torch.cuda.get_device_name(loaded.device) if loaded.device.type == "cuda" else None,
        "peak_rss_mb": peak_rss_mb(),  # rank 0's process during this task
        "files": sum(len(task.files(s)) for s in task.splits),
        "files_computed_by_rank0": computed,
        "files_per_second": computed * dist.world / elapsed if elapsed > 0 else None,
        "batch_size": size,
        "world_size": dist.world,
    }
    if dist.rank == 0:
        save_json(task_out / PROFILE_FILE, profile, indent=4)
        with atomic_write(task_out / DONE_FILE, "w"):
            pass
    dist.barrier()
    return profile


def check_run(model_out: Path, run: dict, dist: Dist) -> None:
    """Record what made this folder; refuse to resume into one made by something else."""
    path = model_out / RUN_FILE
    if path.exists():
        previous = json.loads(path.read_text())
        if previous != run:
            raise SystemExit(f"error: {model_out} was made with {previous}, not {run}; "
                             "use another --embeddings-dir or remove it")
    elif dist.rank == 0:
        save_json(path, run, indent=1)
    dist.barrier()


def embed_tasks(module: str, tasks_dir, embeddings_dir, model_path: Optional[str] = None,
                model_options: Optional[Dict] = None, tasks: Optional[Sequence[str]] = None,
                batch_size: Optional[int] = None) -> Path:
    """Embed the tasks (folder names; default all) under `tasks_dir`; returns E/<module dir>."""
    model_options = dict(model_options or {})
    dist = Dist.from_env()
    try:
        if not Path(tasks_dir).is_dir():  # a wrong tasks folder or module name fails before anything is written
            raise TaskError(f"tasks folder not found: {tasks_dir}")
        import_module(module)
        model_out = Path(embeddings_dir) / model_dir_name(module, model_options)
        model_out.mkdir(parents=True, exist_ok=True)
        check_run(model_out, {"module": module, "model": str(model_path) if model_path else None,
                              "model_options": model_options}, dist)
        loaded = load_module(module, model_path, model_options, dist.device())
        all_tasks = list_tasks(tasks_dir, sample_rate=loaded.sample_rate)
        if tasks:
            unknown = sorted(set(tasks) - {t.name for t in all_tasks})
            if unknown:
                raise SystemExit(f"error: no task folders {unknown} in {tasks_dir}")
            all_tasks = [t for t in all_tasks if t.name in set(tasks)]
        for task in tqdm(all_tasks, desc="tasks", unit="task", disable=dist.rank != 0 or None):
            task_out = model_out / task.name
            check_same_task(task, task_out)
            if (task_out / DONE_FILE).exists():
                continue
            profile = embed_task(loaded, task, task_out, batch_size, dist)
            if dist.rank == 0:
                print(f"{task.name}: {profile['files']} files in {profile['time_elapsed']:.1f} s "
                      f"(peak RSS {profile['peak_rss_mb']:.0f} MB, GPU max {profile['gpu_max_mem']})", file=sys.stderr)
        return model_out
    finally:
        dist.close()


# ----------------------------------------------------------------------------------------------
# Reading a task's embeddings back (for the downstream models)

@dataclass
class SceneSplit:
    """A scene task split: row i is file filenames[i]."""
    filenames: List[str]
    embeddings: np.ndarray  # (n, D) float32
    labels: List[List[str]]  # the labels of each file
    targets: np.ndarray  # (n, n_labels) float32 multi-hot (one-hot for multiclass)


@dataclass
class EventSplit:
    """An event task split: per file, its frame embeddings, timestamps, per-frame targets, events."""
    filenames: List[str]
    embeddings: List[np.ndarray]  # per file (n_i, D) float32
    timestamps: List[np.ndarray]  # per file (n_i,) ms, float64
    targets: List[np.ndarray]  # per file (n_i, n_labels) float32 multi-hot of the labels at each timestamp
    events: Dict[str, List[Event]]  # file -> its events (ms), from <split>.json

    def stacked(self) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """All frames: X (N, D), Y (N, n_labels) and the file index of each frame (N,)."""
        file_index = np.concatenate([np.full(len(t), i) for i, t in enumerate(self.timestamps)])
        return np.concatenate(self.embeddings), np.concatenate(self.targets), file_index


def multi_hot(labels: Sequence, label_to_idx: Dict[str, int]) -> np.ndarray:
    vector = np.zeros(len(label_to_idx), np.float32)
    vector[[label_to_idx[str(label)] for label in labels]] = 1.0
    return vector


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


def load_split(task_embeddings_dir, split: str):
    """One split's embeddings and targets (SceneSplit or EventSplit), files in <split>.json order.

    Reads the per-file arrays that both eval.embed and heareval's embeddings runner write.
    """
    task = read_embedded_task(task_embeddings_dir)
    if split not in task.splits:
        raise ValueError(f"{task.path}: no split {split!r}; splits are {task.splits}")
    outdir = task.path / split
    names = task.files(split)
    missing = [str(embedding_path(outdir, n)) for n in names if not embedding_path(outdir, n).exists()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} embedding files missing, e.g. {missing[:3]}")
    if task.embedding_type == "scene":
        labels = task.scene_labels(split)
        return SceneSplit(names, np.stack([np.load(embedding_path(outdir, n)) for n in names]).astype(np.float32),
                          [labels[n] for n in names],
                          np.stack([multi_hot(labels[n], task.label_to_idx) for n in names]))
    targets = []
    for n in names:
        per_frame = json.loads((outdir / f"{n}.target-labels.json").read_text())
        targets.append(np.stack([multi_hot(labels, task.label_to_idx) for labels in per_frame])
                       if per_frame else np.zeros((0, len(task.labels)), np.float32))
    return EventSplit(names, [np.load(embedding_path(outdir, n)).astype(np.float32) for n in names],
                      [np.asarray(json.loads((outdir / f"{n}.timestamps.json").read_text()), np.float64)
                       for n in names],
                      targets, task.events(split))


def parse_model_options(text: str, model: Optional[str]) -> dict:
    """The --model-options JSON as a dict, after checking it and the --model file (SystemExit if wrong)."""
    try:
        options = json.loads(text)
    except json.JSONDecodeError as e:
        raise SystemExit(f"error: --model-options is not JSON: {e}") from None
    if not isinstance(options, dict):
        raise SystemExit("error: --model-options must be a JSON dict")
    if model is not None and not Path(model).is_file():
        raise SystemExit(f"error: model file not found: {model}")
    return options


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m eval.embed", description=__doc__.split("\n\n")[0])
    parser.add_argument("module", help="HEAR module to import, e.g. hear_msm_mae or hearbaseline")
    parser.add_argument("--model", default=None, help="model weights file passed to load_model")
    parser.add_argument("--tasks-dir", required=True, type=Path, help="folder of HEAR task folders")
    parser.add_argument("--embeddings-dir", required=True, type=Path, help="where to write embeddings")
    parser.add_argument("--model-options", default="{}", help="JSON dict of keyword arguments for load_model")
    parser.add_argument("--task", nargs="+", default=None, help="task folder names (default: all)")
    parser.add_argument("--batch-size", type=int, default=None, help="files per batch (default: hear-eval-kit's)")
    args = parser.parse_args(argv)
    options = parse_model_options(args.model_options, args.model)
    if args.batch_size is not None and args.batch_size < 1:
        raise SystemExit("error: --batch-size must be at least 1")
    try:
        out = embed_tasks(args.module, args.tasks_dir, args.embeddings_dir, args.model, options, args.task,
                          args.batch_size)
    except TaskError as e:
        raise SystemExit(f"error: {e}") from None
    except ModuleNotFoundError as e:
        raise SystemExit(f"error: cannot import the HEAR module {args.module!r}: {e}") from None
    print(out)


if __name__ == "__main__":
    main()
