"""Embedding extraction for any HEAR module, written in hear-eval-kit's on-disk format.

    python -m eval.embed MODULE --tasks-dir T --embeddings-dir E [--model CKPT]
                         [--model-options JSON] [--task FOLDER ...] [--batch-size N]

e.g. `python -m eval.embed hear_msm_mae --tasks-dir tasks --embeddings-dir embeddings
--model ckpt.pth --model-options '{"mode": "reference"}'` or `python -m eval.embed hearbaseline
--model naive_baseline.pt ...`. MODULE is imported and `MODULE.load_model([CKPT,] **options)`
must return a torch.nn.Module with `sample_rate` (the HEAR 2021 API).

Output: exactly what heareval.embeddings.runner writes (the format: eval.embedded, which reads it
back), E/<module><-key=value for each option>/<task folder>/..., so heareval's predictions runner
reads our embeddings and eval.embedded reads embeddings made by heareval.

Resuming: every file is written atomically (temporary file, then rename) and a file's
.embedding.npy is written after its labels, timestamps and audio digest, so an existing .embedding.npy
means the file is complete. A re-run skips tasks with .done.embeddings and, inside a task, every batch
whose files all have embeddings; batches are formed the same way every time (fixed order, size
and sharding), so a resumed run writes the same bytes as an uninterrupted one. A run refuses to
resume into a directory made with a different module, checkpoint or options (`embedding-run.json`).

Audio: each file is read from the task's folder at the model's sample rate, or resampled from its
highest-rate folder as hear-preprocess made its rate folders (eval.tasks, hear_msm_mae.audio), so the
HEAR 2021 tasks from Zenodo (48000/ only) are embedded as they are. The digest of every file as read is
kept beside its embedding, and the task's digest over them in audio-digest.json (eval.embedded): the
digest of the audio the embeddings were made from, which eval.run prints beside the scores. A task that
records a digest (eval.synthetic) must have been read as it was built, else nothing is marked done.

Batches: `--batch-size`, by default hear-eval-kit's size max(1, int(0.7 * 120 / sample_duration
* 16000 / sample_rate)) (which matters for models whose embeddings depend on their batch-mates,
e.g. hear_msm_mae in "reference" mode); files of different lengths never share a batch.
Runs on the GPU when there is one.

From Python: `embed_tasks(load_module(MODULE, CKPT, options, device), T, E)`.

Scale-out over processes/GPUs with torchrun, e.g. 4 GPUs on one machine:

    torchrun --nproc_per_node 4 -m eval.embed MODULE --tasks-dir T --embeddings-dir E ...

Each rank loads the model (on cuda:LOCAL_RANK, or the CPU with the gloo backend where there is no
GPU: hear_msm_mae.distributed) and embeds every WORLD_SIZE-th batch of each split; after a barrier
rank 0 writes the merged split files, the profile and .done.embeddings. The batches are the same as
in a one-process run, so the files are identical.
"""
from __future__ import annotations

import argparse
import json
import pickle
import resource
import sys
import time
from dataclasses import dataclass, field
from importlib import import_module
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import soundfile
import torch
from tqdm import tqdm

from hear_msm_mae.atomic import atomic_write
from hear_msm_mae.distributed import Distributed
from hear_msm_mae.download import DownloadError

from hear_msm_mae.releases import CHECKPOINTS

from .embedded import (AUDIO_DIGEST_FILE, DONE_FILE, audio_digest_path, embedding_path, labels_at_timestamps,
                       memmap_file_order, model_dir_name)
from .tasks import Task, TaskError, combine_digests, list_tasks

PROFILE_FILE = "profile.embeddings.json"
RUN_FILE = "embedding-run.json"


# ----------------------------------------------------------------------------------------------
# The model

@dataclass
class LoadedModule:
    """A HEAR module with its model on `device`, loaded from `model_path` (None: the module's default)
    with the keyword arguments `options`."""
    name: str
    module: object
    model: torch.nn.Module
    device: torch.device
    model_path: Optional[str] = None
    options: Dict = field(default_factory=dict)

    @property
    def sample_rate(self) -> int:
        return int(self.model.sample_rate)

    @property
    def dir_name(self) -> str:
        """The folder of its embeddings, named as heareval's runner names it: '<module>-key=value...'."""
        return model_dir_name(self.name, self.options)

    def scene(self, audio: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return self.module.get_scene_embeddings(audio, self.model).detach().float().cpu().numpy()

    def timestamps(self, audio: torch.Tensor) -> Tuple[np.ndarray, np.ndarray]:
        with torch.no_grad():
            embeddings, stamps = self.module.get_timestamp_embeddings(audio, self.model)
        return embeddings.detach().float().cpu().numpy(), stamps.detach().cpu().numpy()


def load_module(name: str, model_path: Optional[str], model_options: Dict, device: torch.device) -> LoadedModule:
    """Import the HEAR module `name` and call its load_model(model_path, **model_options) (no path: its
    default); ValueError naming the module when it does not import."""
    try:
        module = import_module(name)
    except ModuleNotFoundError as e:
        raise ValueError(f"cannot import the HEAR module {name!r}: {e}") from None
    model_path = str(model_path) if model_path else None
    model = module.load_model(model_path, **model_options) if model_path else module.load_model(**model_options)
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"{name}.load_model returned a {type(model).__name__}; only torch models are supported")
    return LoadedModule(name, module, model.to(device).eval(), device, model_path, dict(model_options))


# ----------------------------------------------------------------------------------------------
# Per-file outputs

def save_json(path: Path, obj, indent: Optional[int] = None) -> None:
    with atomic_write(path, "w") as f:
        json.dump(obj, f, indent=indent)


def save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_write(path) as f:
        np.save(f, array)


def write_batch(loaded: LoadedModule, task: Task, split: str, names: Sequence[str], outdir: Path) -> None:
    """Embed one batch of equally long files and write each file's outputs (embedding last)."""
    clips, digests = zip(*(task.read_audio(split, n) for n in names))
    audio = torch.from_numpy(np.stack(clips)).to(loaded.device)  # (B, S) at the model's rate
    split_labels = task.split_labels[split]
    for name, digest in zip(names, digests):
        with atomic_write(audio_digest_path(outdir, name), "w") as f:
            f.write(digest)
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
# One task, all tasks

def copy_task_files(task: Task, task_out: Path) -> None:
    for name in ["task_metadata.json", "labelvocabulary.csv"] + [f"{s}.json" for s in task.splits]:
        with atomic_write(task_out / name) as f:
            f.write((task.path / name).read_bytes())


def write_audio_digest(task: Task, task_out: Path) -> str:
    """The task's digest over the digests of its files as they were read (rank 0, once all are written),
    saved in AUDIO_DIGEST_FILE; TaskError if the task records another one (its files changed since it was
    built)."""
    files = {split: {name: audio_digest_path(task_out / split, name).read_text() for name in task.files(split)}
             for split in task.splits}
    digest = combine_digests({split: task.split_labels[split] for split in task.splits}, files)
    recorded = task.metadata.get("digest")
    if recorded is not None and recorded != digest:
        raise TaskError(f"task {task.name}: its metadata records digest {recorded}, but the audio and labels read "
                        f"from {task.path} have digest {digest}: its files changed after it was built; rebuild it "
                        f"(and delete {task_out})")
    save_json(task_out / AUDIO_DIGEST_FILE, {"digest": digest, "audio_rate": task.audio_rate,
                                             "sample_rate": task.sample_rate}, indent=1)
    return digest


def check_same_task(task: Task, task_out: Path) -> None:
    """Refuse to resume into (or reuse) embeddings of another version of the task: tasks that record a digest
    (eval.synthetic) must have the digest the embeddings were made from."""
    made_from = task_out / "task_metadata.json"
    if made_from.is_file():
        old, new = json.loads(made_from.read_text()).get("digest"), task.metadata.get("digest")
        if old != new:
            raise TaskError(f"{task_out} holds embeddings of task {task.name} with digest {old}, but {task.path} "
                            f"now has digest {new}: delete {task_out} (or embed into another folder)")


def embed_task(loaded: LoadedModule, task: Task, task_out: Path, batch_size: Optional[int],
               dist: Distributed) -> dict:
    """Embed one task into `task_out` (resuming); returns its profile (rank 0's is written)."""
    start = time.time()
    reset_peak_rss()
    if loaded.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(loaded.device)
    if dist.main:
        copy_task_files(task, task_out)
    size = batch_size or default_batch_size(task, loaded.sample_rate)
    computed = 0
    for split in task.splits:
        outdir = task_out / split
        outdir.mkdir(parents=True, exist_ok=True)
        mine = make_batches(task, split, size)[dist.rank::dist.world_size]
        todo = [b for b in mine if not all(embedding_path(outdir, n).exists() for n in b)]
        with tqdm(total=sum(map(len, mine)), initial=sum(map(len, mine)) - sum(map(len, todo)), unit="file",
                  desc=f"{task.name} {split}", disable=not dist.main or None, leave=False) as bar:
            for names in todo:
                write_batch(loaded, task, split, names, outdir)
                computed += len(names)
                bar.update(len(names))
    dist.barrier()
    if dist.main:
        digest = write_audio_digest(task, task_out)
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
        "files_per_second": computed * dist.world_size / elapsed if elapsed > 0 else None,
        "batch_size": size,
        "world_size": dist.world_size,
        "audio_digest": digest if dist.main else None,
    }
    if dist.main:
        save_json(task_out / PROFILE_FILE, profile, indent=4)
        with atomic_write(task_out / DONE_FILE, "w"):
            pass
    dist.barrier()
    return profile


def check_run(model_out: Path, run: dict, dist: Distributed) -> None:
    """Record what made this folder; refuse to resume into one made by something else."""
    path = model_out / RUN_FILE
    if path.exists():
        previous = json.loads(path.read_text())
        if previous != run:
            raise SystemExit(f"error: {model_out} was made with {previous}, not {run}; "
                             "use another --embeddings-dir or remove it")
    elif dist.main:
        save_json(path, run, indent=1)
    dist.barrier()


def embed_tasks(loaded: LoadedModule, tasks_dir, embeddings_dir, tasks: Optional[Sequence[str]] = None,
                batch_size: Optional[int] = None, dist: Optional[Distributed] = None) -> Path:
    """Embed the tasks (folder names; default all) under `tasks_dir` with a loaded module; returns
    E/<module dir>. `dist`: this process under torchrun (default: started here, and closed at the end)."""
    started = dist is None
    dist = Distributed.start() if started else dist
    try:
        # every task folder is read and checked (file names included) before anything is written
        all_tasks = list_tasks(tasks_dir, sample_rate=loaded.sample_rate)
        if tasks:
            unknown = sorted(set(tasks) - {t.name for t in all_tasks})
            if unknown:
                raise TaskError(f"no task folders {unknown} in {tasks_dir}")
            all_tasks = [t for t in all_tasks if t.name in set(tasks)]
        model_out = Path(embeddings_dir) / loaded.dir_name
        model_out.mkdir(parents=True, exist_ok=True)
        check_run(model_out, {"module": loaded.name, "model": loaded.model_path, "model_options": loaded.options},
                  dist)
        for task in tqdm(all_tasks, desc="tasks", unit="task", disable=not dist.main or None):
            task_out = model_out / task.name
            check_same_task(task, task_out)
            if (task_out / DONE_FILE).exists():
                continue
            profile = embed_task(loaded, task, task_out, batch_size, dist)
            if dist.main:
                print(f"{task.name}: {profile['files']} files in {profile['time_elapsed']:.1f} s "
                      f"(peak RSS {profile['peak_rss_mb']:.0f} MB, GPU max {profile['gpu_max_mem']})", file=sys.stderr)
        return model_out
    finally:
        if started:
            dist.close()


def parse_model_options(text: str, model: Optional[str]) -> dict:
    """The --model-options JSON as a dict, after checking it and the --model file (SystemExit if wrong)."""
    try:
        options = json.loads(text)
    except json.JSONDecodeError as e:
        raise SystemExit(f"error: --model-options is not JSON: {e}") from None
    if not isinstance(options, dict):
        raise SystemExit("error: --model-options must be a JSON dict")
    if model is not None and not Path(model).is_file() and model not in CHECKPOINTS:
        raise SystemExit(f"error: model file not found (nor an official checkpoint name): {model}")
    return options


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m eval.embed", description=__doc__.split("\n\n")[0])
    parser.add_argument("module", help="HEAR module to import, e.g. hear_msm_mae or hearbaseline")
    parser.add_argument("--model", default=None, help="model weights file passed to load_model (or an official "
                        "checkpoint name, hear_msm_mae.releases)")
    parser.add_argument("--tasks-dir", required=True, type=Path, help="folder of HEAR task folders")
    parser.add_argument("--embeddings-dir", required=True, type=Path, help="where to write embeddings")
    parser.add_argument("--model-options", default="{}", help="JSON dict of keyword arguments for load_model")
    parser.add_argument("--task", nargs="+", default=None, help="task folder names (default: all)")
    parser.add_argument("--batch-size", type=int, default=None, help="files per batch (default: hear-eval-kit's)")
    args = parser.parse_args(argv)
    options = parse_model_options(args.model_options, args.model)
    if args.batch_size is not None and args.batch_size < 1:
        raise SystemExit("error: --batch-size must be at least 1")
    if not args.tasks_dir.is_dir():  # before the model is loaded
        raise SystemExit(f"error: tasks folder not found: {args.tasks_dir}")
    dist = Distributed.start()
    try:
        loaded = load_module(args.module, args.model, options, dist.device)
        out = embed_tasks(loaded, args.tasks_dir, args.embeddings_dir, args.task, args.batch_size, dist)
    except (ValueError, FileNotFoundError, DownloadError) as e:  # TaskError, a module that does not import, bad options
        raise SystemExit(f"error: {e}") from None
    finally:
        dist.close()
    print(out)


if __name__ == "__main__":
    main()
