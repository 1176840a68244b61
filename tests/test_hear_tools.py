"""End to end with the official HEAR 2021 tools, run as a user would from another directory."""
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import FAMILIES, FAMILY_CHECKPOINTS, golden_path

BIN = Path(sys.executable).parent
DEFAULT_HOPS_MS = {"ast": "50.0", "wavlm": "20.0", "hubert": "20.0", "wav2vec2": "20.0"}  # by family, where not 40 ms


@pytest.mark.parametrize("name", [None, *FAMILIES])
def test_hear_validator_looks_good(name, tmp_path):
    """Every family's HEAR module (on one official layout each: every layout's loading is tested in
    test_checkpoint.py, its outputs in test_engine.py), and hear_msm_mae with no --model (the bundled default)."""
    validator = BIN / "hear-validator"
    if not validator.exists():
        pytest.skip("hear-validator is not installed (pip install --no-deps -r requirements/hear-tools.txt)")
    if name is None:
        module, model = "hear_msm_mae", []
    else:
        family, relative = FAMILY_CHECKPOINTS[name]
        module = "hear_msm_mae" if family == "msm_mae" else f"hear_msm_mae.{family}"
        model = ["--model", str(golden_path(relative))]
    result = subprocess.run([str(validator), module, *model, "--device", "cpu"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "Looks good!" in output
    warnings = [line for line in output.splitlines() if "UserWarning" in line]
    # The validator always prints one reminder about rounding drift; nothing else may warn.
    assert all("IMPORTANT: A common bug" in line for line in warnings), warnings
    hop = DEFAULT_HOPS_MS.get(FAMILY_CHECKPOINTS.get(name, ("msm_mae",))[0], "40.0")
    assert f"Max interval between timestamps is {hop}ms" in output


def write_tiny_scene_task(root: Path) -> Path:
    """A two-class scene task in hear-preprocess's layout: tones vs noise, 1.5 s each."""
    import numpy as np

    from eval.tasks import write_task

    rng = np.random.default_rng(0)
    t = np.arange(24000) / 16000
    splits = {}
    for split, count in (("train", 4), ("valid", 2), ("test", 2)):
        splits[split] = {}
        for i in range(count):
            label = ["tone", "noise"][i % 2]
            audio = 0.3 * np.sin(2 * np.pi * 440 * (i + 1) * t) if label == "tone" else 0.1 * rng.standard_normal(len(t))
            splits[split][f"{split}_{i}.wav"] = (audio.astype(np.float32), [label])
    return write_task(root / "tones_or_noise-v1-full", {
        "task_name": "tones_or_noise", "version": "v1", "embedding_type": "scene", "prediction_type": "multiclass",
        "split_mode": "trainvaltest", "sample_duration": 1.5, "evaluation": ["top1_acc"], "mode": "full"}, splits)


@pytest.mark.parametrize("module, name, options", [
    ("hear_msm_mae", "msm_mae", {"dtype": "float32", "mode": "reference"}),
    ("hear_msm_mae.beats", "beats", {"dtype": "float32"}),
    ("hear_msm_mae.hubert", "hubert_large", {"dtype": "float32"}),  # a Hugging Face folder, normalised waveforms
])
def test_heareval_embeddings_runner(tmp_path, module, name, options):
    """hear-eval-kit's own embeddings runner with a family's HEAR module: the files hold our embeddings."""
    import json
    from importlib import import_module

    import numpy as np
    import soundfile
    import torch

    pytest.importorskip("heareval")
    checkpoint = golden_path(FAMILY_CHECKPOINTS[name][1])
    task = write_tiny_scene_task(tmp_path / "tasks")
    result = subprocess.run(
        [sys.executable, "-m", "heareval.embeddings.runner", module, "--model", str(checkpoint),
         "--tasks-dir", str(task.parent), "--embeddings-dir", str(tmp_path / "embeddings"),
         "--model-options", json.dumps(options)],
        cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    out = tmp_path / "embeddings" / (module + "".join(f"-{k}={v}" for k, v in options.items())) / task.name
    hear = import_module(module)
    model = hear.load_model(str(checkpoint), device="cpu", **options)
    for split, count in (("train", 4), ("valid", 2), ("test", 2)):
        shape = tuple(json.loads((out / f"{split}.embedding-dimensions.json").read_text()))
        assert shape == (count, model.scene_embedding_size)
        files = sorted((task / "16000" / split).glob("*.wav"))
        audio = torch.from_numpy(np.stack([soundfile.read(f, dtype="float32")[0] for f in files]))
        expected = hear.get_scene_embeddings(audio, model).numpy()  # the runner batches a split's files alike
        for f, row in zip(files, expected):
            np.testing.assert_allclose(np.load(out / split / f"{f.name}.embedding.npy"), row, rtol=1e-5, atol=1e-5)
