"""wav2vec 2.0 (Baevski et al. 2020): HEAR module `hear_msm_mae.wav2vec2` (its Family: waveform.py).

Files: fairseq's wav2vec_small.pt (Base, LibriSpeech 960 h), libri960_big.pt (Large, group-norm features,
raw waveform), wav2vec_vox_new.pt (Large LV-60k: layer-norm features, normalised waveform) and their
fine-tuned *_960h.pt (CTC head dropped); the hub's facebook/wav2vec2-base, -large-lv60,
-large-960h-lv60-self ...; torchaudio's wav2vec2_fairseq_*.pth (through this module).
mode="reference" with the default layer is hear-baseline's wav2vec2 recipe (the last hidden state, at
12.5 + 20 i ms), without its speechbrain wrapper's layer norms over the whole batch (README); GURA's
fusion_wav2vec2 is layers=list(range(depth + 1)), layer_pool="mean".
"""
from .waveform import Variant, waveform_family

FAMILY = waveform_family(Variant(name="wav2vec2", title="wav2vec 2.0", module="hear_msm_mae.wav2vec2",
                                 stored_names=("wav2vec2", "wav2vec_ctc")))
