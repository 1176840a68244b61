"""MSM-MAE audio representations with the HEAR 2021 API.

    model = hear_msm_mae.load_model("80x512p16x16_paper/checkpoint-100.pth")
    scene = hear_msm_mae.get_scene_embeddings(audio, model)            # (n, 3840)
    frames, ms = hear_msm_mae.get_timestamp_embeddings(audio, model)   # (n, t, 3840), (n, t)
"""
from .api import get_scene_embeddings, get_timestamp_embeddings, load_model

__all__ = ["load_model", "get_scene_embeddings", "get_timestamp_embeddings"]
__version__ = "0.1.0"
