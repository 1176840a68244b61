"""`python -m eval.data`: HEAR 2021 task archives fetched from a real HTTP server on 127.0.0.1 laid out as
Zenodo's record (tests/zenodo_server.py) — resumed, verified, unpacked safely, not fetched twice — and the
sample-rate folders written for hear-eval-kit's runners."""
from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile

from eval import data
from eval.tasks import read_task
from hear_msm_mae.audio import resample_file
from test_eval_tasks import make_task
from zenodo_server import FileServer

CREMA = "tfds_crema_d-1.0.0-full"
LIBRICOUNT = "libricount-v1.0.0-hear2021-full"
LISTING = f"/api/records/{data.RECORD}"


def task_archive(tmp_path: Path, folder: str, prefix: str = "tasks", extra=(), **task) -> bytes:
    """A task folder at 48 kHz as a .tar.gz in the Zenodo archives' layout (PREFIX/<folder>/...)."""
    source = make_task(tmp_path / f"source-{folder}", folder, sample_rate=48000, **task)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(source, arcname=f"{prefix}/{folder}")
        for name, content in extra:
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def fetch(server: FileServer, names, to: Path, *flags):
    data.main(["fetch", *names, "--to", str(to), "--zenodo", server.url, *flags])


@pytest.fixture(scope="module")
def archives(tmp_path_factory):
    root = tmp_path_factory.mktemp("archives")
    return {data.archive_name(CREMA): task_archive(root, CREMA, split_mode="new_split_kfold", files_per_split=2),
            data.archive_name(LIBRICOUNT): task_archive(root, LIBRICOUNT, prefix="hear-2021.0.6/tasks",
                                                        files_per_split=2, seed=1)}


def test_dry_run_lists_what_would_be_fetched_and_fetches_nothing(tmp_path, archives, capsys):
    with FileServer(archives) as server:
        fetch(server, [CREMA, LIBRICOUNT], tmp_path / "tasks", "--dry-run")
        assert server.requests == [(LISTING, None)]
    listed = capsys.readouterr().err
    for name, content in archives.items():
        assert f"{name}  {data.human(len(content))}  md5:{hashlib.md5(content).hexdigest()}" in listed
    assert "2 task archive(s)" in listed and not (tmp_path / "tasks").exists()


def test_fetch_resumes_verifies_unpacks_and_a_second_run_fetches_nothing(tmp_path, archives, capsys):
    tasks = tmp_path / "tasks"
    with FileServer(archives) as server:
        server.cut[data.archive_name(CREMA)] = [len(archives[data.archive_name(CREMA)]) // 2]
        fetch(server, [CREMA, LIBRICOUNT], tasks)
        ranges = [r for p, r in server.requests if p.endswith(data.archive_name(CREMA))]
        assert ranges == [None, f"bytes={len(archives[data.archive_name(CREMA)]) // 2}-"]  # resumed
        for folder in (CREMA, LIBRICOUNT):  # both layouts: tasks/<folder> and hear-2021.0.6/tasks/<folder>
            task = read_task(tasks / folder, 16000)
            assert task.audio_rate == 48000 and task.files("test" if folder == LIBRICOUNT else "fold00")
        assert sorted(p.name for p in tasks.iterdir()) == [".archives", LIBRICOUNT, CREMA]
        assert list((tasks / ".archives").iterdir()) == []  # archives deleted once unpacked
        before = len(server.requests)
        fetch(server, [CREMA, LIBRICOUNT], tasks)
        assert len(server.requests) == before  # not even the listing
    assert "nothing to fetch" in capsys.readouterr().out


def test_a_corrupted_archive_is_refused_and_nothing_is_unpacked(tmp_path, archives):
    name = data.archive_name(CREMA)
    with FileServer(archives) as server:
        server.corrupt[name] = 1000
        with pytest.raises(SystemExit, match=f"{name}: checksum: expected md5:{hashlib.md5(archives[name]).hexdigest()}"
                                             ", got md5:[0-9a-f]{32}"):
            fetch(server, [CREMA], tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [".archives"] and not list((tmp_path / ".archives").iterdir())


@pytest.mark.parametrize("member", ["evil.wav", "tasks/other-task/evil.wav"])
def test_an_archive_with_members_outside_its_task_folder_is_refused(tmp_path, member):
    name = data.archive_name(CREMA)
    bomb = task_archive(tmp_path, CREMA, files_per_split=1, split_mode="new_split_kfold", extra=[(member, b"x")])
    with FileServer({name: bomb}) as server:
        with pytest.raises(SystemExit, match="members outside the task folder|expected one task folder"):
            fetch(server, [CREMA], tmp_path / "tasks")
    assert [p.name for p in (tmp_path / "tasks").iterdir()] == [".archives"] and not list(tmp_path.rglob("evil.wav"))


def test_a_listing_that_disagrees_with_a_published_checksum_is_refused(tmp_path):
    name = data.archive_name("beehive_states_fold0-v2-full")
    with FileServer({name: b"not the published archive"}) as server:
        with pytest.raises(SystemExit, match=f"{name}: the listing .* gives checksum md5:[0-9a-f]+, but its "
                                             f"published checksum is {data.PINNED_MD5[name]}"):
            fetch(server, ["beehive_states_fold0-v2-full"], tmp_path)
        assert server.requests == [(LISTING, None)]


def test_the_disk_the_tasks_need_is_checked_before_anything_is_fetched(tmp_path, archives):
    name = data.archive_name(CREMA)
    with FileServer(archives, listed_sizes={name: 10 ** 15}) as server:  # the listing says 1 PB
        with pytest.raises(SystemExit, match="fetching the tasks needs .* but only .* are free there"):
            fetch(server, [CREMA], tmp_path)
        assert server.requests == [(LISTING, None)]


def test_unknown_names_are_refused_with_the_known_ones():
    with pytest.raises(SystemExit, match="unknown names \\['crema'\\]: give task folders \\(.*tfds_crema_d-1.0.0-full"):
        data.main(["fetch", "crema", "--to", "nowhere"])


def test_resample_writes_the_missing_rate_folders_once_and_resumes(tmp_path):
    path = make_task(tmp_path, LIBRICOUNT, sample_rate=48000, files_per_split=2)
    kept = path / ".16000.partial" / "train" / "train_0.wav"  # what a killed run finished
    kept.parent.mkdir(parents=True)
    soundfile.write(str(kept), np.zeros(16000, np.int16), 16000, subtype="PCM_16")
    data.main(["resample", str(tmp_path), "--rate", "16000", "--jobs", "2"])
    assert not (path / ".16000.partial").exists()
    for wav in (path / "48000").rglob("*.wav"):
        ours = path / "16000" / wav.parent.name / wav.name
        if ours.name == "train_0.wav" and ours.parent.name == "train":
            assert not soundfile.read(str(ours), dtype="int16")[0].any()  # resumed: not done again
            continue
        resample_file(wav, tmp_path / "expected.wav", 16000)
        assert ours.read_bytes() == (tmp_path / "expected.wav").read_bytes()
    assert read_task(path, 16000).audio_rate == 16000
    assert data.resample_tasks(tmp_path, 16000) == []  # nothing left to do
