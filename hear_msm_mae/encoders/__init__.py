"""The encoders: normalised feature units (n, 1, F, W) -> tokens, each to the contract in grid.py.

vit.py       one Vision Transformer with flags (MSM-MAE, M2D, Audio-MAE, AST, ATST, Dasheng, CED)
beats.py     BEATs' encoder (conv positions, gated relative position bias, post-LN)
wav2vec2.py  torchaudio's wav2vec 2.0 / HuBERT / WavLM models over waveform units
"""
