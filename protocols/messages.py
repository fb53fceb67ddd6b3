"""The messages between coordinator and sites, one typed class each.

Flower message types and payloads:

==========================  ==========================================  ===========================
message type                instruction (coordinator -> site)           reply (site -> coordinator)
==========================  ==========================================  ===========================
``query.capabilities``      :class:`CapabilitiesQuery`                  :class:`Capabilities`
``train.represent``         :class:`RepresentInstruction` + global      :class:`RepresentReply` +
                            representations per modality                the site's representations
``train.weights``           :class:`WeightsInstruction` + weights       :class:`WeightsReply` +
                            (FedAvg baseline)                           weights + ``num-examples``
``evaluate.task``           :class:`EvaluateInstruction`                :class:`EvaluateReply`
==========================  ==========================================  ===========================

Representations travel as arrays whose rows are the public samples of this round's subset that
hold the modality, in the order of ``RepresentInstruction.rows[modality]``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from mmfl.modalities import Modality

PROTOCOL_VERSION = 1

MSG_CAPABILITIES = "query.capabilities"
MSG_REPRESENT = "train.represent"
MSG_WEIGHTS = "train.weights"
MSG_EVALUATE = "evaluate.task"


class Message(BaseModel):
    """Base: versioned, unknown fields refused."""

    model_config = ConfigDict(extra="forbid")
    protocol: int = PROTOCOL_VERSION


class CapabilitiesQuery(Message):
    run_id: str
    public_fingerprint: str


class DeviceInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["cpu", "cuda"]
    name: str
    index: int | None = None
    memory_gb: float | None = None


class PrivacyStatus(BaseModel):
    """What a site declares about its differential privacy: the guarantee, the budget, the spend.

    Every field is a setting or a function of what the site released under DP; with DP on, the
    site's size appears only as ``noisy_units``, its epsilon-DP count of training units.
    """

    model_config = ConfigDict(extra="forbid")
    enabled: bool
    adjacency: Literal["add-remove"] = "add-remove"
    unit: Literal["sample", "group"] = "sample"
    target_epsilon: float | None = None
    delta: float | None = None
    epsilon_spent: float = 0.0
    noise_multiplier: float | None = None
    noisy_units: int | None = None


class Capabilities(Message):
    """A site's self-description. With DP on, exact counts stay at the site (``None``)."""

    site_id: str
    modalities: list[Modality] = Field(min_length=1)
    architectures: dict[str, str]
    samples: dict[str, int] | None = None
    paired_samples: int | None = None
    classes: int
    device: DeviceInfo
    public_fingerprint: str
    data_fingerprint: str = ""  # keyed with the site's secret: stable per site, not a membership oracle
    privacy: PrivacyStatus


class TrainSettings(BaseModel):
    """Hyper-parameters the coordinator asks for this round (the site may scale them)."""

    model_config = ConfigDict(extra="forbid")
    local_epochs: int = Field(ge=0)
    batch_size: int = Field(ge=1)
    lr: float = Field(gt=0)
    weight_decay: float = Field(ge=0)
    public_batch_size: int = Field(ge=1)
    contrast_temperature: float = Field(gt=0)
    interintra_weight: float = Field(ge=0)
    regularisers: bool = True
    regulariser_mode: Literal["sequential", "additive"] = "sequential"
    payload_dtype: Literal["float32", "float16"] = "float32"
    proximal_mu: float = Field(0.0, ge=0, description="FedProx: weight of 0.5 * ||w - w_global||^2")


class RepresentInstruction(Message):
    run_id: str
    round: int = Field(ge=1)
    public_fingerprint: str
    public_indices: list[int]
    rows: dict[str, list[int]]  # modality -> public rows (subset members holding it)
    embed_dim: int = Field(ge=1)
    settings: TrainSettings


class RepresentReply(Message):
    site_id: str
    round: int
    status: Literal["ok", "refused"] = "ok"
    reason: str = ""
    metrics: dict[str, float] = {}
    privacy: PrivacyStatus
    train_seconds: float = 0.0


class WeightsInstruction(Message):
    run_id: str
    round: int = Field(ge=1)
    settings: TrainSettings


class WeightsReply(Message):
    site_id: str
    round: int
    status: Literal["ok", "refused"] = "ok"
    reason: str = ""
    architecture: str
    metrics: dict[str, float] = {}
    privacy: PrivacyStatus


class EvaluateInstruction(Message):
    run_id: str
    round: int


class EvaluateReply(Message):
    site_id: str
    round: int
    metrics: dict[str, float]


def positions(rows: list[int], among: list[int]) -> list[int]:
    """Where each row of ``among`` sits in a modality's ``rows`` (the order its
    representations travel in); -1 where the row lacks the modality."""
    where = {r: i for i, r in enumerate(rows)}
    return [where.get(r, -1) for r in among]
