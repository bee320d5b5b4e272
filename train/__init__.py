"""Training-side tools: dataset ingestion, splits, phantoms and the training loop."""
