"""`python -m eval.run --demo` end to end on the tiny synthetic tasks with the tiny golden checkpoint, beside its
references; the report's tables."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from eval import report, run

GOLDEN = Path(__file__).resolve().parents[1] / ".." / "shared" / "golden" / "80x208p16x16_tiny" / "checkpoint-99.pth"


@pytest.mark.skipif(not GOLDEN.exists(), reason="needs ../shared/golden")
def test_demo_end_to_end(tmp_path, capsys):
    run.main(["--demo", "--tiny", "--out", str(tmp_path), "--model", str(GOLDEN)])
    results = json.loads((tmp_path / "results.json").read_text())["results"]
    assert sorted(r["task"] for r in results) == ["synth_drum_events-v1-tiny", "synth_pitch-v1-tiny",
                                                  "synth_speaker_count-v1-tiny", "synth_words-v1-tiny"]
    for r in results:
        assert r["protocol"] == "linear"
        assert 0.0 <= r["scores"][r["primary_score"]]["mean"] <= 1.0
    kfold = next(r for r in results if r["task"] == "synth_words-v1-tiny")
    assert [f["test"] for f in kfold["folds"]] == ["fold00", "fold01", "fold02"]
    table = (tmp_path / "results.md").read_text()
    header = table.splitlines()[0]
    assert header == ("| task | task digest | score | hear_msm_mae-dtype=float32@checkpoint-99 (linear) | "
                      "hear_msm_mae-dtype=float32@checkpoint-99, hop 160 ms (linear) | random weights (linear) | "
                      "log-mel statistics (linear) |")  # no reference of HEAR 2021: no empty columns
    rows = {line.split(" | ")[0][2:]: line.split(" | ")[3:] for line in table.splitlines()[2:]}
    assert all(cell != "–" for name, cells in rows.items() for cell in cells[:1] + cells[2:]), table
    embedded = sorted(p.name for p in (tmp_path / "embeddings").iterdir())
    assert embedded == ["eval.baselines-reference=log-mel", "eval.baselines-reference=random-dtype=float32",
                        "hear_msm_mae-dtype=float32", "hear_msm_mae-dtype=float32-timestamp-hop-ms=160-0"]
    with open(tmp_path / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert {row["score"] for row in rows} >= {"pitch_acc", "chroma_acc", "top1_acc", "event_onset_50ms_fms"}
    assert (tmp_path / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    hops = (tmp_path / "timestamp_resolution.md").read_text()
    assert "| 40 ms |" in hops and "| 160 ms (native) |" in hops
    digests = {task.name: json.loads((task / "task_metadata.json").read_text())["digest"]
               for task in (tmp_path / "tasks").iterdir()}
    assert {r["task"]: r["task_digest"] for r in results} == digests
    printed = capsys.readouterr()
    for task, digest in digests.items():  # beside the results: in the table eval.run prints, on each task's line
        assert f"| {task} | {report.short_digest(digest)} |" in printed.out and f"task digest {digest}" in printed.err
    # a second run reuses embeddings and results: same table
    run.main(["--demo", "--tiny", "--out", str(tmp_path), "--model", str(GOLDEN)])
    assert (tmp_path / "results.md").read_text() == table


def test_run_rejects_bad_arguments(tmp_path):
    with pytest.raises(SystemExit, match="model-options"):
        run.main(["--tasks-dir", str(tmp_path), "--out", str(tmp_path), "--model-options", "{oops"])
    with pytest.raises(SystemExit, match="tasks-dir"):
        run.main(["--tasks-dir", str(tmp_path / "missing"), "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="model file not found"):
        run.main(["--demo", "--out", str(tmp_path), "--model", str(tmp_path / "none.pth")])


def test_report_carries_the_task_digests():
    def result(task: str, digest):
        return {"task": task, "protocol": "linear", "primary_score": "top1_acc", "train_seconds": 1.0,
                "scores": {"top1_acc": {"mean": 0.5, "std": 0.1}}, "folds": [{}], "task_digest": digest}

    words, pitch = "synth_words-v1-full", "synth_pitch-v1-full"
    runs = {"a": [result(words, "sha256:" + "1" * 64), result(pitch, "sha256:" + "2" * 64)],
            "b": [result(words, "sha256:" + "3" * 64), result(pitch, "sha256:" + "2" * 64)]}
    table = {row["task"]: row["task digest"] for row in report.primary_table(runs, {})}
    assert table == {words: "111111111111 ≠ 333333333333", pitch: "222222222222"}
    assert {row["task_digest"] for row in report.result_rows(runs)} == {"sha256:" + c * 64 for c in "123"}
    no_digests = {"a": [result("ESC-50", None)]}  # e.g. the HEAR 2021 tasks: no column
    assert "task digest" not in report.primary_table(no_digests, {})[0]


def test_leaderboard_references():
    refs = report.references(report.read_leaderboard())
    assert refs["CREMA-D"].paper == pytest.approx(0.734) and refs["Libricount"].paper == pytest.approx(0.858)
    assert refs["CREMA-D"].wav2vec2 == pytest.approx(0.656224477)
    assert refs["NSynth Pitch 5h"].crepe == pytest.approx(0.870000005)
    # best of the 2021 submissions only: the 2023 entries (e.g. RedRice ced_*) are left out
    assert (refs["ESC-50"].best_2021, refs["ESC-50"].best_2021_model) == (pytest.approx(0.947499991),
                                                                          "CP-JKU PaSST base")
    assert all(not ref.best_2021_model.startswith("RedRice ced") for ref in refs.values())


def test_columns_empty_for_every_task_are_left_out():
    def result(task: str, score: str = "top1_acc"):
        return {"task": task, "protocol": "linear", "primary_score": score, "train_seconds": 1.0,
                "scores": {score: {"mean": 0.5, "std": 0.0}}, "folds": [{}]}

    refs = report.references(report.read_leaderboard())
    runs = {"a": [result("tfds_crema_d-1.0.0-full"), result("nsynth_pitch-v2.2.3-5h", "pitch_acc")]}
    hear = report.primary_table(runs, refs)
    assert list(hear[0]) == ["task", "score", "a (linear)", "wav2vec2", "CREPE", "best HEAR 2021", "MSM-MAE paper"]
    assert hear[1]["MSM-MAE paper"] == "–" and hear[0]["CREPE"] != "–"  # a column with one score stays
    synthetic = report.primary_table({"a": [result("synth_words-v1-full")], "b": [result("synth_words-v1-full")]}, refs)
    assert list(synthetic[0]) == ["task", "score", "a (linear)", "b (linear)"]
