"""WavLM (Chen et al. 2022): HEAR module `hear_msm_mae.wavlm` (its Family: waveform.py).

Files: microsoft/unilm's WavLM-Base.pt, WavLM-Base+.pt, WavLM-Large.pt ({'cfg', 'model'}; the Large one
normalises each clip's waveform, cfg.normalize); the hub's microsoft/wavlm-base, -base-plus, -large;
torchaudio's wavlm_*.pth. Told apart by its relative position table (one, in block 0: T5-style buckets of
the frame distance, gated in every block by the block's attention input, torchaudio's WavLMSelfAttention).
"""
from .waveform import Variant, waveform_family

FAMILY = waveform_family(Variant(name="wavlm", title="WavLM", module="hear_msm_mae.wavlm", relative_attention=True))
