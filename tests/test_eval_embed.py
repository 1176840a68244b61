"""eval.embed and eval.embedded: hear-eval-kit's on-disk format written, resumed, sharded with torchrun, and read
back into the split type of the downstream models."""
from __future__ import annotations

import json
import os
import pickle
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from eval import embed
from eval.embed import embed_tasks, load_module
from eval.embedded import embedded_task_dirs, labels_at_timestamps, load_task_data, model_dir_name, read_audio_digest
from eval.tasks import task_digest
from test_eval_tasks import make_task

REPO = Path(__file__).resolve().parents[1]
OPTIONS = {"dtype": "float32"}
MODEL_DIR = "hear_msm_mae-dtype=float32"
RUNNER_ONLY = {"profile.embeddings.json", "embedding-run.json", "audio-digest.json"}  # not part of the
#                                                                 task_embeddings format, nor *.audio-digest


@pytest.fixture(scope="module")
def tasks_dir(tmp_path_factory) -> Path:
    """A 3-fold multiclass scene task (1 s files) and a trainvaltest event task (2 s files)."""
    root = tmp_path_factory.mktemp("tasks")
    make_task(root, "scene_demo-v0-full", split_mode="new_split_kfold", files_per_split=5)
    make_task(root, "event_demo-v0-full", "event", "multilabel", files_per_split=3, seconds=2.0, seed=1)
    return root


def run(tasks_dir, out, checkpoint, batch_size=2, options=OPTIONS) -> Path:
    loaded = load_module("hear_msm_mae", checkpoint, options, torch.device("cpu"))
    return embed_tasks(loaded, tasks_dir, out, batch_size=batch_size)


def tree(root: Path, exclude=RUNNER_ONLY) -> dict:
    """relative path -> bytes of every file under root, with root's own path made relative."""
    files = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.name not in exclude and not path.name.endswith(".audio-digest"):
            files[str(path.relative_to(root))] = path.read_bytes().replace(str(root).encode(), b"<ROOT>")
    return files


@pytest.fixture(scope="module")
def embedded(tasks_dir, tmp_path_factory) -> Path:
    from conftest import golden_checkpoint
    out = tmp_path_factory.mktemp("embeddings")
    run(tasks_dir, out, golden_checkpoint())
    return out


def test_layout_and_read_like_task_predictions(tasks_dir, embedded):
    """Every file hear-eval-kit writes, read the way heareval.predictions.task_predictions reads them."""
    root = embedded / MODEL_DIR
    assert sorted(p.name for p in root.iterdir()) == ["embedding-run.json", "event_demo-v0-full",
                                                     "scene_demo-v0-full"]
    for task_name, splits, scene in (("scene_demo-v0-full", ["fold00", "fold01", "fold02"], True),
                                     ("event_demo-v0-full", ["train", "valid", "test"], False)):
        task_dir = root / task_name
        assert (task_dir / ".done.embeddings").is_file()
        profile = json.loads((task_dir / "profile.embeddings.json").read_text())
        assert profile["time_elapsed"] > 0 and profile["peak_rss_mb"] > 0 and "gpu_max_mem" in profile
        for name in ["task_metadata.json", "labelvocabulary.csv"] + [f"{s}.json" for s in splits]:
            assert (task_dir / name).read_bytes() == (tasks_dir / task_name / name).read_bytes()
        prng = random.Random()
        prng.seed(0)
        for split in splits:
            # SplitMemmapDataset: dims json -> raw float32 memmap; pickled labels; filename-timestamps
            dims = tuple(json.load(open(task_dir / f"{split}.embedding-dimensions.json")))
            memmap = np.memmap(task_dir / f"{split}.embeddings.npy", dtype=np.float32, mode="r", shape=dims)
            assert (task_dir / f"{split}.embeddings.npy").stat().st_size == dims[0] * dims[1] * 4
            labels = pickle.load(open(task_dir / f"{split}.target-labels.pkl", "rb"))
            assert len(labels) == dims[0] and dims[1] == 192 * 5
            # rows: the split's files in random.Random(0)'s shuffle, one shuffle per split in order
            names = list(json.loads((task_dir / f"{split}.json").read_text()))
            files = [task_dir / split / f"{n}.embedding.npy" for n in names]
            prng.shuffle(files)
            per_file = [np.load(f) for f in files]
            assert all(a.dtype == np.float32 for a in per_file)
            np.testing.assert_array_equal(np.asarray(memmap), np.stack(per_file) if scene else np.concatenate(per_file))
            if scene:
                assert labels == [json.loads(Path(str(f).replace("embedding.npy", "target-labels.json")).read_text())
                                  for f in files]
            else:
                stamps = json.loads((task_dir / f"{split}.filename-timestamps.json").read_text())
                expected = [[str(f).replace(".embedding.npy", ""), t] for f in files for t in
                            json.loads(Path(str(f).replace("embedding.npy", "timestamps.json")).read_text())]
                assert stamps == expected and len(stamps) == dims[0]


def test_bytes_equal_heareval_task_embeddings(tasks_dir, embedded, tmp_path, tiny_checkpoint):
    """heareval's own task_embeddings code path (imports tensorflow) writes the very same bytes."""
    pytest.importorskip("intervaltree")
    pytest.importorskip("tensorflow")
    task_embeddings = pytest.importorskip("heareval.embeddings.task_embeddings")
    embedding = task_embeddings.Embedding("hear_msm_mae", str(tiny_checkpoint), dict(OPTIONS))
    theirs_root = tmp_path / MODEL_DIR
    for task in sorted(tasks_dir.iterdir()):
        task_embeddings.task_embeddings(embedding, task, theirs_root / task.name)
    ours = tree(embedded / MODEL_DIR, RUNNER_ONLY | {".done.embeddings"})
    theirs = tree(theirs_root)
    assert sorted(ours) == sorted(theirs)
    for name in ours:
        assert ours[name] == theirs[name], name
    # and load_task_data reads heareval's output (its runner writes .done.embeddings after task_embeddings)
    (theirs_root / "event_demo-v0-full" / ".done.embeddings").touch()
    theirs_split = load_task_data(theirs_root / "event_demo-v0-full").splits["test"]
    ours_split = load_task_data(embedded / MODEL_DIR / "event_demo-v0-full").splits["test"]
    for field in ("embeddings", "targets", "timestamps", "memmap_rows"):
        np.testing.assert_array_equal(getattr(theirs_split, field), getattr(ours_split, field))
    assert (theirs_split.filenames, theirs_split.events) == (ours_split.filenames, ours_split.events)
    # heareval's default batch size (84 for 1 s files) differs from ours (2): same numbers regardless
    assert json.loads((embedded / MODEL_DIR / "scene_demo-v0-full" / "profile.embeddings.json").read_text())[
        "batch_size"] == 2


def test_resume_after_interruption(tasks_dir, embedded, tmp_path, tiny_checkpoint, monkeypatch):
    computed = []  # embedding files written, batch by batch
    original = embed.write_batch

    def counting_write_batch(loaded, task, split, names, outdir, fail_after=None):
        if fail_after is not None and len(computed) == fail_after:
            raise KeyboardInterrupt("simulated kill")
        computed.append([outdir / f"{n}.embedding.npy" for n in names])
        original(loaded, task, split, names, outdir)

    monkeypatch.setattr(embed, "write_batch", lambda *a: counting_write_batch(*a, fail_after=4))
    with pytest.raises(KeyboardInterrupt):
        run(tasks_dir, tmp_path, tiny_checkpoint)
    root = tmp_path / MODEL_DIR
    assert not list(root.rglob(".done.embeddings")) and not list(root.rglob("*.tmp"))
    assert embedded_task_dirs(root) == []
    finished = {f for batch in computed for f in batch}
    assert len(computed) == 4 and set(root.rglob("*.embedding.npy")) == finished

    computed.clear()
    monkeypatch.setattr(embed, "write_batch", counting_write_batch)
    run(tasks_dir, tmp_path, tiny_checkpoint)
    recomputed = {f for batch in computed for f in batch}
    assert not finished & recomputed  # nothing finished was computed again
    assert len(finished) + len(recomputed) == 15 + 9  # every file exactly once
    assert tree(root) == tree(embedded / MODEL_DIR)  # the same bytes as an uninterrupted run

    computed.clear()
    run(tasks_dir, tmp_path, tiny_checkpoint)  # everything done: nothing computed
    assert computed == []


def test_refuses_to_mix_runs(tasks_dir, embedded):
    from conftest import golden_checkpoint
    other = golden_checkpoint("80x512p16x16_tinycls")
    with pytest.raises(SystemExit, match="was made with"):
        run(tasks_dir, embedded, other)


def test_two_process_torchrun_equals_one_process(tasks_dir, embedded, tmp_path, tiny_checkpoint):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "eval.embed", "hear_msm_mae", "--tasks-dir", str(tasks_dir), "--embeddings-dir", str(tmp_path),
         "--model", str(tiny_checkpoint), "--model-options", json.dumps(OPTIONS), "--batch-size", "2"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    sharded = tmp_path / MODEL_DIR
    assert json.loads((sharded / "event_demo-v0-full" / "profile.embeddings.json").read_text())["world_size"] == 2
    assert tree(sharded) == tree(embedded / MODEL_DIR)


def test_load_task_data(embedded):
    """Every split of both tasks in the one split type: rows, targets, file of each row, timestamps, events,
    and the memmap's row order."""
    assert [p.name for p in embedded_task_dirs(embedded / MODEL_DIR)] == ["event_demo-v0-full", "scene_demo-v0-full"]
    scene_dir = embedded / MODEL_DIR / "scene_demo-v0-full"
    scene = load_task_data(scene_dir).splits["fold01"]
    assert scene.filenames == [f"fold01_{i}.wav" for i in range(5)]
    assert scene.embeddings.shape == (5, 960) and scene.embeddings.dtype == np.float32
    np.testing.assert_array_equal(scene.embeddings[3], np.load(scene_dir / "fold01/fold01_3.wav.embedding.npy"))
    np.testing.assert_array_equal(scene.targets[:3], np.eye(3, dtype=np.float32))  # labels a, b, c, a, b
    assert scene.timestamps is None and scene.events is None
    memmap = np.fromfile(scene_dir / "fold01.embeddings.npy", np.float32).reshape(5, 960)
    np.testing.assert_array_equal(scene.in_memmap_order().embeddings, memmap)

    event_dir = embedded / MODEL_DIR / "event_demo-v0-full"
    event = load_task_data(event_dir).splits["valid"]
    stamps = np.asarray(json.loads((event_dir / "valid/valid_0.wav.timestamps.json").read_text()))
    n = len(stamps)
    assert event.embeddings.shape == (3 * n, 960) and event.targets.shape == (3 * n, 3)
    assert np.all(np.diff(stamps) == 40)
    assert event.filenames == [f"valid_{i}.wav" for i in range(3) for _ in range(n)]
    np.testing.assert_array_equal(event.timestamps, np.tile(stamps, 3))
    # events of valid_0: a 100-300 ms, b 250-600 ms
    expected = np.stack([[100 <= t < 300.0001, 250 <= t < 600.0001, False] for t in stamps]).astype(np.float32)
    np.testing.assert_array_equal(event.targets[:n], expected)
    assert event.events["valid_0.wav"][1] == {"label": "b", "start": 250.0, "end": 600.0}
    memmap = np.fromfile(event_dir / "valid.embeddings.npy", np.float32).reshape(-1, 960)
    np.testing.assert_array_equal(event.in_memmap_order().embeddings, memmap)


def test_load_task_data_needs_complete_embeddings(tmp_path):
    with pytest.raises(FileNotFoundError, match="embeddings incomplete"):
        load_task_data(tmp_path)


def test_labels_at_timestamps_hand_computed():
    events = [{"label": "kick", "start": 100.0, "end": 200.0}, {"label": "hat", "start": 150.0, "end": 400.0},
              {"label": "kick", "start": 100.0, "end": 200.0}]  # a duplicate counts once
    stamps = np.array([0.0, 100.0, 150.0, 200.0, 200.00009, 200.0001, 399.0, 400.0], np.float32)
    assert labels_at_timestamps(events, stamps) == [[], ["kick"], ["kick", "hat"], ["kick", "hat"], ["kick", "hat"],
                                                    ["hat"], ["hat"], ["hat"]]


def test_model_dir_name_like_heareval_runner():
    assert model_dir_name("hear_msm_mae", {}) == "hear_msm_mae"
    name = model_dir_name("hear_msm_mae", {"mode": "reference", "timestamp_hop_ms": 160, "norm_std": 4.2})
    assert name == "hear_msm_mae-mode=reference-timestamp-hop-ms=160-norm-std=4-2"
    slugify = pytest.importorskip("slugify").slugify
    options = {"Mode": "Reference X", "hop_ms": 40.0, "flag": True}
    assert model_dir_name("m", options) == "m-" + "-".join(f"{slugify(k)}={slugify(str(v))}" for k, v in options.items())


def test_cli_errors_name_the_problem(tmp_path, tiny_checkpoint):
    common = ["--embeddings-dir", str(tmp_path / "out"), "--model", str(tiny_checkpoint)]
    with pytest.raises(SystemExit, match="tasks folder not found: .*nowhere"):
        embed.main(["hear_msm_mae", "--tasks-dir", str(tmp_path / "nowhere")] + common)
    with pytest.raises(SystemExit, match="cannot import the HEAR module 'no_such_module'"):
        embed.main(["no_such_module", "--tasks-dir", str(tmp_path)] + common)
    assert not (tmp_path / "out").exists()
    with pytest.raises(SystemExit, match="--model-options must be a JSON dict"):
        embed.main(["hear_msm_mae", "--tasks-dir", str(tmp_path), "--model-options", "[1]"] + common)
    with pytest.raises(SystemExit, match="model file not found"):
        embed.main(["hear_msm_mae", "--tasks-dir", str(tmp_path), "--embeddings-dir", str(tmp_path),
                    "--model", str(tmp_path / "missing.pth")])


def test_refuses_embeddings_of_another_version_of_a_task(tmp_path, tiny_checkpoint):
    """A task rebuilt with other audio (eval.synthetic records its digest) is not scored on its old embeddings;
    the digest beside the embeddings is that of the audio read."""
    path = make_task(tmp_path / "tasks", "scene-v0-full", files_per_split=2, record_digest=True)
    recorded = json.loads((path / "task_metadata.json").read_text())["digest"]
    out = run(tmp_path / "tasks", tmp_path / "emb", tiny_checkpoint)
    assert read_audio_digest(out / "scene-v0-full") == recorded == task_digest(path, ["train", "valid", "test"])
    run(tmp_path / "tasks", tmp_path / "emb", tiny_checkpoint)  # the same task: reused
    rebuilt = make_task(tmp_path / "tasks", "scene-v0-full", files_per_split=2, seed=1, record_digest=True)
    new = json.loads((rebuilt / "task_metadata.json").read_text())["digest"]
    with pytest.raises(ValueError, match=f"digest {recorded}, but .* now has digest {new}"):
        run(tmp_path / "tasks", tmp_path / "emb", tiny_checkpoint)


def test_a_task_changed_after_it_was_built_does_not_carry_its_old_digest(tmp_path, tiny_checkpoint):
    path = make_task(tmp_path / "tasks", "scene-v0-full", files_per_split=2, record_digest=True)
    recorded = json.loads((path / "task_metadata.json").read_text())["digest"]
    wav = path / "16000" / "valid" / "valid_1.wav"
    samples, rate = soundfile.read(str(wav), dtype="int16")
    samples[100] += 1  # one sample, one LSB
    soundfile.write(str(wav), samples, rate, subtype="PCM_16")
    with pytest.raises(ValueError, match=f"records digest {recorded}, but the audio and labels read .* have digest "
                                         "sha256:[0-9a-f]{64}: its files changed after it was built"):
        run(tmp_path / "tasks", tmp_path / "emb", tiny_checkpoint)
    assert not list((tmp_path / "emb").rglob(".done.embeddings"))
