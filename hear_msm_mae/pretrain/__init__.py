"""MSM-MAE pre-training: log-mel cache (data), training loop (trainer), offline corpus recipe."""
