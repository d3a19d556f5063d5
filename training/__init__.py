"""Training: the ranker's data and model, encoder fine-tuning, the pipeline, retraining."""
