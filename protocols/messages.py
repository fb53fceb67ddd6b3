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
``query.release``           :class:`ReleaseInstruction` (once, after    :class:`ReleaseReply` + the
                            the last round, to consenting sites)        final model's weights
==========================  ==========================================  ===========================

Representations travel as arrays whose rows are the public samples of this round's subset that
hold the modality, in the order of ``RepresentInstruction.rows[modality]`` — or, when the
instruction carries a :class:`MixPlan` (the ``regress`` methods), one row per mixed item in plan
order, with no global representations sent down.

Every number that crosses is finite and bounded: a peer cannot ask for a billion local epochs,
a gigantic embedding or a negative spend (``tests/test_fuzz.py``).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from mmfl.modalities import Modality

PROTOCOL_VERSION = 1

MSG_CAPABILITIES = "query.capabilities"
MSG_REPRESENT = "train.represent"
MSG_WEIGHTS = "train.weights"
MSG_EVALUATE = "evaluate.task"
MSG_RELEASE = "query.release"

MAX_EMBED_DIM = 1 << 16
MAX_PUBLIC_ROWS = 1_000_000
MAX_LOCAL_EPOCHS = 1000
MAX_BATCH = 1 << 16
STRICT = ConfigDict(extra="forbid", allow_inf_nan=False)


class Message(BaseModel):
    """Base: versioned, unknown fields and non-finite numbers refused."""

    model_config = STRICT
    protocol: int = PROTOCOL_VERSION


class CapabilitiesQuery(Message):
    run_id: str
    public_fingerprint: str


class DeviceInfo(BaseModel):
    model_config = STRICT
    kind: Literal["cpu", "cuda"]
    name: str
    index: int | None = Field(None, ge=0)
    memory_gb: float | None = Field(None, ge=0)


class PrivacyStatus(BaseModel):
    """What a site declares about its differential privacy: the guarantee, the budget, the spend.

    Every field is a setting or a function of what the site released under DP; with DP on, the
    site's size appears only as ``noisy_units``, its epsilon-DP count of training units.
    ``ledger_locked``: the site's ledger failed verification, so its spend is unknown (None)
    until an operator recovers it; the site trains and releases nothing meanwhile.
    """

    model_config = STRICT
    enabled: bool
    adjacency: Literal["add-remove"] = "add-remove"
    unit: Literal["sample", "group"] = "sample"
    target_epsilon: float | None = Field(None, gt=0)
    delta: float | None = Field(None, ge=0, lt=1)
    epsilon_spent: float | None = Field(0.0, ge=0)
    noise_multiplier: float | None = Field(None, ge=0)
    noisy_units: int | None = Field(None, ge=1)
    ledger_locked: bool = False

    @model_validator(mode="after")
    def _spend_known_unless_locked(self) -> PrivacyStatus:
        if (self.epsilon_spent is None) != self.ledger_locked:
            raise ValueError("epsilon_spent is unknown (None) exactly when the ledger is locked")
        return self


class Capabilities(Message):
    """A site's self-description. With DP on, exact counts stay at the site (``None``)."""

    site_id: str
    modalities: list[Modality] = Field(min_length=1)
    architectures: dict[str, str]
    samples: dict[str, Annotated[int, Field(ge=0)]] | None = None
    paired_samples: int | None = Field(None, ge=0)
    classes: int = Field(ge=0)
    device: DeviceInfo
    public_fingerprint: str
    data_fingerprint: str = ""  # keyed with the site's secret: stable per site, not a membership oracle
    privacy: PrivacyStatus
    releases_final_model: bool = False
    """The site's policy consents to release its final model once at the end of a run."""
    shares_weights: bool = False
    """The site's policy accepts ``weights`` work: it may be averaged with the sites of its shape
    (a group, :mod:`mmfl.strategies.groups`), its weights leaving it each round."""


class TrainSettings(BaseModel):
    """Hyper-parameters the coordinator asks for this round (the site may scale them)."""

    model_config = STRICT
    local_epochs: int = Field(ge=0, le=MAX_LOCAL_EPOCHS)
    batch_size: int = Field(ge=1, le=MAX_BATCH)
    lr: float = Field(gt=0)
    weight_decay: float = Field(ge=0)
    public_batch_size: int = Field(ge=1, le=MAX_BATCH)
    contrast_temperature: float = Field(gt=0)
    interintra_weight: float = Field(ge=0)
    regularisers: bool = True
    regulariser_mode: Literal["sequential", "additive"] = "sequential"
    payload_dtype: Literal["float32", "float16", "int8"] = "float32"
    proximal_mu: float = Field(0.0, ge=0, description="FedProx: weight of 0.5 * ||w - w_global||^2")
    public_pairs: bool = Field(
        False, description="also train the task loss on the public rows (public data: no privacy cost)"
    )


class MixRows(BaseModel):
    """The public rows one modality's mixed items are built from, when they differ from the
    plan's shared ``first``/``second`` (the modality has unpaired pool rows)."""

    model_config = STRICT
    first: list[int] = Field(min_length=1, max_length=MAX_PUBLIC_ROWS)
    second: list[int] = Field(min_length=1, max_length=MAX_PUBLIC_ROWS)


class MixPlan(BaseModel):
    """Mixed public items, drawn by the coordinator (public: they cost no privacy). Item k of
    modality m mixes public rows ``first[k]`` and ``second[k]`` (or ``own_rows[m]``'s, when the
    modality has unpaired pool rows to draw from) with weight ``weight[m][k]``
    (:func:`mmfl.data.mixing.mixed_inputs`)."""

    model_config = STRICT
    first: list[int] = Field(min_length=1, max_length=MAX_PUBLIC_ROWS)
    second: list[int] = Field(min_length=1, max_length=MAX_PUBLIC_ROWS)
    weight: dict[str, Annotated[list[Annotated[float, Field(ge=0, le=1)]], Field(max_length=MAX_PUBLIC_ROWS)]]
    own_rows: dict[str, MixRows] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _same_length(self) -> MixPlan:
        n = len(self.first)
        lists = [self.second, *self.weight.values()]
        lists += [r for rows in self.own_rows.values() for r in (rows.first, rows.second)]
        if any(len(x) != n for x in lists):
            raise ValueError(f"mix plan: first, second, every weight list and own row list must hold {n} items")
        if set(self.own_rows) - set(self.weight):
            raise ValueError("mix plan: own_rows names a modality without weights")
        return self

    def rows_of(self, modality: str) -> tuple[list[int], list[int]]:
        """(first, second): the public rows that ``modality``'s items mix."""
        own = self.own_rows.get(modality)
        return (self.first, self.second) if own is None else (own.first, own.second)


class RepresentInstruction(Message):
    run_id: str
    round: int = Field(ge=1)
    public_fingerprint: str
    public_indices: list[int] = Field(max_length=MAX_PUBLIC_ROWS)
    rows: dict[str, Annotated[list[int], Field(max_length=MAX_PUBLIC_ROWS)]]  # modality -> its rows
    embed_dim: int = Field(ge=1, le=MAX_EMBED_DIM)
    settings: TrainSettings
    mix: MixPlan | None = None
    """When set, the sites represent these mixed items (per modality of ``mix.weight``) instead
    of ``rows``, and no global representations travel."""

    def expected_rows(self) -> dict[str, int]:
        """Rows of each modality's representations in the reply."""
        if self.mix is not None:
            return {m: len(self.mix.first) for m in self.mix.weight}
        return {m: len(r) for m, r in self.rows.items()}


class SiteReply(Message):
    """What every training or release reply of a site carries: who, for which round, whether it
    did the work (a refusal says why and carries no arrays), and its privacy status."""

    site_id: str
    round: int
    status: Literal["ok", "refused"] = "ok"
    reason: str = ""
    privacy: PrivacyStatus


class RepresentReply(SiteReply):
    metrics: dict[str, float] = {}
    train_seconds: float = 0.0


class WeightsInstruction(Message):
    run_id: str
    round: int = Field(ge=1)
    settings: TrainSettings


class WeightsReply(SiteReply):
    architecture: str
    metrics: dict[str, float] = {}


class EvaluateInstruction(Message):
    run_id: str
    round: int


class EvaluateReply(Message):
    site_id: str
    round: int
    metrics: dict[str, float]


class ReleaseInstruction(Message):
    """After a run's last round: the consenting sites' final models, once."""

    run_id: str
    round: int = Field(ge=1, description="the run's last round")


class ReleaseReply(SiteReply):
    """A site's final model (its weights travel as arrays) or its refusal. ``round``: the round
    the released model was trained in."""

    architectures: dict[str, str] = {}


def positions(rows: list[int], among: list[int]) -> list[int]:
    """Where each row of ``among`` sits in a modality's ``rows`` (the order its
    representations travel in); -1 where the row lacks the modality."""
    where = {r: i for i, r in enumerate(rows)}
    return [where.get(r, -1) for r in among]
