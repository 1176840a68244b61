"""eval.tasks: writing and reading hear-preprocess task folders, digests, fold rotation, the HEAR 2021 task specs."""
from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile

from eval.tasks import (HEAR2021_TASKS, DataSplit, TaskError, fold_rotation, list_tasks, read_task, task_digest,
                        write_task)

LEADERBOARD = Path(__file__).resolve().parents[2] / "shared" / "hear2021_leaderboard.csv"


def make_task(root: Path, name: str, embedding_type: str = "scene", prediction_type: str = "multiclass",
              split_mode: str = "trainvaltest", files_per_split: int = 4, seconds: float = 1.0,
              seed: int = 0, record_digest: bool = False, sample_rate: int = 16000, **metadata) -> Path:
    """A small task folder in hear-preprocess's layout, noise bursts as audio. Scene labels cycle
    through a, b, c; event files get two events each. `metadata`: more task_metadata.json fields;
    record_digest: its digest recorded in the metadata, as eval.synthetic does."""
    rng = np.random.default_rng(seed)
    splits = ["train", "valid", "test"] if split_mode == "trainvaltest" else ["fold00", "fold01", "fold02"]
    vocabulary = ["a", "b", "c"]
    files = {}
    for split in splits:
        files[split] = {}
        for i in range(files_per_split):
            audio = (0.1 * rng.standard_normal(round(seconds * sample_rate))).astype(np.float32)
            if embedding_type == "scene":
                labels = [vocabulary[i % 3]] if prediction_type == "multiclass" else vocabulary[:i % 3]
            else:
                labels = [{"label": vocabulary[i % 3], "start": 100.0, "end": 300.0},
                          {"label": vocabulary[(i + 1) % 3], "start": 250.0, "end": 600.0}]
            files[split][f"{split}_{i}.wav"] = (audio, labels)
    task_metadata = {"task_name": name.split("-")[0], "version": "v0", "embedding_type": embedding_type,
                     "prediction_type": prediction_type, "split_mode": split_mode, "sample_duration": seconds,
                     "evaluation": ["top1_acc"] if embedding_type == "scene" else ["event_onset_200ms_fms"],
                     "mode": "full", **({} if split_mode == "trainvaltest" else {"nfolds": len(splits)}), **metadata}
    return write_task(root / name, task_metadata, files, vocabulary, digest=record_digest, sample_rate=sample_rate)


@pytest.mark.parametrize("embedding_type,prediction_type,split_mode", [
    ("scene", "multiclass", "trainvaltest"), ("scene", "multilabel", "new_split_kfold"),
    ("event", "multilabel", "trainvaltest"), ("event", "multilabel", "presplit_kfold")])
def test_read_task_every_split_mode_and_embedding_type(tmp_path, embedding_type, prediction_type, split_mode):
    path = make_task(tmp_path, "demo-v0-full", embedding_type, prediction_type, split_mode)
    task = read_task(path)
    assert (task.name, task.task_name, task.embedding_type, task.split_mode) == \
        ("demo-v0-full", "demo", embedding_type, split_mode)
    assert task.labels == ["a", "b", "c"] and task.label_to_idx == {"a": 0, "b": 1, "c": 2}
    assert task.spec is None and task.primary_metric == task.evaluation[0]
    for split in task.splits:
        assert task.files(split) == [f"{split}_{i}.wav" for i in range(4)]
        assert all(p.is_file() and p.parent == path / "16000" / split for p in task.audio_paths(split))
    first = task.splits[0]
    if embedding_type == "scene":
        assert task.scene_labels(first)[f"{first}_1.wav"] == (["b"] if prediction_type == "multiclass" else ["a"])
        with pytest.raises(ValueError, match="not an event task"):
            task.events(first)
    else:
        assert task.events(first)[f"{first}_0.wav"] == [{"label": "a", "start": 100.0, "end": 300.0},
                                                        {"label": "b", "start": 250.0, "end": 600.0}]
        with pytest.raises(ValueError, match="not a scene task"):
            task.scene_labels(first)
    if split_mode == "trainvaltest":
        assert task.data_splits() == [DataSplit(("train",), ("valid",), ("test",))]
    else:
        assert task.data_splits() == [DataSplit(("fold02",), ("fold01",), ("fold00",)),
                                      DataSplit(("fold00",), ("fold02",), ("fold01",)),
                                      DataSplit(("fold01",), ("fold00",), ("fold02",))]


def test_fold_rotation_five_folds():
    """hear-eval-kit: test = fold i, valid = fold i+1 (mod k), train = the rest in fold order."""
    folds = [f"fold{i:02d}" for i in range(5)]
    rotation = fold_rotation(list(reversed(folds)))  # the order given does not matter
    assert [(r.test, r.valid) for r in rotation] == [((folds[i],), (folds[(i + 1) % 5],)) for i in range(5)]
    assert rotation[4].train == ("fold01", "fold02", "fold03")
    assert rotation[1].train == ("fold00", "fold03", "fold04")
    for r in rotation:
        assert sorted(r.train + r.valid + r.test) == folds
    with pytest.raises(ValueError, match="at least 3"):
        fold_rotation(["fold00", "fold01"])


def test_problems_are_all_named(tmp_path):
    path = make_task(tmp_path, "broken-v0-full", split_mode="new_split_kfold")
    (path / "16000" / "fold01" / "fold01_2.wav").unlink()
    (path / "16000" / "fold02" / "fold02_0.wav").write_bytes(b"not a wav file")
    (path / "fold00.json").write_text(json.dumps({"fold00_0.wav": ["zebra"], "fold00_1.wav": ["a"],
                                                  "fold00_2.wav": ["a"], "fold00_3.wav": ["a"]}))
    with pytest.raises(TaskError) as error:
        read_task(path)
    message = str(error.value)
    assert "3 problem(s)" in message
    assert f"missing file {path / '16000' / 'fold01' / 'fold01_2.wav'}" in message
    assert f"unreadable file {path / '16000' / 'fold02' / 'fold02_0.wav'}" in message
    assert "fold00_0.wav has labels ['zebra'] not in labelvocabulary.csv" in message
    # nothing was changed or removed by reading
    assert (path / "16000" / "fold02" / "fold02_0.wav").read_bytes() == b"not a wav file"


@pytest.mark.parametrize("damage,expected", [
    (lambda p: (p / "task_metadata.json").unlink(), "missing file .*task_metadata.json"),
    (lambda p: (p / "task_metadata.json").write_text("{not json"), "unreadable file .*task_metadata.json"),
    (lambda p: (p / "labelvocabulary.csv").write_text("idx,label\n0,a\n2,b\n"), "idx must run 0..n-1"),
    (lambda p: (p / "labelvocabulary.csv").unlink(), "missing file .*labelvocabulary.csv"),
    (lambda p: (p / "valid.json").unlink(), "missing file .*valid.json"),
    (lambda p: shutil.rmtree(p / "16000" / "test"), "missing folder .*16000/test"),
    (lambda p: (p / "task_metadata.json").write_text(json.dumps({"task_name": "x"})), "missing fields"),
])
def test_each_kind_of_damage_is_reported(tmp_path, damage, expected):
    path = make_task(tmp_path, "demo-v0-full")
    damage(path)
    with pytest.raises(TaskError, match=expected):
        read_task(path)


def test_bad_metadata_values_and_multiclass_label_count(tmp_path):
    path = make_task(tmp_path, "demo-v0-full")
    metadata = json.loads((path / "task_metadata.json").read_text())
    (path / "task_metadata.json").write_text(json.dumps({**metadata, "split_mode": "random"}))
    with pytest.raises(TaskError, match="split_mode 'random' is not one of"):
        read_task(path)
    (path / "task_metadata.json").write_text(json.dumps(metadata))
    labels = json.loads((path / "train.json").read_text())
    labels["train_0.wav"] = ["a", "b"]
    (path / "train.json").write_text(json.dumps(labels))
    with pytest.raises(TaskError, match="train_0.wav has 2 labels in a multiclass task"):
        read_task(path)


def test_wrong_sample_rate_is_reported(tmp_path):
    path = make_task(tmp_path, "demo-v0-full")
    soundfile.write(str(path / "16000" / "train" / "train_1.wav"), np.zeros(8000, np.float32), 8000)
    with pytest.raises(TaskError, match="train_1.wav: 8000 frames at 8000 Hz, expected audio at 16000 Hz"):
        read_task(path)


def test_list_tasks(tmp_path):
    with pytest.raises(TaskError, match="tasks folder not found"):
        list_tasks(tmp_path / "nowhere")
    with pytest.raises(TaskError, match="no task folders"):
        list_tasks(tmp_path)
    make_task(tmp_path, "b_task-v0-full", "event", "multilabel")
    make_task(tmp_path, "a_task-v0-full")
    shutil.copytree(tmp_path / "a_task-v0-full", tmp_path / ".a_task-v0-full.tmp")  # unfinished write: ignored
    (tmp_path / "notes").mkdir()
    assert [t.name for t in list_tasks(tmp_path)] == ["a_task-v0-full", "b_task-v0-full"]


def test_hear2021_tasks_match_the_leaderboard():
    specs = list(HEAR2021_TASKS.values())
    assert len(specs) == 19
    if LEADERBOARD.is_file():
        with open(LEADERBOARD, newline="") as f:
            columns = next(csv.reader(f))[3:]
        assert sorted(s.title for s in specs) == sorted(columns)
    by_title = {s.title: s for s in specs}
    assert by_title["CREMA-D"].primary_metric == "top1_acc" and by_title["CREMA-D"].nfolds == 5
    assert by_title["Libricount"].split_mode == "new_split_kfold"
    assert by_title["DCASE 2016"].primary_metric == "event_onset_200ms_fms"
    assert by_title["DCASE 2016"].embedding_type == "event"
    assert by_title["Maestro 5h"].primary_metric == "event_onset_50ms_fms"
    assert by_title["FSD50K"].primary_metric == "mAP" and by_title["FSD50K"].prediction_type == "multilabel"
    assert by_title["Vocal Imitation"].primary_metric == "mAP"
    assert by_title["Beehive"].primary_metric == "aucroc"
    assert by_title["NSynth Pitch 5h"].primary_metric == "pitch_acc"
    for spec in specs:
        assert (spec.nfolds is None) == (spec.split_mode == "trainvaltest")


def test_hear2021_spec_found_by_folder_or_by_task_name_and_mode(tmp_path):
    path = make_task(tmp_path, "tfds_crema_d-1.0.0-full", split_mode="new_split_kfold")
    assert read_task(path).spec.title == "CREMA-D"
    renamed = tmp_path / "crema"
    path.rename(renamed)
    assert read_task(renamed).spec.title == "CREMA-D"  # task_name "tfds_crema_d" is unambiguous
    nsynth = make_task(tmp_path, "nsynth_pitch-v2.2.3-5h")
    metadata = json.loads((nsynth / "task_metadata.json").read_text())
    (nsynth / "task_metadata.json").write_text(json.dumps({**metadata, "mode": "5h"}))
    moved = tmp_path / "my_nsynth"
    nsynth.rename(moved)
    task = read_task(moved)
    assert task.spec.title == "NSynth Pitch 5h" and task.primary_metric == "pitch_acc"


def test_write_task_refuses_bad_input_and_leaves_nothing_behind(tmp_path):
    audio = np.zeros(1600, np.float32)
    scene = {"task_name": "t", "embedding_type": "scene", "prediction_type": "multiclass",
             "split_mode": "trainvaltest", "evaluation": ["top1_acc"]}
    splits = {s: {f"{s}.wav": (audio, ["a"])} for s in ("train", "valid", "test")}
    with pytest.raises(ValueError, match="every split needs files; empty: \\['valid'\\]"):
        write_task(tmp_path / "t", scene, {**splits, "valid": {}})
    with pytest.raises(ValueError, match="needs an embedding_type"):
        write_task(tmp_path / "t", {**scene, "embedding_type": "frames"}, splits)
    with pytest.raises(TaskError, match="test.wav has labels \\['a'\\] not in labelvocabulary.csv"):
        write_task(tmp_path / "t", scene, splits, labels=["b"])
    assert list(tmp_path.iterdir()) == []  # neither the task nor its temporary folder
    path = write_task(tmp_path / "t", scene, splits, digest=True)
    task = read_task(path)
    assert task.labels == ["a"] and task.metadata["splits"] == ["train", "valid", "test"]
    assert list(task.metadata)[-1] == "digest" and task.metadata["digest"] == task_digest(path, task.splits)
    write_task(tmp_path / "t", scene, {**splits, "test": {"other.wav": (audio, ["a"])}})  # replaces the folder
    assert read_task(path).files("test") == ["other.wav"] and not (path / "16000" / "test" / "test.wav").exists()


def test_digest_is_of_the_samples_and_labels(tmp_path):
    path = make_task(tmp_path, "demo-v0-full")
    metadata = json.loads((path / "task_metadata.json").read_text())
    recorded = task_digest(path, metadata["splits"])
    wav = path / "16000" / "test" / "test_0.wav"
    samples, rate = soundfile.read(str(wav), dtype="int16")
    soundfile.write(str(wav), samples, rate, format="WAVEX", subtype="PCM_16")  # another header, same samples
    assert task_digest(path, metadata["splits"]) == recorded
    samples[800] += 1
    soundfile.write(str(wav), samples, rate, subtype="PCM_16")
    assert task_digest(path, metadata["splits"]) != recorded
    samples[800] -= 1
    soundfile.write(str(wav), samples, rate, subtype="PCM_16")
    assert task_digest(path, metadata["splits"]) == recorded
    labels = json.loads((path / "test.json").read_text())
    (path / "test.json").write_text(json.dumps({**labels, "test_0.wav": ["b"]}))
    assert task_digest(path, metadata["splits"]) != recorded


@pytest.mark.parametrize("entry,why", [
    ("../../../../outside/evil.wav", "holds a path separator"), ("/etc/evil.wav", "is an absolute path"),
    ("sub\\evil.wav", "holds a path separator"), ("..", "holds '..'"), ("evil..wav", "holds '..'"),
    ("evil\0.wav", "holds a NUL character"), ("", "is not a file name")])
def test_file_names_that_leave_their_split_folder_are_refused(tmp_path, entry, why):
    path = make_task(tmp_path, "demo-v0-full")
    labels = json.loads((path / "valid.json").read_text())
    (path / "valid.json").write_text(json.dumps({**labels, entry: ["a"]}))
    message = re.escape(f"task demo-v0-full, split valid: entry {entry!r} {why}; refused")
    for check_audio_files in (True, False):  # the task folder, and its copy beside embeddings (eval.embedded)
        with pytest.raises(TaskError, match=message):
            read_task(path, check_audio_files=check_audio_files)


def test_a_file_that_links_outside_its_split_folder_is_refused(tmp_path):
    path = make_task(tmp_path, "demo-v0-full")
    soundfile.write(str(tmp_path / "outside.wav"), np.zeros(16000, np.float32), 16000)
    (path / "16000" / "test" / "link.wav").symlink_to(tmp_path / "outside.wav")
    labels = json.loads((path / "test.json").read_text())
    (path / "test.json").write_text(json.dumps({**labels, "link.wav": ["a"]}))
    with pytest.raises(TaskError, match="task demo-v0-full, split test: entry 'link.wav' resolves to .*outside.wav, "
                                        "outside .*refused"):
        read_task(path)


def test_write_task_refuses_bad_file_names_before_writing(tmp_path):
    scene = {"task_name": "t", "embedding_type": "scene", "prediction_type": "multiclass",
             "split_mode": "trainvaltest", "evaluation": ["top1_acc"]}
    splits = {s: {f"{s}.wav": (np.zeros(1600, np.float32), ["a"])} for s in ("train", "valid", "test")}
    splits["test"]["../../evil.wav"] = (np.zeros(1600, np.float32), ["a"])
    with pytest.raises(TaskError, match="refused file names: split test: entry '../../evil.wav' holds a path sep"):
        write_task(tmp_path / "tasks" / "t", scene, splits)
    assert not (tmp_path / "tasks").exists() and not (tmp_path / "evil.wav").exists()


def test_eval_run_and_predict_refuse_an_escaping_entry_before_reading_or_writing(tmp_path, tiny_checkpoint):
    """The issue's case: a fold JSON key ../../../../outside/evil.wav; nothing is read, nothing written."""
    from eval import predict, run

    tasks = tmp_path / "a" / "b" / "tasks"
    path = make_task(tasks, "demo-v0-full", split_mode="new_split_kfold")
    soundfile.write(str(tmp_path / "outside.wav"), np.zeros(16000, np.float32), 16000)
    labels = json.loads((path / "fold01.json").read_text())
    entry = "../../../../../../outside.wav"  # from <task>/16000/fold01: tmp_path/outside.wav
    (path / "fold01.json").write_text(json.dumps({**labels, entry: ["a"]}))
    with pytest.raises(SystemExit, match=re.escape(f"split fold01: entry {entry!r} holds a path separator")):
        run.main(["--tasks-dir", str(tasks), "--model", str(tiny_checkpoint), "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists() and not list(tmp_path.rglob("*.embedding.npy"))
    (path / ".done.embeddings").touch()  # the same metadata beside embeddings, as eval.predict reads them
    with pytest.raises(SystemExit, match=re.escape(f"split fold01: entry {entry!r} holds a path separator")):
        predict.main([str(path)])
    assert not list(path.glob("*predict*")) and not (path / "hear_protocol.json").exists()


def test_audio_is_read_from_the_rate_folder_or_resampled_from_the_highest(tmp_path):
    from hear_msm_mae.audio import load_audio, resample_file

    path = make_task(tmp_path, "demo-v0-full", sample_rate=48000)
    task = read_task(path, 16000)
    assert (task.audio_rate, task.sample_rate, task.audio_dir("train")) == (48000, 16000, path / "48000" / "train")
    samples, digest = task.read_audio("train", "train_0.wav")
    assert samples.dtype == np.float32 and samples.shape == (16000,) and digest.startswith("sha256:")
    assert np.array_equal(samples, load_audio(path / "48000" / "train" / "train_0.wav", 16000).numpy())
    for wav in (path / "48000").rglob("*.wav"):  # a folder at the asked rate is read as it is
        resample_file(wav, path / "16000" / wav.parent.name / wav.name, 16000)
    assert read_task(path, 16000).audio_rate == 16000 and read_task(path, 32000).audio_rate == 48000
    assert np.array_equal(read_task(path, 16000).read_audio("train", "train_0.wav")[0], samples)
