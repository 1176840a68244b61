"""The HEAR module of M2D; families/m2d.py says what its files are and how its clips are embedded."""
from .api import bind, get_scene_embeddings, get_timestamp_embeddings  # noqa: F401  (the HEAR API)

load_model = bind("m2d")
