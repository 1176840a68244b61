"""MSM-MAE and its family of audio transformers with the HEAR 2021 API.

This package is the HEAR module of MSM-MAE (with a bundled default checkpoint):

    model = hear_msm_mae.load_model("80x512p16x16_paper/checkpoint-100.pth")   # no path: the bundled one
    scene = hear_msm_mae.get_scene_embeddings(audio, model)            # (n, 3840)
    frames, ms = hear_msm_mae.get_timestamp_embeddings(audio, model)   # (n, t, 3840), (n, t)

and each other family has its own: hear_msm_mae.m2d, hear_msm_mae.audiomae, hear_msm_mae.ast,
hear_msm_mae.beats, hear_msm_mae.dasheng, hear_msm_mae.ced, hear_msm_mae.atst_frame,
hear_msm_mae.atst_clip.
"""
from .api import bind, get_scene_embeddings, get_timestamp_embeddings
from .families.msm_mae import default_checkpoint

__all__ = ["load_model", "get_scene_embeddings", "get_timestamp_embeddings", "default_checkpoint"]
__version__ = "0.3.0"

load_model = bind("msm_mae", default_checkpoint)
