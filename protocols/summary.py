"""``summary.json``, typed: what every finished run (simulated or deployed) leaves in its folder.

One :class:`RunSummary` is built by the coordinator (:func:`mmfl.server.summary.build_summary`)
and parsed by every reader (the report, the CLIs, the console, the tracker, ``mmfl.load``);
nobody looks its fields up by string. ``mmfl/schemas/summary.schema.json`` is generated from it
(:func:`summary_json_schema`) for readers in other languages.

Retrieval blocks map a metric to its value in percent: ``image2text_r1`` ... and ``rsum`` (the
sum of the six recalls, 0–600), and per modality pair ``image-text/rsum``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    model_serializer,
)

from mmfl.config import FederationSpec, MethodChoice, StrategyName
from mmfl.errors import MmflError
from mmfl.modalities import Modality
from mmfl.protocols.delivery import Delivery
from mmfl.protocols.messages import DeviceInfo, PrivacyStatus

SUMMARY_SCHEMA_VERSION = 3
SUMMARY_FILE = "summary.json"

FORBID = ConfigDict(extra="forbid")

Numbers = dict[str, float | None]
"""Named numbers (a site's task metrics, a round's weight entropy)."""


def _has_rsum(block: dict[str, float]) -> dict[str, float]:
    if "rsum" not in block:
        raise ValueError("a retrieval block has an rsum")
    return block


Retrieval = Annotated[dict[str, Annotated[float, Field(ge=0, le=600)]], AfterValidator(_has_rsum)]
"""Recall@K in percent per direction and their sum ``rsum`` (per modality pair: ``a-b/rsum``)."""


def rsum(block: Retrieval | None) -> float | None:
    """The ``rsum`` of a retrieval block; None without one."""
    return None if not block else block.get("rsum")


class ServerMetrics(BaseModel):
    """The server model's round: its losses and its retrieval on val and test. A metric the
    round did not have is left out of the JSON (not written as null)."""

    model_config = FORBID
    train_loss: float | None = None
    distill_loss: float | None = None
    val: Retrieval | None = None
    test: Retrieval | None = None

    @model_serializer(mode="wrap")
    def _without_missing(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return {k: v for k, v in handler(self).items() if v is not None}


class SiteRoundSummary(BaseModel):
    """What one site did in one round, as the coordinator saw it."""

    model_config = FORBID
    site_id: str
    accepted: bool
    reason: str
    bytes_down: int = Field(ge=0)
    bytes_up: int = Field(ge=0)
    epsilon: float | None = Field(
        None, ge=0, description="the site's epsilon spent after the round (DP sites)"
    )
    metrics: Numbers = Field(default_factory=dict)


class RoundSummary(BaseModel):
    """One round: its status, time, traffic, the server's metrics and every contacted site."""

    model_config = FORBID
    round: int = Field(ge=1)
    status: Literal["completed", "failed"]
    reason: str = ""
    wall_seconds: float = Field(ge=0)
    phase_seconds: dict[str, float] = Field(default_factory=dict)
    bytes_down: int = Field(ge=0)
    bytes_up: int = Field(ge=0)
    server_metrics: ServerMetrics
    weight_entropy: Numbers = Field(default_factory=dict)
    sites: list[SiteRoundSummary]


class SiteSummary(BaseModel):
    """A site as it last described itself. A DP site's exact size stays at the site: only its
    epsilon-DP count of units (``private_units_noisy``) left it."""

    model_config = FORBID
    id: str
    modalities: list[Modality] = Field(min_length=1)
    architectures: dict[str, str]
    private_samples: dict[str, Annotated[int, Field(ge=0)]] | None
    paired_samples: int | None = Field(None, ge=0)
    private_units_noisy: int | None = Field(None, ge=1)
    device: DeviceInfo
    privacy: PrivacyStatus


class DatasetSummary(BaseModel):
    model_config = FORBID
    name: str
    pairing: Literal["class", "instance"]
    splits: dict[str, Annotated[int, Field(ge=0)]]
    public_fingerprint: str = Field(pattern=r"^[0-9a-f]{64}$")


class ServerSummary(BaseModel):
    model_config = FORBID
    architectures: dict[str, str]


class FinalMetrics(BaseModel):
    """After the last round: the server's retrieval on test and val (None for a method without a
    server model) and each site's task metrics on its own held-out rows."""

    model_config = FORBID
    retrieval: Retrieval | None
    val_retrieval: Retrieval | None
    site_metrics: dict[str, Numbers] = Field(default_factory=dict)

    @property
    def test_rsum(self) -> float | None:
        return rsum(self.retrieval)

    @property
    def val_rsum(self) -> float | None:
        return rsum(self.val_retrieval)


class Versions(BaseModel):
    """The code that ran: package versions and, from a git checkout, its commit."""

    model_config = FORBID
    mmfl: str
    flwr: str
    torch: str
    opacus: str
    numpy: str | None = None
    python: str
    code: str | None = None


class RunSummary(BaseModel):
    """``summary.json``: the run's data set, sites, rounds, final metrics and delivery."""

    model_config = ConfigDict(extra="forbid", title="mmfl run summary")
    schema_version: Literal[3] = SUMMARY_SCHEMA_VERSION
    run_id: str = Field(min_length=1)
    name: str
    strategy: StrategyName
    method_choice: MethodChoice | None = Field(
        None,
        description="how the method was chosen where the spec asked for auto; null when the spec named it",
    )
    dataset: DatasetSummary
    modalities: list[Modality] = Field(min_length=2)
    embed_dim: int = Field(ge=2)
    seed: int
    server: ServerSummary
    sites: list[SiteSummary]
    rounds: list[RoundSummary]
    final: FinalMetrics
    delivery: Delivery | None = Field(
        None, description="what the run delivered: the federation's model or the strongest site-free control"
    )
    reproducible: bool = Field(
        description="false when a site used DP (its noise and batches come from OS entropy)"
    )
    wall_seconds: float = Field(ge=0)
    versions: Versions
    config: dict[str, Any] = Field(description="the run's spec, as FederationSpec dumps it")
    config_toml: str = ""

    @property
    def spec(self) -> FederationSpec:
        """The run's spec (``config``), validated."""
        return FederationSpec.model_validate(self.config)

    @property
    def delivered(self) -> str:
        """The strategy whose model ``final_model.pt`` holds."""
        return self.delivery.delivered if self.delivery is not None else self.strategy

    @property
    def dp_sites(self) -> list[str]:
        return [s.id for s in self.sites if s.privacy.enabled]

    def to_json(self) -> str:
        """Strict JSON (no NaN), as written to ``summary.json``."""
        return self.model_dump_json(indent=2)

    @classmethod
    def read(cls, path: Path) -> RunSummary:
        """The summary in ``path`` (a run folder or the file); a missing or invalid file is a
        one-line :class:`~mmfl.errors.MmflError` naming it."""
        file = path / SUMMARY_FILE if path.is_dir() else path
        try:
            text = file.read_text(encoding="utf-8")
        except OSError as exc:
            raise MmflError(f"cannot read {file}: {exc.strerror or exc}") from None
        try:
            return cls.model_validate_json(text)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "summary"
            raise MmflError(f"{file} is not an mmfl run summary: {where}: {first['msg']}") from None

    @classmethod
    def read_if_done(cls, folder: Path) -> RunSummary | None:
        """The folder's summary once the run has written it; None before (or while it is being
        replaced, or when it does not parse: the console reads folders that are still live)."""
        try:
            return cls.read(folder)
        except MmflError:
            return None


def summary_json_schema() -> dict[str, Any]:
    """The JSON schema of ``summary.json`` (``mmfl/schemas/summary.schema.json``)."""
    schema = RunSummary.model_json_schema()
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://mmfl.example/schemas/summary.schema.json",
        "description": "summary.json, written by every mmfl run (simulated or deployed) into its output "
        "folder; generated from mmfl.protocols.summary.RunSummary",
        **schema,
    }


def write_schema(path: Path) -> None:
    path.write_text(json.dumps(summary_json_schema(), indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":  # python -m mmfl.protocols.summary: regenerate the published schema
    from importlib.resources import files

    write_schema(Path(str(files("mmfl") / "schemas" / "summary.schema.json")))
