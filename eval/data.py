"""What a run needs on disk: the HEAR 2021 tasks from Zenodo and the official checkpoints, fetched and verified;
task folders at the sample rates hear-eval-kit's runners read.

    python -m eval.data fetch [TASK ...] [CHECKPOINT ...] [--all | --paper] --to DIR [--dry-run]
                              [--keep-archives] [--zenodo URL]
    python -m eval.data resample TASKS_DIR --rate 16000 [--task FOLDER ...] [--jobs N]

`fetch` downloads the task archives of HEAR 2021 (TASK: a task folder name, `ARCHIVES`; --all: the 20;
--paper: the MSM-MAE paper's 15 tasks and its checkpoint, eval.papers) into DIR/.archives, verifies each
against the record's listing, unpacks it safely and moves the task folder to DIR/<folder> in one rename,
then deletes the archive. CHECKPOINT: an official checkpoint name (hear_msm_mae.releases), fetched into
the package's cache. A task folder or checkpoint that is there already is not fetched again; an
interrupted transfer resumes; before anything is fetched it says how much disk the whole needs and
refuses when it is not free (hear_msm_mae.download does the fetching). --dry-run lists what would be
fetched and stops.

Sources. The archives are Zenodo record 6332517, "HEAR 2021" tasks at 48 kHz, a version of the concept record
5885750 (hear-eval-kit's README links doi:10.5281/zenodo.5885750; hearbenchmark.com/hear-tasks.html: "all audio
tasks, but only at 48000Hz"). Names: `hear2021-<task folder>-48000.tar.gz`; 12 of them are written out in
third-party download scripts that use record 6332517 (e.g. hear2021-tfds_crema_d-1.0.0-full-48000.tar.gz,
hear2021-libricount-v1.0.0-hear2021-full-48000.tar.gz); the others follow the same rule, and every name is checked
against the listing. Sizes and md5 checksums: Zenodo's listing of the record (GET /api/records/6332517, which states
both for every file) at fetch time; the listing itself could not be read here, so the only checksums written into
this file are Beehive's two, published in embeddings-benchmark/mteb (scripts/data/beehive/create_data.py), and a
listing that disagrees with them is refused. For every other archive no checksum could be found outside the listing,
and none is invented here. Inside an archive the task folder sits under `tasks/` (mteb's script above expects
tasks/beehive_states_fold0-v2-full/); any prefix is accepted as long as every member lies in the one task folder.

`resample` writes, for every task under TASKS_DIR without a RATE folder, RATE/<split>/<file> from its
highest-rate folder exactly as hear-preprocess made its rate folders (hear_msm_mae.audio: libsoxr's HQ
recipe, 16-bit PCM), files in parallel (--jobs, default the CPU count), each file atomically into
<task>/.RATE.partial, which is renamed to <task>/RATE when complete: a killed run resumes where it stopped
and hear-eval-kit never sees half a folder. eval.run and eval.embed do not need it (they resample as they
read); hear-eval-kit's own runners do.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import urllib.error
import urllib.request
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Dict, List, Optional, Sequence, Tuple

from tqdm import tqdm

from hear_msm_mae.audio import resample_file
from hear_msm_mae.download import (DownloadError, Remote, UnsafeArchiveError, check_space, cache_dir, extract, fetch,
                                   human)
from hear_msm_mae.releases import CHECKPOINTS, checkpoint_dir, fetch_checkpoint

from .papers import PAPERS
from .tasks import HEAR2021_TASKS, TaskError, list_tasks, read_task

ZENODO = "https://zenodo.org"
RECORD = "6332517"
RATE = 48000  # the Zenodo archives' only sample rate
ARCHIVES_DIR = ".archives"
UNPACKED_PER_PACKED = 1.15  # disk a task takes unpacked per byte of its .tar.gz (16-bit WAV barely compresses)
# The 20 task folders: the 19 tasks of the leaderboard and Beehive's second fold.
TASK_FOLDERS: Tuple[str, ...] = tuple(sorted(HEAR2021_TASKS)) + ("beehive_states_fold1-v2-full",)
PINNED_MD5 = {  # embeddings-benchmark/mteb scripts/data/beehive/create_data.py (ARCHIVES)
    "hear2021-beehive_states_fold0-v2-full-48000.tar.gz": "md5:f9e045f9b2ddf5643edc1143304c80aa",
    "hear2021-beehive_states_fold1-v2-full-48000.tar.gz": "md5:8bced7ce8336bf23fd61c61f04aee109",
}


def archive_name(folder: str) -> str:
    return f"hear2021-{folder}-{RATE}.tar.gz"


# ----------------------------------------------------------------------------------------------
# The record's listing

def read_listing(zenodo: str = ZENODO, record: str = RECORD, timeout: float = 60) -> Dict[str, Remote]:
    """archive name -> Remote (URL, size and md5 from Zenodo's listing of the record; pinned md5s checked)."""
    url = f"{zenodo.rstrip('/')}/api/records/{record}"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers={"Accept": "application/json"}),
                                    timeout=timeout) as response:
            listing = json.load(response)
    except (urllib.error.URLError, OSError, json.JSONDecodeError) as e:
        raise DownloadError(f"cannot read the listing of Zenodo record {record} at {url}: {e}") from None
    files = listing.get("files")
    entries = files.get("entries", {}).values() if isinstance(files, dict) else files or []
    remotes = {}
    for entry in entries:
        name, checksum = entry["key"], entry.get("checksum")
        pinned = PINNED_MD5.get(name)
        if pinned and checksum and checksum.lower() != pinned:
            raise DownloadError(f"{name}: the listing of record {record} gives checksum {checksum}, but its "
                                f"published checksum is {pinned}; refusing the listing")
        remotes[name] = Remote(name, f"{zenodo.rstrip('/')}/records/{record}/files/{name}", entry.get("size"),
                               pinned or checksum, f"Zenodo record {record} listing ({url})")
    return remotes


# ----------------------------------------------------------------------------------------------
# Fetching tasks

def task_layout(folder: str):
    """A check of an archive's member paths: every member is the task folder, inside it, or one of the
    folders above it (the same ones for all); UnsafeArchiveError otherwise, before anything is extracted."""
    def check(paths: List[PurePosixPath]) -> None:
        roots = {path.parts[:path.parts.index(folder)] for path in paths if folder in path.parts}
        if len(roots) != 1:
            raise UnsafeArchiveError(f"{archive_name(folder)}: expected one task folder {folder}, found "
                                     f"{len(roots)}; nothing extracted")
        root = roots.pop()
        stray = [str(p) for p in paths
                 if p.parts[:len(root) + 1] != root + (folder,) and p.parts != root[:len(p.parts)]]
        if stray:
            raise UnsafeArchiveError(f"{archive_name(folder)}: members outside the task folder {folder}, e.g. "
                                     f"{stray[:3]}; nothing extracted")
    return check


def unpack_task(archive: Path, tasks_dir: Path, folder: str) -> Path:
    """The task folder of `archive`, checked (eval.tasks.read_task) and moved to tasks_dir/folder in one rename."""
    staging = tasks_dir / f".{folder}.unpacking"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        extract(archive, staging, task_layout(folder))
        found = next(p for p in staging.rglob(folder) if p.is_dir())
        read_task(found, RATE)  # a TaskError naming what is wrong, before the task is put in place
        target = tasks_dir / folder
        shutil.rmtree(target, ignore_errors=True)
        os.replace(found, target)
        return target
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@dataclass
class Plan:
    """What `fetch` would do: task archives and checkpoints still missing, and the disk they need."""
    tasks: List[Tuple[str, Remote]]  # (task folder, its archive)
    checkpoints: List[str]
    present: List[str]  # asked for and there already

    def download_bytes(self, tasks_dir: Path) -> int:
        part = {remote.name: tasks_dir / ARCHIVES_DIR / f".{remote.name}.part" for _, remote in self.tasks}
        return sum((remote.size or 0) - (part[remote.name].stat().st_size if part[remote.name].exists() else 0)
                   for _, remote in self.tasks)

    def disk_bytes(self, tasks_dir: Path) -> int:
        """The download, plus the tasks unpacked (estimated), while the archive is still there."""
        return self.download_bytes(tasks_dir) + int(sum((r.size or 0) for _, r in self.tasks) * UNPACKED_PER_PACKED)

    def describe(self, tasks_dir: Path) -> str:
        lines = [f"  {remote.name}  {human(remote.size) if remote.size else 'size unknown'}  "
                 f"{remote.checksum or 'checksum unknown'}  -> {tasks_dir / folder}"
                 for folder, remote in self.tasks]
        lines += [f"  {name}  -> {checkpoint_dir() / name}" for name in self.checkpoints]
        lines += [f"  {name}: there already" for name in self.present]
        unknown = [r.name for _, r in self.tasks if r.size is None]
        total = (f"{len(self.tasks)} task archive(s), {human(self.download_bytes(tasks_dir))} to download, about "
                 f"{human(self.disk_bytes(tasks_dir))} of disk in {tasks_dir} while unpacking"
                 + (f", and {len(unknown)} archive(s) of unknown size" if unknown else ""))
        return "\n".join(lines + [total, f"{len(self.checkpoints)} checkpoint(s) (sizes not published)"])


def plan_fetch(names: Sequence[str], tasks_dir: Path, zenodo: str = ZENODO, dry_run: bool = False) -> Plan:
    """Sort `names` into task folders and checkpoint names; read the record's listing only if a task is missing
    (`dry_run`: if it cannot be read, the archives are planned without their sizes and checksums)."""
    unknown = [n for n in names if n not in TASK_FOLDERS and n not in CHECKPOINTS]
    if unknown:
        raise ValueError(f"unknown names {unknown}: give task folders ({', '.join(TASK_FOLDERS)}) or official "
                         f"checkpoint names ({', '.join(sorted(CHECKPOINTS))})")
    present = [n for n in names if (tasks_dir / n / "task_metadata.json").is_file()
               or (n in CHECKPOINTS and (checkpoint_dir() / n).is_file())]
    missing_tasks = [n for n in names if n in TASK_FOLDERS and n not in present]
    try:
        listing = read_listing(zenodo) if missing_tasks else {}
    except DownloadError as e:
        if not dry_run:
            raise
        print(f"{e}: sizes and checksums unknown", file=sys.stderr)
        listing = {archive_name(n): Remote(archive_name(n), f"{zenodo.rstrip('/')}/records/{RECORD}/files/"
                                           f"{archive_name(n)}") for n in missing_tasks}
    absent = [archive_name(n) for n in missing_tasks if archive_name(n) not in listing]
    if absent:
        raise DownloadError(f"not in the listing of Zenodo record {RECORD}: {absent}")
    return Plan([(n, listing[archive_name(n)]) for n in missing_tasks],
                [n for n in names if n in CHECKPOINTS and n not in present], present)


def fetch_all(plan: Plan, tasks_dir: Path, keep_archives: bool = False, progress: bool = True) -> List[Path]:
    """Carry out a plan (after checking the disk space it needs); returns the task folders and checkpoints."""
    check_space(tasks_dir, plan.disk_bytes(tasks_dir), "fetching the tasks")
    fetched = []
    for folder, remote in plan.tasks:
        archive = fetch(remote, tasks_dir / ARCHIVES_DIR, progress=progress)
        fetched.append(unpack_task(archive, tasks_dir, folder))
        if not keep_archives:
            archive.unlink()
    return fetched + [fetch_checkpoint(name, progress) for name in plan.checkpoints]


def fetch_command(names: Sequence[str], tasks_dir: Path, dry_run: bool, keep_archives: bool, zenodo: str) -> None:
    plan = plan_fetch(list(dict.fromkeys(names)), tasks_dir, zenodo, dry_run)
    if not plan.tasks and not plan.checkpoints:
        print(f"nothing to fetch: {', '.join(plan.present)} there already")
        return
    print(("would fetch" if dry_run else "fetching") + f" (checkpoints into {cache_dir()}):\n"
          + plan.describe(tasks_dir), file=sys.stderr)
    if not dry_run:
        tasks_dir.mkdir(parents=True, exist_ok=True)
        for path in fetch_all(plan, tasks_dir, keep_archives):
            print(path)


# ----------------------------------------------------------------------------------------------
# Rate folders

def resample_one(job: Tuple[Path, Path, int]) -> None:
    source, target, rate = job
    resample_file(source, target, rate)


def resample_tasks(tasks_dir: Path, rate: int, tasks: Optional[Sequence[str]] = None, jobs: Optional[int] = None,
                   progress: bool = True) -> List[Path]:
    """Write the RATE folder of every task (of `tasks`; default all) under tasks_dir that has none; returns the
    folders written. Files already in <task>/.RATE.partial are kept (a resumed run)."""
    todo = [t for t in list_tasks(tasks_dir, sample_rate=rate) if (not tasks or t.name in tasks)
            and t.audio_rate != rate]
    work, partial = [], {}
    for task in todo:
        partial[task.name] = task.path / f".{rate}.partial"
        for split in task.splits:
            for name in task.files(split):
                target = partial[task.name] / split / name
                if not target.is_file():
                    work.append((task.audio_dir(split) / name, target, rate))
    with ProcessPoolExecutor(max_workers=jobs or os.cpu_count()) as pool:
        for _ in tqdm(pool.map(resample_one, work, chunksize=8), total=len(work), unit="file",
                      desc=f"resampling to {rate} Hz", disable=not progress or None):
            pass
    written = []
    for task in todo:
        for split in task.splits:  # a split whose files were all there already may still lack its folder
            (partial[task.name] / split).mkdir(parents=True, exist_ok=True)
        os.replace(partial[task.name], task.path / str(rate))
        written.append(task.path / str(rate))
    return written


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m eval.data", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    fetch_parser = commands.add_parser("fetch", help="fetch HEAR 2021 tasks (Zenodo) and official checkpoints")
    fetch_parser.add_argument("names", nargs="*", help="task folders and/or official checkpoint names")
    which = fetch_parser.add_mutually_exclusive_group()
    which.add_argument("--all", action="store_true", help=f"all {len(TASK_FOLDERS)} HEAR 2021 task folders")
    which.add_argument("--paper", action="store_true", help="the MSM-MAE paper's tasks and checkpoint (eval.papers)")
    fetch_parser.add_argument("--to", type=Path, required=True, help="folder of task folders")
    fetch_parser.add_argument("--dry-run", action="store_true", help="list what would be fetched, fetch nothing")
    fetch_parser.add_argument("--keep-archives", action="store_true", help="keep the .tar.gz files in TO/.archives")
    fetch_parser.add_argument("--zenodo", default=ZENODO, help=f"Zenodo's address (default {ZENODO}; a mirror's)")
    resample_parser = commands.add_parser("resample", help="write the missing sample-rate folders of tasks")
    resample_parser.add_argument("tasks_dir", type=Path, help="folder of task folders")
    resample_parser.add_argument("--rate", type=int, required=True, help="sample rate to write, e.g. 16000")
    resample_parser.add_argument("--task", nargs="+", default=None, help="task folders (default: all)")
    resample_parser.add_argument("--jobs", type=int, default=None, help="processes (default: the CPU count)")
    args = parser.parse_args(argv)
    try:
        if args.command == "fetch":
            paper = PAPERS["msm-mae-paper"]
            names = list(TASK_FOLDERS) if args.all else [*paper.tasks, paper.checkpoint] if args.paper else []
            if not names and not args.names:
                raise SystemExit("error: name tasks or checkpoints to fetch, or give --all or --paper")
            fetch_command(names + args.names, args.to, args.dry_run, args.keep_archives, args.zenodo)
        else:
            if args.rate < 1 or (args.jobs is not None and args.jobs < 1):
                raise SystemExit("error: --rate and --jobs must be positive")
            for folder in resample_tasks(args.tasks_dir, args.rate, args.task, args.jobs):
                print(folder)
    except (DownloadError, TaskError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    main()
