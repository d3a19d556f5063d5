"""Training: ranker data and model, the end-to-end training pipeline (and later the encoder)."""
