"""Encoders per modality and architecture, frozen pretrained backbones, losses."""
