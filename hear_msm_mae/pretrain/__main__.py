"""`python -m hear_msm_mae.pretrain ...` / `torchrun --nproc_per_node 8 -m hear_msm_mae.pretrain ...`."""
import argparse

from .trainer import add_pretrain_arguments, run_pretraining

parser = argparse.ArgumentParser(prog="python -m hear_msm_mae.pretrain", description="Pre-train MSM-MAE.")
add_pretrain_arguments(parser)
run_pretraining(parser.parse_args())
