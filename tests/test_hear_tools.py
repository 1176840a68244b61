"""End to end with the official HEAR 2021 tools, run as a user would from another directory."""
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import golden_checkpoint

BIN = Path(sys.executable).parent


@pytest.mark.parametrize("name", ["80x208p16x16_tiny", "80x512p16x16_tinycls", None])
def test_hear_validator_looks_good(name, tmp_path):
    """On both golden checkpoints, and with no --model: the bundled default."""
    validator = BIN / "hear-validator"
    if not validator.exists():
        pytest.skip("hear-validator is not installed (pip install --no-deps -r requirements/hear-tools.txt)")
    model = ["--model", str(golden_checkpoint(name))] if name else []
    result = subprocess.run([str(validator), "hear_msm_mae", *model, "--device", "cpu"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "Looks good!" in output
    warnings = [line for line in output.splitlines() if "UserWarning" in line]
    # The validator always prints one reminder about rounding drift; nothing else may warn.
    assert all("IMPORTANT: A common bug" in line for line in warnings), warnings
    assert "Min timestamp 35.0ms" in output and "Max interval between timestamps is 40.0ms" in output


def write_tiny_scene_task(root: Path) -> Path:
    """A two-class scene task in hear-preprocess's layout: tones vs noise, 1.5 s each."""
    import json

    import numpy as np
    import soundfile

    task = root / "tones_or_noise-v1-full"
    rng = np.random.default_rng(0)
    t = np.arange(24000) / 16000
    splits = {}
    for split, count in (("train", 4), ("valid", 2), ("test", 2)):
        (task / "16000" / split).mkdir(parents=True)
        labels = {}
        for i in range(count):
            name, label = f"{split}_{i}.wav", ["tone", "noise"][i % 2]
            audio = 0.3 * np.sin(2 * np.pi * 440 * (i + 1) * t) if label == "tone" else 0.1 * rng.standard_normal(len(t))
            soundfile.write(task / "16000" / split / name, audio.astype(np.float32), 16000, subtype="PCM_16")
            labels[name] = [label]
        (task / f"{split}.json").write_text(json.dumps(labels))
        splits[split] = labels
    (task / "labelvocabulary.csv").write_text("idx,label\n0,noise\n1,tone\n")
    (task / "task_metadata.json").write_text(json.dumps({
        "task_name": "tones_or_noise", "version": "v1", "embedding_type": "scene", "prediction_type": "multiclass",
        "split_mode": "trainvaltest", "sample_duration": 1.5, "evaluation": ["top1_acc"], "mode": "full",
        "splits": ["train", "valid", "test"]}))
    return task


def test_heareval_embeddings_runner(tmp_path):
    import json

    import numpy as np

    pytest.importorskip("heareval")
    task = write_tiny_scene_task(tmp_path / "tasks")
    result = subprocess.run(
        [sys.executable, "-m", "heareval.embeddings.runner", "hear_msm_mae", "--model", str(golden_checkpoint()),
         "--tasks-dir", str(task.parent), "--embeddings-dir", str(tmp_path / "embeddings"),
         "--model-options", json.dumps({"dtype": "float32", "mode": "reference"})],
        cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    out = tmp_path / "embeddings" / "hear_msm_mae-dtype=float32-mode=reference" / task.name
    for split, count in (("train", 4), ("valid", 2), ("test", 2)):
        shape = tuple(json.loads((out / f"{split}.embedding-dimensions.json").read_text()))
        assert shape == (count, 960)
        embeddings = np.memmap(out / f"{split}.embeddings.npy", dtype=np.float32, mode="r", shape=shape)
        assert np.isfinite(embeddings).all() and np.abs(embeddings).sum(axis=1).min() > 0
