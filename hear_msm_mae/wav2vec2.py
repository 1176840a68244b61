"""The HEAR module of wav2vec 2.0; families/wav2vec2.py says what its files are and how its clips are embedded."""
from .api import bind, get_scene_embeddings, get_timestamp_embeddings  # noqa: F401  (the HEAR API)

load_model = bind("wav2vec2")
