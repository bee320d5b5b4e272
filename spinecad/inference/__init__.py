"""Inference: which checkpoints to load (manifest), loading them, the multi-model predictor, heatmaps as arrays."""
