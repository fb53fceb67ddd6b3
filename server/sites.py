"""The sites of a run: discovery, registration, who is online, and each site's privacy status.

A site is registered when its capabilities validate, its public-set fingerprint equals the
coordinator's and its modalities are in the federation; otherwise it is refused with a reason.
Its :class:`~mmfl.protocols.messages.PrivacyStatus` is replaced by the one in each reply, so the
run's summary and evidence show what a site spent by the end, not before round 1.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence

from flwr.app import Message
from flwr.serverapp import Grid

from mmfl.protocols.messages import MSG_CAPABILITIES, Capabilities, CapabilitiesQuery, PrivacyStatus
from mmfl.protocols.records import ProtocolError, decode, encode
from mmfl.server.transport import send_and_collect

Event = Callable[[str, str], None]
SPEND_TOLERANCE = 1e-9
"""Reported spends are floats computed by the same accountant: equal means equal."""


class SiteRegistry:
    """Registered sites by Flower node id."""

    def __init__(
        self,
        modalities: Sequence[str],
        public_fingerprint: str,
        event: Event,
        names: dict[int, str] | None = None,
        keys: dict[int, str] | None = None,
    ) -> None:
        """``names``: the name each node was registered under (deployment); None in simulation,
        where the coordinator made the sites itself. ``keys``: the fingerprint of each node's
        registered public key (deployment), the identity its privacy record is bound to."""
        self.modalities = list(modalities)
        self.names = names
        self.keys = keys or {}
        self.public_fingerprint = public_fingerprint
        self.event = event
        self.sites: dict[int, Capabilities] = {}
        # node -> (the most epsilon it has reported, and where): a DP site's spend never goes back
        self.spent: dict[int, tuple[float, str]] = {}

    def identity(self, node: int) -> str:
        """What a site's privacy record is bound to: its registered public key (deployment: a
        wiped state folder does not make a new site), else its name (simulation)."""
        key = self.keys.get(node)
        return f"key:{key}" if key else f"site:{self.site_id(node)}"

    def site_id(self, node: int) -> str:
        caps = self.sites.get(node)
        return caps.site_id if caps else f"node-{node}"

    def register(self, node: int, reply: Message) -> Capabilities | None:
        """Register the node from its capabilities reply, or refuse it with a reason."""
        try:
            caps = decode(reply.content, Capabilities)
        except ProtocolError as exc:
            self.event("site-refused", f"node {node}: {exc}")
            return None
        if self.names is not None and self.names.get(node) != caps.site_id:
            registered = self.names.get(node)
            under = f"was registered as {registered}" if registered else "has no registered name"
            self.event("site-refused", f"node {node} {under} but calls itself {caps.site_id}; excluded")
            return None
        holder = next((n for n, c in self.sites.items() if c.site_id == caps.site_id and n != node), None)
        if holder is not None:
            self.event(
                "site-refused", f"node {node}: the name {caps.site_id} is held by node {holder}; excluded"
            )
            return None
        if caps.public_fingerprint != self.public_fingerprint:
            self.event(
                "site-refused",
                f"site {caps.site_id}: public-set fingerprint differs (not the same public set, or "
                "not the same unpaired pool: see the spec's public_pool and the site's --public-pool); excluded",
            )
            return None
        bad = [m for m in caps.modalities if m not in self.modalities]
        if bad:
            self.event("site-refused", f"site {caps.site_id}: modality {bad[0]} is not in this federation")
            return None
        self.sites[node] = caps
        return caps

    def refuse_unless(self, keep: Callable[[Capabilities], str | None]) -> None:
        """Unregister every site for which ``keep`` returns a reason."""
        for node, caps in list(self.sites.items()):
            reason = keep(caps)
            if reason:
                self.event("site-refused", f"site {caps.site_id}: {reason}")
                del self.sites[node]

    def online(self, grid: Grid) -> list[int]:
        """Registered nodes that are connected now, in node order."""
        connected = set(grid.get_node_ids())
        return sorted(n for n in self.sites if n in connected)

    def check_spend(self, node: int, status: PrivacyStatus | None, where: str) -> str | None:
        """Why a DP site's report is not credible, or None (and the report becomes the new
        floor): a site that reports less epsilon spent than it did before (this run, or an earlier
        run on the same data) has a privacy ledger that went back, restored from a backup, edited
        or re-made, and every release since then would be unaccounted."""
        if status is None or not status.enabled:
            return None
        if status.epsilon_spent is None:  # a locked ledger: no spend declared, none released
            self.event("privacy-locked", f"site {self.site_id(node)}: its privacy ledger is locked {where}")
            return None
        floor = self.spent.get(node)
        if floor is not None and status.epsilon_spent < floor[0] - SPEND_TOLERANCE:
            name = self.site_id(node)
            reason = (
                f"reports epsilon spent {status.epsilon_spent:.4f}, less than the {floor[0]:.4f} it "
                f"reported {floor[1]}: its privacy ledger went back (restored, re-made, or its state "
                f"folder lost); refused until its operator carries the spend over (mmfl client "
                f"ledger-reset --spent {floor[0]:.4f} --reason ...) or this coordinator's operator "
                f"acknowledges it (mmfl server privacy-ack {name} --reason ...)"
            )
            self.event("privacy-rollback", f"site {self.site_id(node)} {reason}")
            return reason
        if floor is None or status.epsilon_spent > floor[0]:
            self.spent[node] = (status.epsilon_spent, where)
        return None

    def refuse_rolled_back(
        self,
        prior: Callable[[str], tuple[float, str] | None],
        prior_budget: Callable[[str], tuple[float, str] | None] = lambda identity: None,
    ) -> None:
        """Seed each DP site's floor with ``prior(identity)`` (what the run store remembers of
        that identity) and unregister a site whose declared spend is below it, or whose declared
        budget is above ``prior_budget(identity)`` (the smallest it declared before)."""
        for node, caps in list(self.sites.items()):
            if not caps.privacy.enabled:
                continue
            identity = self.identity(node)
            remembered = prior(identity)
            if remembered is not None:
                self.spent[node] = remembered
            if self.check_spend(node, caps.privacy, "at registration") is not None:
                del self.sites[node]
            elif self.check_budget(node, caps.privacy, prior_budget(identity)) is not None:
                del self.sites[node]

    def check_budget(self, node: int, status: PrivacyStatus, before: tuple[float, str] | None) -> str | None:
        """Why a DP site's declared budget is not accepted, or None: a budget above the one it
        declared ``before`` was raised (``mmfl client ledger-raise``) or forged, and a budget is
        never raised silently, so the coordinator's operator must acknowledge it."""
        if before is None or status.target_epsilon <= before[0] * (1 + SPEND_TOLERANCE):
            return None
        name = self.site_id(node)
        reason = (
            f"declares a privacy budget of {status.target_epsilon:g}, above the {before[0]:g} it declared "
            f"{before[1]}: refused until this coordinator's operator acknowledges the raise "
            f"(mmfl server privacy-ack {name} --reason ...)"
        )
        self.event("privacy-budget-raised", f"site {name} {reason}")
        return reason

    def update_privacy(self, node: int, status: PrivacyStatus | None) -> None:
        if status is not None and node in self.sites:
            self.sites[node] = self.sites[node].model_copy(update={"privacy": status})


class SiteSampler:
    """``per_round`` of the given nodes, uniformly without replacement (all when None)."""

    def __init__(self, per_round: int | None, seed: int) -> None:
        self.per_round = per_round
        self.rng = random.Random(seed)

    def sample(self, nodes: Sequence[int], name: Callable[[int], str] | None = None) -> list[int]:
        """The round's nodes, in node order. Drawn from the nodes ordered by ``name`` (the site
        ids): Flower's engine numbers nodes at random, so a draw over node ids would pick other
        sites for the same seed in every run."""
        pool = sorted(nodes, key=name) if name else sorted(nodes)
        if self.per_round is not None and self.per_round < len(pool):
            pool = self.rng.sample(pool, self.per_round)
        return sorted(pool)


def discover(
    grid: Grid,
    registry: SiteRegistry,
    query: CapabilitiesQuery,
    expected: int,
    timeout: float,
    reply_timeout: float,
) -> None:
    """Ask every connected node for its capabilities until ``expected`` nodes registered or
    were refused for good, or ``timeout`` passed. A node that is not reachable yet (e.g.
    reconnecting after the coordinator restarted) is asked again; its failure reported once."""
    deadline = time.monotonic() + timeout
    settled: set[int] = set()
    failed: set[int] = set()
    while True:
        nodes = sorted(n for n in grid.get_node_ids() if n not in settled)
        if nodes:
            remaining = max(5.0, deadline - time.monotonic())
            replies = send_and_collect(
                grid,
                {n: encode(query) for n in nodes},
                MSG_CAPABILITIES,
                "discovery",
                min(reply_timeout, remaining),
            )
            for node, reply in replies.items():
                if reply is None:
                    continue
                if reply.has_error():
                    if node not in failed:
                        registry.event(
                            "site-error", f"node {node}: capabilities failed: {reply.error.reason}"
                        )
                        failed.add(node)
                    continue
                settled.add(node)
                registry.register(node, reply)
        if len(settled) >= expected or time.monotonic() >= deadline:
            return
        time.sleep(2.0)
