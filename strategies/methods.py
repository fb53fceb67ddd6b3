"""Every method a run can use, resolved once by name (as Opacus resolves accountants).

A :class:`Method` says what the sites do each round, what the coordinator combines, what the
server trains on and whether it distils; the round loop reads these fields, never the name.

===============  ===============  ===============  ======================  ==============
method           sites do         coordinator      server trains on        distils to
===============  ===============  ===============  ======================  ==============
cream            represent        CreamFL ensemble public                  aggregate
cream+           represent        selective ens.   public                  aggregate
mean             represent        uniform mean     public                  aggregate
fedavg           weights          weighted average (the average itself)    -
fedavg-public    weights          weighted average + the public set as a participant  -
fedprox          weights + prox.  weighted average + the public set as a participant  -
fedavgm          weights          average + server momentum, public participant       -
local            train alone      -                -                       -
server-only      -                -                public                  -
centralized      -                -                public + sites' rows    -
site-free        -                selective ens.   public                  its own reps
public-teachers  represent,       selective ens.   public                  aggregate
                 public set only
regress          represent mixed  (concatenates)   -                       regression
                 public items
regress-public   the same,        (concatenates)   -                       regression
                 public set only
===============  ===============  ===============  ======================  ==============

The last two are the site-free controls of ``cream+``: the same server, passes, losses and
epochs, with every site replaced by what the coordinator could build without any site
(``site-free``: the server's own representations as the only contributor;
``public-teachers``: models of the sites' architectures trained on the public set alone,
ensembled exactly as the sites would be). Only what a federation gains beyond them comes
from the sites' private data.
``regress-public`` is the same control for ``regress``: sites that hold the public set train
on it alone and send their representations of the same mixed items.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from mmfl.config import CreamConfig, FedAvgConfig, FederationSpec, StrategyName
from mmfl.strategies.cream import CreamEnsemble
from mmfl.strategies.mean import MeanEnsemble
from mmfl.strategies.rule import EnsembleRule

SiteWork = Literal["represent", "weights", "local"]
ServerData = Literal["public", "public+sites"]


@dataclass(frozen=True)
class Method:
    """One method: its name, a one-line description, and what each party does per round."""

    name: str
    description: str
    site_work: SiteWork | None = None
    """``represent``: train and send representations of the public rows; ``weights``: train
    the global weights and send them back (FedAvg); ``local``: train alone, send nothing."""
    ensemble: Literal["cream", "mean"] | None = None
    server_data: ServerData | None = "public"
    """What the server's task epoch runs on each round; None: no task epoch."""
    cream_defaults: dict[str, Any] = field(default_factory=dict)
    """CreamFL settings this method changes where the spec leaves them at their defaults."""
    site_data: Literal["private", "public"] = "private"
    """What the sites train on: their private partitions, or (a control) the public set."""
    self_targets: bool = False
    """The server's own representations of the round's public rows stand in for the sites'."""
    control_of: str | None = None
    """The federated method this site-free control reproduces without any site's data."""
    fedavg_defaults: dict[str, Any] = field(default_factory=dict)
    """Weight-averaging settings this method changes where the spec leaves them at their defaults."""
    transfer: Literal["ensemble", "regress"] = "ensemble"
    """How the sites' representations reach the server: ``ensemble``, merged by the rule into
    one target per row; ``regress``, the server regresses onto their concatenation on mixed
    public items (:mod:`mmfl.strategies.regression`), the sites training on the public pairs too."""

    @property
    def uses_sites(self) -> bool:
        return self.site_work is not None

    @property
    def needs_site_data(self) -> bool:
        """Whether the run needs the sites' partitions (to contact sites or pool their rows)."""
        return self.uses_sites or self.server_data == "public+sites"

    @property
    def has_server_model(self) -> bool:
        """Whether the run ends with a server model to evaluate."""
        return self.server_data is not None or self.site_work == "weights" or self.transfer == "regress"

    def cream(self, configured: CreamConfig) -> CreamConfig:
        """The CreamFL settings a run uses: this method's defaults fill fields left unset."""
        unset = {k: v for k, v in self.cream_defaults.items() if k not in configured.model_fields_set}
        return configured.model_copy(update=unset) if unset else configured

    def fedavg(self, configured: FedAvgConfig) -> FedAvgConfig:
        """The weight-averaging settings a run uses: this method's defaults fill unset fields."""
        unset = {k: v for k, v in self.fedavg_defaults.items() if k not in configured.model_fields_set}
        return configured.model_copy(update=unset) if unset else configured

    def rule(self, cream: CreamConfig) -> EnsembleRule | None:
        """How the coordinator merges representations (None: it merges none)."""
        rule: EnsembleRule
        if self.ensemble == "cream":
            rule = CreamEnsemble(cream.ensemble_temperature, cream.aggregation_chunk)
        elif self.ensemble == "mean":
            rule = MeanEnsemble()
        else:
            return None
        return rule.defended(cream.trim, cream.max_site_weight)

    def site_architectures(self, spec: FederationSpec) -> dict[str, dict[str, str]]:
        """Each taking-part site's architectures: FedAvg gives every paired site the first
        paired site's (weights average only between identical models); the others keep their own."""
        if self.site_work == "weights":
            paired = spec.paired_sites()
            if not paired:
                raise ValueError(f"the {self.name} method needs at least one site holding every modality")
            common = {m: paired[0].architectures[m] for m in spec.modalities}
            return {s.id: common for s in paired}
        return {s.id: dict(s.architectures) for s in spec.sites}

    def server_architectures(self, spec: FederationSpec) -> dict[str, str]:
        """The server model: the sites' common model under FedAvg, else the spec's server."""
        if self.site_work == "weights":
            return next(iter(self.site_architectures(spec).values()))
        return dict(spec.server.architectures)


CREAM_PLUS_DEFAULTS: dict[str, Any] = {
    "ensemble_temperature": 0.05,
    "distill_loss": "contrastive",
    "kd_weight": 1.0,
    "distill_cross_modal": True,
}
"""What ``cream+`` changes where the spec leaves a field at its default (docs/simulate.md, the methods)."""

METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("cream", "CreamFL as published: representation exchange, contrastive ensemble",
               site_work="represent", ensemble="cream"),
        Method("cream+", "CreamFL with a selective ensemble and contrastive distillation",
               site_work="represent", ensemble="cream", cream_defaults=CREAM_PLUS_DEFAULTS),
        Method("mean", "representation exchange, uniform mean of the sites",
               site_work="represent", ensemble="mean"),
        Method("fedavg", "FedAvg of the paired sites' weights (one shared architecture)",
               site_work="weights", server_data=None),
        Method("fedavg-public", "FedAvg with the coordinator's public set as one more participant",
               site_work="weights", server_data=None, fedavg_defaults={"public_participant": True}),
        Method("fedprox", "FedProx (mu = 0.01) with the public set as one more participant",
               site_work="weights", server_data=None,
               fedavg_defaults={"public_participant": True, "proximal_mu": 0.01}),
        Method("fedavgm", "FedAvgM (server momentum 0.5) with the public set as one more participant",
               site_work="weights", server_data=None,
               fedavg_defaults={"public_participant": True, "server_momentum": 0.5}),
        Method("local", "each site trains alone; nothing is exchanged",
               site_work="local", server_data=None),
        Method("server-only", "the server trains on the public set alone; no site"),
        Method("centralized", "the server trains on the public set and the sites' pooled rows",
               server_data="public+sites"),
        Method("site-free", "control: cream+ with the server's own representations as the only site",
               ensemble="cream", cream_defaults=CREAM_PLUS_DEFAULTS, self_targets=True, control_of="cream+"),
        Method("public-teachers", "control: cream+ with sites that hold the public set instead of private data",
               site_work="represent", ensemble="cream", cream_defaults=CREAM_PLUS_DEFAULTS, site_data="public",
               control_of="cream+"),
        Method("regress", "sites train on their pairs and the public pairs; the server regresses onto "
               "their concatenated representations of mixed public items",
               site_work="represent", server_data=None, transfer="regress"),
        Method("regress-public", "control: regress with sites that hold the public set instead of private data",
               site_work="represent", server_data=None, transfer="regress", site_data="public",
               control_of="regress"),
    )
}  # fmt: skip
assert set(METHODS) == set(get_args(StrategyName)), "config.StrategyName and METHODS must agree"


def method_of(name: str) -> Method:
    """The method called ``name``; a one-line error lists the known ones."""
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r} (known: {', '.join(METHODS)})") from None
