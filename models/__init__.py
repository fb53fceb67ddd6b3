"""Trainable encoders per modality and architecture, the multi-encoder model, losses, metrics."""
