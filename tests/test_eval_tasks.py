"""eval.tasks: reading hear-preprocess task folders, fold rotation, the HEAR 2021 task specs."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile

from eval.tasks import HEAR2021_TASKS, DataSplit, Event, TaskError, fold_rotation, list_tasks, read_task

LEADERBOARD = Path(__file__).resolve().parents[2] / "shared" / "hear2021_leaderboard.csv"


def make_task(root: Path, name: str, embedding_type: str = "scene", prediction_type: str = "multiclass",
              split_mode: str = "trainvaltest", files_per_split: int = 4, seconds: float = 1.0,
              seed: int = 0) -> Path:
    """A small task folder in hear-preprocess's layout, noise bursts as audio. Scene labels cycle
    through a, b, c; event files get two events each."""
    rng = np.random.default_rng(seed)
    splits = ["train", "valid", "test"] if split_mode == "trainvaltest" else ["fold00", "fold01", "fold02"]
    path = root / name
    vocabulary = ["a", "b", "c"]
    for split in splits:
        (path / "16000" / split).mkdir(parents=True)
        labels = {}
        for i in range(files_per_split):
            file_name = f"{split}_{i}.wav"
            audio = (0.1 * rng.standard_normal(round(seconds * 16000))).astype(np.float32)
            soundfile.write(str(path / "16000" / split / file_name), audio, 16000, subtype="PCM_16")
            if embedding_type == "scene":
                labels[file_name] = [vocabulary[i % 3]] if prediction_type == "multiclass" else vocabulary[:i % 3]
            else:
                labels[file_name] = [{"label": vocabulary[i % 3], "start": 100.0, "end": 300.0},
                                     {"label": vocabulary[(i + 1) % 3], "start": 250.0, "end": 600.0}]
        (path / f"{split}.json").write_text(json.dumps(labels, indent=True))
    (path / "labelvocabulary.csv").write_text("idx,label\n" + "".join(f"{i},{v}\n" for i, v in enumerate(vocabulary)))
    metadata = {"task_name": name.split("-")[0], "version": "v0", "embedding_type": embedding_type,
                "prediction_type": prediction_type, "split_mode": split_mode, "sample_duration": seconds,
                "evaluation": ["top1_acc"] if embedding_type == "scene" else ["event_onset_200ms_fms"],
                "mode": "full", "splits": splits}
    if split_mode != "trainvaltest":
        metadata["nfolds"] = len(splits)
    (path / "task_metadata.json").write_text(json.dumps(metadata, indent=True))
    return path


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
        assert task.events(first)[f"{first}_0.wav"] == [Event("a", 100.0, 300.0), Event("b", 250.0, 600.0)]
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
