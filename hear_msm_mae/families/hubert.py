"""HuBERT (Hsu et al. 2021): HEAR module `hear_msm_mae.hubert` (its Family: waveform.py).

Files: fairseq's hubert_base_ls960.pt, hubert_large_ll60k.pt, hubert_xtralarge_ll60k.pt (their k-means
label sets in task_state: fairseq Dictionary objects, read as inert data; label_embs_concat and final_proj
dropped) and the fine-tuned *_finetune_ls960.pt; the hub's facebook/hubert-base-ls960, -large-ll60k,
-xlarge-ll60k; torchaudio's hubert_fairseq_*.pth (through this module). GURA's fusion_hubert_xlarge is
mode="reference", layers=list(range(depth + 1)), layer_pool="mean" (GURA feeds the raw waveform; the Large
releases' own normalisation is kept here).
"""
from .waveform import Variant, waveform_family

FAMILY = waveform_family(Variant(name="hubert", title="HuBERT", module="hear_msm_mae.hubert",
                                 stored_names=("hubert", "hubert_ctc")))
