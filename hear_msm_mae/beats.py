"""The HEAR module of BEATs; families/beats.py says what its files are and how its clips are embedded."""
from .api import bind, get_scene_embeddings, get_timestamp_embeddings  # noqa: F401  (the HEAR API)

load_model = bind("beats")
