"""Dasheng (Dinkel et al., "Scaling up masked audio encoder learning for general audio classification",
Interspeech 2024): HEAR module `hear_msm_mae.dasheng`.

Files (the `dasheng` package, 0.0.9 on PyPI; zenodo record 11511780: dasheng_base.pt, dasheng_06b.pt,
dasheng_12b.pt): {'model': the encoder's state dict, 'config': ...}, the config either the training script's
(its `model_args`, and `outputdir`, a pathlib.PosixPath) or the plain constructor arguments; a bare state dict
(the AudioSet fine-tuned file, with its classifier `outputlayer.*`, dropped here). Read as
families/audio_transformer.py says: the 64-mel dB front end, init_bn as per-bin statistics, 64x4 patches (a
column of one patch every 40 ms), time + frequency positions as one table of 252 columns (1008 frames).
Heads: the config's `num_heads`, else the release's: 80 wide in the 0.6B model, 64 wide in the others (the
reference's own helpers force them: nothing in the weights tells). Hugging Face folders (mispeech/dasheng-*,
read by hf_folder.py): config.json's `encoder_kwargs`, the weights under `encoder.` without the front-end
buffers, as the authors' conversion script (hf_transformers_custom_model_dasheng) writes them; no hub file was
seen, so those names are the script's, not checked against a release.

Units: 252 columns, the reference's chunk: unit u starts at frame 1008 u, and a short last unit takes the
first columns of the position table, as the reference slices its time table for a short last chunk.
top_db: the default mode floors each clip at its own maximum - 120 dB (an embedding never depends on the
batch); mode="reference" is the package's forward: the floor from the whole batch's maximum (torchaudio's
AmplitudeToDB on (B, F, T)), frames after the last whole 4-frame column dropped, chunks of 252 tokens that
never attend to each other. Dasheng has no HEAR wrapper: both modes put a frame at the centre of its column
(40 i + 15 ms) and the scene is the mean of the frames. The default mode also embeds a partial last column
(completed with padding frames, 0 after init_bn), at a 40-ms hop by default (10 and 20 ms by shifted copies).
"""
from __future__ import annotations

import pathlib
from pathlib import Path
from typing import Any, Dict, Optional

from ..family import Checkpoint, Family, ReferenceRecipe, strip_prefix
from ..encoders.vit import VisionTransformer
from . import audio_transformer

PATCH = (64, 4)
RELEASE_HEADS = {1280: 16}  # dasheng_06B; dasheng_base (768) and dasheng_12B (1536) have 64-wide heads
HF_PREFIX = "encoder."  # Hugging Face's DashengModel keeps the encoder under `encoder`


def _weights(contents: Dict[str, Any]) -> Dict[str, Any]:
    return strip_prefix(audio_transformer.weights(contents), HF_PREFIX)


def looks_like(contents: Dict[str, Any]) -> bool:
    return audio_transformer.looks_like(_weights(contents), PATCH)


def read(path: Path, contents: Dict[str, Any], unit_frames: Optional[int] = None) -> Checkpoint:
    return audio_transformer.read(path, contents, _weights(contents), FAMILY, RELEASE_HEADS)


FAMILY = Family(
    name="dasheng", title="Dasheng", module="hear_msm_mae.dasheng", looks_like=looks_like, read=read,
    encoder=VisionTransformer, default_norm_stats=(0.0, 1.0),  # unused: every file has its init_bn statistics
    reference=ReferenceRecipe(whole_columns_only=True, batch_top_db=True),
    # the training config's outputdir; named as the pickle names it, whichever module defines the class here
    safe_globals=((pathlib.PosixPath, "pathlib.PosixPath"),))
