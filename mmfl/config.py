"""Typed configuration for every part of mmfl, loadable from TOML and overridable from the CLI.

Every model forbids unknown keys, so a typo is refused instead of silently ignored. Use
:func:`load_config` to read a TOML file, apply ``key.sub=value`` overrides and validate; any
problem becomes a one-line :class:`~mmfl.errors.ConfigError` that names the key.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mmfl.errors import ConfigError
from mmfl.modalities import Modality

SITE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
SiteId = Annotated[str, Field(pattern=SITE_ID_PATTERN)]
StrategyName = Literal[
    "cream",
    "cream+",
    "mean",
    "fedavg",
    "fedavg-public",
    "fedprox",
    "fedavgm",
    "server-only",
    "local",
    "centralized",
    "site-free",
    "public-teachers",
    "regress",
    "regress-public",
]

StrategyChoice = Literal[("auto", *get_args(StrategyName))]  # type: ignore[valid-type]
"""A spec's ``strategy``: a method, or ``auto`` (chosen from the sites' shape: strategies/choice.py)."""


class MethodChoice(BaseModel):
    """The method a run uses, what was asked for, and why (one line)."""

    asked: Literal["auto"]
    chosen: str
    why: str

    @property
    def line(self) -> str:
        return f"method: {self.chosen} ({self.why})"


class StrictModel(BaseModel):
    """Base for all configs: unknown keys are errors; values are re-validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class PrivacyConfig(StrictModel):
    """Sample- or group-level DP-SGD at one site (Opacus), enforced by the site itself.

    The guarantee is (epsilon, delta)-DP with add-or-remove-one adjacency of a sample (or of a
    whole group, e.g. a patient) for everything the site sends; see docs/privacy.md.
    """

    enabled: bool = False
    target_epsilon: float = Field(8.0, gt=0, description="lifetime budget over this site's data")
    delta: float = Field(1e-5, gt=0, lt=1)
    max_grad_norm: float = Field(1.0, gt=0)
    noise_multiplier: float | None = Field(
        None, gt=0, description="fixed sigma; None derives it from the budget and planned_rounds"
    )
    planned_rounds: int = Field(10, ge=1, description="rounds the derived sigma must last")
    accountant: Literal["rdp", "prv"] = "rdp"
    unit: Literal["sample", "group"] = "sample"
    grad_sample_mode: Literal["auto", "hooks", "ghost"] = "auto"
    count_epsilon: float = Field(
        0.05,
        gt=0,
        le=1,
        description="epsilon of the one noisy count of the training set that leaves the site (charged to the budget)",
    )


class TrainConfig(StrictModel):
    """Local training hyper-parameters of a site (CreamFL defaults where the paper has them)."""

    local_epochs: int = Field(1, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    public_batch_size: int = Field(128, ge=1)
    task_temperature: float = Field(0.1, gt=0, description="paired sites' InfoNCE temperature")


WorkKind = Literal["represent", "regress", "weights"]


class SitePolicy(StrictModel):
    """A site's own limits (``[site.policy]`` in its configuration), which it enforces before any
    work, any read of its data and any privacy charge; no coordinator can raise them. The
    defaults are safe for a small site and admit every built-in benchmark. Every refusal names the
    key and the value asked for (:mod:`mmfl.client.policy`)."""

    accept: list[WorkKind] = Field(
        default_factory=lambda: ["represent", "regress", "weights"],
        description="the work the site takes: represent (representation exchange), regress (mixed "
        "public items), weights (weight averaging: its weights leave it every round)",
    )
    max_local_epochs: int = Field(5, ge=0, le=1000, description="local epochs a round may ask for")
    max_steps_per_round: int = Field(
        20_000,
        ge=1,
        description="optimizer steps on private rows per round (epochs x batches); not for a DP "
        "site, whose refusal would depend on its exact size: it bounds its work by "
        "max_local_epochs and min_batch_size",
    )
    min_batch_size: int = Field(1, ge=1)
    max_batch_size: int = Field(4096, ge=1)
    max_public_items: int = Field(20_000, ge=0, description="public rows a round may name")
    max_mixed_items: int = Field(20_000, ge=0, description="mixed public items a regress round may ask for")
    max_reply_mb: float = Field(64.0, gt=0, description="size of the representations or weights sent back")
    require_dp: bool = Field(False, description="refuse to start without DP (privacy.enabled)")
    release_final_model: bool = Field(
        False,
        description="consent to release the final model once at the end of a run (its ensemble "
        "with the other consenting sites' is then a deliverable); with DP the release is "
        "post-processing of a DP-trained model, without DP the weights leave the site",
    )

    @model_validator(mode="after")
    def _batch_range(self) -> SitePolicy:
        if self.min_batch_size > self.max_batch_size:
            raise ValueError(
                f"min_batch_size {self.min_batch_size} is above max_batch_size {self.max_batch_size}"
            )
        return self


class SiteSpec(StrictModel):
    """One site of a federation: what it holds and which architecture encodes each modality."""

    id: SiteId
    modalities: list[Modality] = Field(min_length=1)
    architectures: dict[Modality, str]
    share: float = Field(1.0, gt=0, description="relative share of the private pool")
    manifest: Path | None = Field(
        None,
        description="simulation: this site's own manifest (e.g. from `mmfl data split --sites`); "
        "None = a share of the data set's private pool",
    )
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$")
    train: TrainConfig | None = Field(
        None, description="this site's training settings; None = the spec's [train]"
    )
    privacy: PrivacyConfig = Field(default_factory=PrivacyConfig)
    policy: SitePolicy = Field(default_factory=SitePolicy)

    @field_validator("modalities")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("modalities must not repeat")
        return value

    @model_validator(mode="after")
    def _architectures_cover_modalities(self) -> SiteSpec:
        missing = [m for m in self.modalities if m not in self.architectures]
        extra = [m for m in self.architectures if m not in self.modalities]
        if missing:
            raise ValueError(f"no architecture for modality {missing[0]!r}")
        if extra:
            raise ValueError(f"architecture given for modality {extra[0]!r} the site does not hold")
        if self.policy.require_dp and not self.privacy.enabled:
            raise ValueError("policy.require_dp is true but privacy.enabled is false")
        return self


class PartitionConfig(StrictModel):
    """How the private pool is split across sites."""

    scheme: Literal["iid", "dirichlet"] = "dirichlet"
    alpha: float = Field(1.0, gt=0, description="Dirichlet concentration; small = skewed labels")
    missing_modality_rate: float = Field(
        0.0, ge=0, lt=1, description="per-sample chance that a paired site lacks one modality"
    )
    min_samples: int = Field(8, ge=1)


class ServerConfig(StrictModel):
    """The coordinator's own model and its per-round training."""

    architectures: dict[Modality, str] = Field(
        default_factory=lambda: {"image": "cnn-large", "text": "glove-mlp-large"}
    )
    lr: float = Field(3e-4, gt=0)
    batch_size: int = Field(128, ge=1)
    epochs_per_round: int = Field(2, ge=1)
    eval_batch_size: int = Field(512, ge=1)
    temperature: float = Field(0.1, gt=0, description="InfoNCE temperature of the server's own training")
    min_sites: int = Field(1, ge=0, description="a round with fewer valid replies is failed")
    gpu_work: dict[str, int] = Field(
        default_factory=dict,
        description="settings for sites that declare a GPU, e.g. {local_epochs = 3, batch_size = 256}",
    )
    round_timeout: float = Field(600.0, gt=0)

    @field_validator("gpu_work")
    @classmethod
    def _gpu_keys(cls, value: dict[str, int]) -> dict[str, int]:
        allowed = ("local_epochs", "batch_size", "public_batch_size")
        for key, v in value.items():
            if key not in allowed:
                raise ValueError(f"gpu_work key {key!r} is not one of {allowed}")
            if v < 1:
                raise ValueError(f"gpu_work.{key} must be at least 1")
        return value


class CreamConfig(StrictModel):
    """CreamFL algorithm settings; defaults follow the reference code (notes section 1.9)."""

    contrast_temperature: float = Field(0.5, gt=0)
    interintra_weight: float = Field(0.5, ge=0)
    kd_weight: float = Field(0.3, ge=0)
    regulariser_mode: Literal["sequential", "additive"] = "sequential"
    public_subset: int | None = Field(
        None, ge=1, description="public rows per round; None uses the whole public set"
    )
    ensemble_temperature: float = Field(
        1.0, gt=0, description="scores are divided by it before the softmax over sites"
    )
    distill_loss: Literal["mse", "contrastive"] = "mse"
    distill_temperature: float = Field(0.1, gt=0)
    distill_cross_modal: bool = Field(
        False, description="also pull each modality toward the other modality's aggregate (contrastive only)"
    )
    sites_per_round: int | None = Field(None, ge=1, description="sampled sites per round; None = all")
    aggregation_chunk: int = Field(1024, ge=1)
    payload_dtype: Literal["float32", "float16", "int8"] = "float32"
    unit_norm_tolerance: float | None = Field(
        0.05, gt=0, description="refuse a reply whose rows are not unit vectors within this (None: off)"
    )
    trim: int = Field(0, ge=0, description="per row, drop the contributors farthest from the median")
    max_site_weight: float = Field(1.0, gt=0, le=1, description="cap on one site's weight per row")


class RegressConfig(StrictModel):
    """Representation regression (the ``regress`` family; :mod:`mmfl.strategies.regression`):
    each round the coordinator draws ``mix_items`` mixed public items, the sites send their
    representations of them, and the server regresses onto their concatenation."""

    mix_items: int | None = Field(
        None,
        ge=2,
        description="mixed public items per round; None: 10 x the public rows holding every modality",
    )
    weight: float = Field(10.0, gt=0, description="w in w * (1 - cos)")
    passes: int = Field(1, ge=1, le=100, description="server passes over each round's mixed items")
    teacher_rounds: int | None = Field(
        None,
        ge=1,
        description="the sites train in the first rounds only, then only represent; None: every round",
    )
    teacher_epochs: int | None = Field(
        None, ge=1, description="local epochs of a teacher round; None: train.local_epochs"
    )
    sites: Literal["paired", "all"] = Field(
        "paired",
        description="paired: only the sites that hold every modality of the spec (the others are "
        "refused at discovery, so they neither train nor spend); all: every site (a uni-modal "
        "site's space has no counterpart in the other modality: val -19 on the mixed federation)",
    )
    groups: Literal["auto", "off"] = Field(
        "auto",
        description="auto: sites that declare the same modalities and architectures, and accept "
        "weights work, are averaged each round (FedAvgM) and take part as one participant "
        "(mmfl.strategies.groups); off: every site takes part alone",
    )
    group_momentum: float = Field(0.5, ge=0, lt=1, description="FedAvgM's beta within a group")
    pool_share: float | None = Field(
        0.1,
        ge=0,
        le=1,
        description="the share of a modality's mixed items built from the unpaired public pool "
        "(when the public set has one; chosen on val among 0.1 and 0.25, docs/results.md); None: "
        "the pool's share of that modality's rows",
    )


class FedAvgConfig(StrictModel):
    """Weight averaging (the ``fedavg`` family). Per round, from the global weights :math:`w`:
    sites (and, with ``public_participant``, the coordinator on the public set) train local
    copies :math:`w_k` on :math:`n_k` rows; :math:`\\bar w = \\sum_k n_k w_k / \\sum_k n_k`;
    :math:`v \\leftarrow \\beta v + (\\bar w - w)`; :math:`w \\leftarrow w + \\eta v` (FedAvgM, as
    Flower's ``FedAvgM``; :math:`\\beta = 0`, :math:`\\eta = 1` is FedAvg). FedProx adds
    :math:`\\tfrac{\\mu}{2}\\lVert w_k - w\\rVert^2` to every local step's loss."""

    public_participant: bool = Field(
        False, description="the coordinator trains on the public set as one more participant"
    )
    server_momentum: float = Field(0.0, ge=0, lt=1, description="FedAvgM's beta")
    server_lr: float = Field(1.0, gt=0, description="FedAvgM's server learning rate eta")
    proximal_mu: float = Field(0.0, ge=0, description="FedProx's mu (sites without DP only)")


class DeliveryConfig(StrictModel):
    """What a run hands over. By default the coordinator also builds the models it can make
    without any site (its site-free controls) and delivers the better on val of those and the
    federation's model, saying which and with what gain (``summary.json``'s ``delivery``)."""

    select: bool = Field(
        True,
        description="build the site-free controls and deliver the better on val; false: deliver "
        "the federation's model without comparison (research runs that compare methods themselves)",
    )
    controls: list[StrategyName] | None = Field(
        None,
        description="the site-free runs to build; None: server-only and the method's offline "
        "control (site-free for the ensembles, regress-public for regress)",
    )

    @field_validator("controls")
    @classmethod
    def _site_free_only(cls, value: list[str] | None) -> list[str] | None:
        allowed = ("server-only", "site-free", "public-teachers", "regress-public")
        for name in value or []:
            if name not in allowed:
                raise ValueError(f"delivery.controls: {name!r} is not a site-free control {allowed}")
        return value


class FederationSpec(StrictModel):
    """A whole federation for ``mmfl simulate``: data set, sites, partition, server, strategy."""

    name: str = Field(
        "digits-default",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
        description="names the run's folder and id: letters, digits, '.', '_', '-' (no spaces)",
    )
    dataset: str = "digits"
    data_dir: Path | None = Field(None, description="prepared data; None uses the default cache")
    public_pool: bool = Field(
        False,
        description="append the data set's unpaired public pool (pool.jsonl: rows of one modality, "
        "e.g. OpenClipart's images without captions) to the public set; the methods distil on it "
        "per modality, every control gets it too (off by default: OpenClipart's pool gained "
        "nothing measurable on the all-paired benchmark, docs/results.md)",
    )
    modalities: list[Modality] = Field(default_factory=lambda: ["image", "text"], min_length=2)
    embed_dim: int = Field(256, ge=2)
    rounds: int = Field(4, ge=1)
    seed: int = 0
    strategy: StrategyChoice = Field(
        "auto",
        description="the method; auto: chosen from the sites' shape (strategies/choice.py), printed with why",
    )
    sites: list[SiteSpec] = Field(default_factory=lambda: default_digits_sites())
    partition: PartitionConfig = Field(default_factory=PartitionConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    server: ServerConfig = Field(default_factory=ServerConfig)
    cream: CreamConfig = Field(default_factory=CreamConfig)
    fedavg: FedAvgConfig = Field(default_factory=FedAvgConfig)
    regress: RegressConfig = Field(default_factory=RegressConfig)
    delivery: DeliveryConfig = Field(default_factory=DeliveryConfig)

    @model_validator(mode="after")
    def _sites_fit_federation(self) -> FederationSpec:
        ids = [s.id for s in self.sites]
        if len(set(ids)) != len(ids):
            raise ValueError("site ids must be unique")
        for site in self.sites:
            outside = [m for m in site.modalities if m not in self.modalities]
            if outside:
                raise ValueError(
                    f"site {site.id!r} holds modality {outside[0]!r} outside the federation's "
                    f"{self.modalities}"
                )
        missing = [m for m in self.modalities if m not in self.server.architectures]
        if missing:
            raise ValueError(f"server has no architecture for modality {missing[0]!r}")
        return self

    def paired_sites(self) -> list[SiteSpec]:
        """Sites holding every modality of the federation."""
        return [s for s in self.sites if set(self.modalities) <= set(s.modalities)]

    def train_for(self, site: SiteSpec) -> TrainConfig:
        """The site's own training settings, or the federation's defaults."""
        return site.train or self.train


class RunPlan(StrictModel):
    """What a ServerApp run needs; written by ``mmfl simulate`` (or the operator daemon)."""

    run_id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,119}$")
    spec: FederationSpec
    dataset_root: Path = Field(description="prepared data set: public/val/test manifests, dataset.json")
    output_dir: Path
    store_url: str
    site_configs: Path | None = Field(None, description="simulation: JSON list of SiteConfig")
    expected_sites: int = Field(0, ge=0, description="sites to wait for before round 1")
    site_names: dict[int, SiteId] | None = Field(
        None,
        description="deployment: the name each node (Flower node id) was registered under; "
        "a site must call itself by it",
    )
    site_keys: dict[int, str] | None = Field(
        None,
        description="deployment: the fingerprint of each node's registered public key, the "
        "identity its privacy record is bound to",
    )
    privacy_acks: dict[str, datetime] = Field(
        default_factory=dict,
        description="deployment: identity -> when an operator acknowledged that the site's privacy "
        "record went back (mmfl server privacy-ack); earlier reports no longer bind it",
    )
    method_choice: MethodChoice | None = Field(
        None, description="how the method was chosen where the spec asked for auto (simulation)"
    )
    discovery_timeout: float = Field(300.0, gt=0)
    threads: int | None = Field(None, ge=1, description="torch threads of the server")
    keep_checkpoints: int = Field(2, ge=1)
    resume: bool = Field(False, description="continue from the newest checkpoint in output_dir")

    def to_json(self) -> str:
        """``plan.json``, complete except for the :data:`METHOD_SETTINGS` keys the spec left
        unset, which stay unset when the file is read back (every engine but the in-process one,
        and the daemon's ServerApp, read it in another process): a method's own settings
        (:meth:`~mmfl.strategies.methods.Method.cream`, ``fedavg``) fill only unset fields, so a
        written-out default would silently turn them off (cream+ ran without its temperature and
        contrastive distillation wherever the plan was read back)."""
        data = self.model_dump(mode="json")
        data["spec"] = set_keys_only(self.spec, data["spec"], METHOD_SETTINGS)
        return json.dumps(data, indent=2)


class DaemonConfig(StrictModel):
    """The coordinator daemon (``server.toml`` in the server folder)."""

    public_host: str = Field("0.0.0.0", description="where nginx listens for sites")
    public_port: int = Field(8443, ge=1, le=65535)
    superlink_port: int = Field(9092, ge=1, le=65535)
    superlink_host: str = Field(
        "127.0.0.1", description="keep loopback unless the proxy runs in another container"
    )
    superlink_names: list[str] = Field(
        default_factory=lambda: ["localhost"], description="DNS names in the SuperLink certificate"
    )
    manage_proxy: bool = Field(True, description="start and supervise nginx (False when it runs elsewhere)")
    names: list[str] = Field(
        default_factory=lambda: ["localhost"], description="DNS names in the proxy certificate"
    )
    ips: list[str] = Field(
        default_factory=lambda: ["127.0.0.1"], description="IP addresses in the proxy certificate"
    )
    store_url: str | None = Field(None, description="run store; None = a SQLite file in the server folder")
    nginx: str = "/usr/sbin/nginx"
    max_body_size: str = Field(
        "64m", pattern=r"^\d+[kKmM]?$", description="nginx client_max_body_size for uploads"
    )
    nginx_extra: str = Field(
        "",
        description="directives added to nginx's public server block (no location, proxy_pass, "
        "include or Control/Runtime path: those could expose more than the Fleet API)",
    )
    gate_host: str = Field(
        "127.0.0.1",
        description="where the signature gate listens for nginx (loopback unless nginx runs elsewhere)",
    )
    gate_port: int = Field(
        0,
        ge=0,
        le=65535,
        description="the signature gate's port; 0 = any free port (only when this daemon runs nginx)",
    )
    restart_delay: float = Field(2.0, gt=0, description="seconds before restarting a dead SuperLink")
    requests_per_second: int = Field(
        50, ge=1, description="Fleet requests per second per client address at nginx (bursts 4x)"
    )
    connections_per_client: int = Field(64, ge=1, description="open connections per client address at nginx")

    @field_validator("nginx_extra")
    @classmethod
    def _fleet_only(cls, value: str) -> str:
        # Plain tokens, comments dropped: a location, proxy or include pasted here would route
        # more of the SuperLink than the Fleet API to the public address.
        code = re.sub(r"#[^\n]*", "", value)
        for word in ("location", "proxy_pass", "grpc_pass", "include", "rewrite"):
            if re.search(rf"(^|[\s;{{}}]){word}\b", code):
                raise ValueError(f"nginx_extra may not use {word!r}: only the Fleet API is public")
        if re.search(r"/v1/(control|runtime)|/flwr\.proto\.(Control|Runtime|ServerAppIo)", code):
            raise ValueError("nginx_extra may not name the Control or Runtime API")
        return value


class AdaptConfig(StrictModel):
    """Source-free adaptation (SUMMIT) of uni-modal models to a multimodal target site."""

    fusion: Literal["switch", "af", "ew"] = Field(
        "ew",
        description="pseudo-label fusion; EW is the default because AF won no scenario of "
        "benchmarks/adaptation/adapt.py by a margin (docs/adaptation.md)",
    )
    gap_threshold: float = Field(
        0.906,
        ge=0,
        description="the switch picks AF above this gap; the default is calibrated on every "
        "scenario of benchmarks/adaptation/adapt.py from their adaptation rows (results/adapt.md)",
    )
    certainty_cap: float = Field(0.9, gt=0, le=1)
    hypothesis_test: bool = False
    ht_k: float = Field(0.5, gt=0)
    consistency_weight: float = Field(0.1, ge=0)
    class_weights: Literal["uniform", "pseudo"] = Field(
        "pseudo",
        description="cross-entropy class weights: uniform, or inverse to each class's share of the "
        "pseudo-labels (SUMMIT's 'estimated from pseudo-labels')",
    )
    refresh_rounds: int = Field(1, ge=1)
    epochs: int = Field(5, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(1e-3, gt=0)
    seed: int = 0


DEFAULT_ARCHITECTURES: dict[str, str] = {"image": "cnn-small", "text": "bag", "audio": "mfcc-mlp"}
"""What a site uses for a modality it holds when its configuration names no architecture."""


class SiteConfig(StrictModel):
    """Everything one site needs to run: what it is, its data, its state folder."""

    site: SiteSpec
    train: TrainConfig = Field(default_factory=TrainConfig)
    manifest: Path
    public_manifest: Path = Field(description="the public set; its folder holds dataset.json")
    public_pool: Path | None = Field(
        None,
        description="the unpaired public pool (rows of one modality), appended after the public "
        "manifest's rows when the coordinator's run uses it; its files lie below public_root too",
    )
    public_root: Path | None = Field(
        None, description="public-set files must lie below it; default: the public manifest's folder"
    )
    data_root: Path | None = Field(
        None, description="the site's own files must lie below it; default: the manifest's folder"
    )
    state_dir: Path
    ledger_key: Path | None = Field(
        None,
        description="the site's private key; its privacy ledger is sealed with it "
        "(`mmfl client start` sets it to --key; None: checksum only, as in simulation)",
    )
    embed_dim: int = Field(256, ge=2)
    seed: int = 0
    holdout_fraction: float = Field(0.2, ge=0, lt=1, description="private rows kept for evaluation")
    threads: int | None = Field(None, ge=1, description="torch threads while training")

    @property
    def public_folder(self) -> Path:
        """The one folder the public set may read from (the coordinator chose its manifest)."""
        return (self.public_root or self.public_manifest.parent).resolve()

    @property
    def data_folder(self) -> Path:
        """The one folder the site's own manifest may read from."""
        return (self.data_root or self.manifest.parent).resolve()


def default_digits_sites() -> list[SiteSpec]:
    """Six sites of three kinds and two architectures per modality (the default federation)."""
    return [
        SiteSpec(id="img-cnn", modalities=["image"], architectures={"image": "cnn-small"}),
        SiteSpec(id="img-mlp", modalities=["image"], architectures={"image": "mlp"}),
        SiteSpec(id="txt-bag", modalities=["text"], architectures={"text": "bag"}),
        SiteSpec(id="txt-glove", modalities=["text"], architectures={"text": "glove-mlp"}),
        SiteSpec(
            id="pair-cnn-bag",
            modalities=["image", "text"],
            architectures={"image": "cnn-small", "text": "bag"},
        ),
        SiteSpec(
            id="pair-mlp-glove",
            modalities=["image", "text"],
            architectures={"image": "mlp", "text": "glove-mlp"},
        ),
    ]


M = TypeVar("M", bound=BaseModel)


def parse_override(item: str) -> tuple[list[str], Any]:
    """Split ``a.b.c=value`` into a key path and a TOML-typed value (bare words stay strings)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not of the form key=value")
    key, raw = item.split("=", 1)
    path = [p for p in key.strip().split(".") if p]
    if not path:
        raise ConfigError(f"override {item!r} has an empty key")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return path, value


def apply_override(
    data: dict[str, Any], path: list[str], value: Any, defaults: dict[str, Any] | None = None
) -> None:
    """Set ``data[path[0]][path[1]]... = value``; list items are addressed by index.

    A list the data does not hold yet (``sites`` left at its default) is copied from
    ``defaults`` first, so ``sites.0.train.lr=...`` works without restating the sites.
    """
    node: Any = data
    default: Any = defaults or {}
    for depth, part in enumerate(path[:-1]):
        if isinstance(node, list):
            i = _index(part, path, depth, len(node))
            node, default = node[i], (default[i] if isinstance(default, list) and i < len(default) else {})
        else:
            default = default.get(part, {}) if isinstance(default, dict) else {}
            if node.get(part) is None:  # an unset section: the default list, or a fresh table
                node[part] = json.loads(json.dumps(default)) if isinstance(default, list) else {}
            node = node[part]
        if not isinstance(node, dict | list):
            raise ConfigError(f"override {'.'.join(path)}: {'.'.join(path[: depth + 1])} is a value")
    last = path[-1]
    if isinstance(node, list):
        node[_index(last, path, len(path) - 1, len(node))] = value
    else:
        node[last] = value


def _index(part: str, path: list[str], depth: int, size: int) -> int:
    if not part.isdigit() or int(part) >= size:
        where = ".".join(path[: depth + 1])
        raise ConfigError(f"override {'.'.join(path)}: {where} is not an index below {size}")
    return int(part)


def format_validation_error(err: ValidationError, source: str) -> str:
    """One line naming each offending key, e.g. ``spec.toml: server.lrr: unknown key``."""
    parts = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
        parts.append(f"{key}: {msg}")
    return f"invalid config {source}: " + "; ".join(parts)


def load_config(
    model: type[M],
    path: Path | None = None,
    overrides: list[str] | None = None,
    base: dict[str, Any] | None = None,
) -> M:
    """Read ``path`` (TOML) over ``base``, apply overrides, validate into ``model``."""
    data: dict[str, Any] = dict(base or {})
    source = str(path) if path else "(defaults)"
    if path is not None:
        try:
            data.update(tomllib.loads(Path(path).read_text(encoding="utf-8")))
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    if overrides:
        # Only what the file and the overrides set counts as set (``cream+`` fills the rest);
        # default lists are copied in when an override addresses one of their items.
        try:
            defaults = model.model_validate(data).model_dump(mode="json")
        except ValidationError as exc:
            raise ConfigError(format_validation_error(exc, source)) from None
        for item in overrides:
            key_path, value = parse_override(item)
            apply_override(data, key_path, value, defaults)
        source += " with overrides"
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from None


METHOD_SETTINGS = ("cream", "fedavg")
"""The spec's tables whose unset keys a method fills with its own settings
(``strategies/methods.py``): they are written only where set."""


def dump_toml(model: BaseModel, unset_left_out: Sequence[str] = ()) -> str:
    """Render a config as TOML (for ``mmfl simulate init`` and the run's record). The tables
    named in ``unset_left_out`` keep only the keys that were set (where a method's own
    settings fill the rest: ``cream``, ``fedavg``)."""
    data = set_keys_only(model, model.model_dump(mode="json", exclude_none=True), unset_left_out)
    return _toml_table({k: v for k, v in data.items() if v != {} or k not in unset_left_out}, [])


def set_keys_only(model: BaseModel, data: dict[str, Any], tables: Sequence[str]) -> dict[str, Any]:
    """``data`` (``model`` dumped) with the ``tables`` keeping only the keys that were set."""
    out = dict(data)
    for name in tables:
        kept = getattr(model, name).model_fields_set
        out[name] = {k: v for k, v in data.get(name, {}).items() if k in kept}
    return out


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        return f'"{escaped}"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f'"{k}" = {_toml_value(v)}' for k, v in value.items()) + " }"
    raise TypeError(f"cannot render {type(value).__name__} as TOML")


def _toml_table(data: dict[str, Any], prefix: list[str]) -> str:
    scalars, tables, arrays = [], [], []
    for key, value in data.items():
        if isinstance(value, dict) and value and all(isinstance(v, dict) for v in value.values()):
            tables.append((key, value))
        elif isinstance(value, dict) and not _is_inline(value):
            tables.append((key, value))
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            arrays.append((key, value))
        else:
            scalars.append(f"{key} = {_toml_value(value)}")
    out = "\n".join(scalars) + ("\n" if scalars else "")
    for key, value in tables:
        name = ".".join([*prefix, key])
        out += f"\n[{name}]\n" + _toml_table(value, [*prefix, key])
    for key, items in arrays:
        name = ".".join([*prefix, key])
        for item in items:
            out += f"\n[[{name}]]\n" + _toml_table(item, [*prefix, key])
    return out


def _is_inline(value: dict[str, Any]) -> bool:
    """Small flat mappings (architectures per modality) read best inline."""
    return all(not isinstance(v, dict | list) for v in value.values())
