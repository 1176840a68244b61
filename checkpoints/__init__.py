"""Checkpoints that ship with hear_msm_mae (installed as the package `hear_msm_mae.checkpoints`)."""
