"""`python -m eval.reproduce msm-mae-paper --fetch` end to end and offline: small tasks laid out as the HEAR 2021
tasks (48 kHz, Zenodo's archive layout) and the paper's checkpoint name, both served by a real HTTP server on
127.0.0.1 (the checkpoint: the golden tiny MSM-MAE in the release zip's layout)."""
from __future__ import annotations

import io
import json
import zipfile

import pytest

from eval import data, reproduce
from eval.papers import PAPERS
from hear_msm_mae import download, releases
from heareval_reference import FAST_GRID
from test_eval_data import CREMA, LIBRICOUNT, task_archive
from zenodo_server import FileServer

PAPER = PAPERS["msm-mae-paper"]


@pytest.fixture
def served(tmp_path, tiny_checkpoint, monkeypatch):
    """The server (two of the paper's tasks and its checkpoint), the package's cache in tmp_path."""
    fast = {"task_specific_param_grid": FAST_GRID}
    files = {data.archive_name(folder): task_archive(tmp_path, folder, split_mode="new_split_kfold", seed=seed,
                                                     files_per_split=4, evaluation_params=fast)
             for seed, folder in enumerate((CREMA, LIBRICOUNT))}
    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w") as zf:
        zf.write(tiny_checkpoint, PAPER.checkpoint)  # 80x512p16x16_paper/checkpoint-100.pth
    files["80x512p16x16_paper.zip"] = zipped.getvalue()
    monkeypatch.setenv(download.HOME_VARIABLE, str(tmp_path / "cache"))
    with FileServer(files) as server:
        monkeypatch.setenv(releases.MIRROR_VARIABLE, server.url)
        yield server


def test_the_paper_in_one_command(tmp_path, served, capsys):
    tasks, out = tmp_path / "tasks", tmp_path / "out"
    args = ["msm-mae-paper", "--tasks-dir", str(tasks), "--fetch", "--tasks", CREMA, LIBRICOUNT, "--seeds", "2",
            "--grid-points", "1", "--out", str(out), "--zenodo", served.url]
    reproduce.main(args)
    table = (out / "reproduce.md").read_text()
    assert table in capsys.readouterr().out
    record = json.loads((out / "reproduce.json").read_text())
    assert record["model_options"] == {"mode": "reference"} and record["seeds"] == [42, 43]
    assert sorted(record["missing"]) == sorted(set(PAPER.tasks) - {CREMA, LIBRICOUNT}) and len(record["missing"]) == 13
    scores = {r["task"]: r["scores"][r["primary_score"]] for r in record["results"]}
    assert set(scores) == {CREMA, LIBRICOUNT} and all(r["spread"] == "seeds" for r in record["results"])
    for title, folder, published in (("CREMA-D", CREMA, 0.734), ("Libricount", LIBRICOUNT, 0.858)):
        ours = scores[folder]
        assert len(ours["per_seed"]) == 2
        assert (f"| {title} | top1_acc | {ours['mean']:.3f} ± {ours['std']:.3f} | 2 seeds | {published:.3f} | "
                f"{ours['mean'] - published:+.3f} |") in table
    assert f"python -m eval.data fetch {' '.join(record['missing'])} --to {tasks}" in table
    # the embedded audio: the 48 kHz archives resampled as read, and its digest beside the scores
    assert all(r["task_digest"].startswith("sha256:") for r in record["results"])
    requests = len(served.requests)
    reproduce.main(args)  # resumed: nothing fetched, nothing recomputed
    assert len(served.requests) == requests
    assert json.loads((out / "reproduce.json").read_text())["results"] == record["results"]


def test_without_the_tasks_it_names_the_command_that_fetches_them(tmp_path, served):
    with pytest.raises(SystemExit, match=f"none of the 15 tasks of msm-mae-paper asked for is in {tmp_path / 'empty'}"
                                         f"; fetch them with python -m eval.data fetch {' '.join(PAPER.tasks)} --to "
                                         f"{tmp_path / 'empty'}"):
        reproduce.main(["msm-mae-paper", "--tasks-dir", str(tmp_path / "empty"), "--out", str(tmp_path / "out")])
