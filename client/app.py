"""The ClientApp: Flower's entry point at a site, the same in simulation and deployment.

Which site this node is comes from its configuration:

* deployment: ``flower-supernode --node-config 'site-config="/etc/mmfl/site.toml"'``
  (a :class:`~mmfl.config.SiteConfig` TOML file);
* simulation: the run config's ``site-configs`` (a JSON list of SiteConfig), indexed by the
  virtual node's ``partition-id``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import torch
from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from mmfl.client import audit
from mmfl.client.budget import PrivacyRefusal
from mmfl.client.ledger import LedgerError
from mmfl.client.site import Site
from mmfl.config import SiteConfig, load_config
from mmfl.errors import MmflError
from mmfl.protocols.messages import (
    CapabilitiesQuery,
    EvaluateInstruction,
    EvaluateReply,
    RepresentInstruction,
    RepresentReply,
    WeightsInstruction,
    WeightsReply,
)
from mmfl.protocols.records import ProtocolError, arrays_of, decode, encode

log = logging.getLogger("mmfl.client")
app = ClientApp()

_sites: dict[str, Site] = {}
_sites_lock = threading.Lock()
_threads_lock = threading.Lock()


def site_for(context: Context) -> Site:
    """The :class:`Site` this node is (cached per process)."""
    if "site-config" in context.node_config:
        path = Path(str(context.node_config["site-config"]))
        key = str(path.resolve())
        loader = lambda: load_config(SiteConfig, path)  # noqa: E731
    elif "site-configs" in context.run_config:
        path = Path(str(context.run_config["site-configs"]))
        pid = int(context.node_config["partition-id"])
        key = f"{path.resolve()}#{pid}"

        def loader() -> SiteConfig:
            configs = json.loads(path.read_text(encoding="utf-8"))
            if pid >= len(configs):
                raise MmflError(f"partition {pid} has no site in {path}")
            return SiteConfig.model_validate(configs[pid])
    else:
        raise MmflError("this node has no site configuration (node config 'site-config')")
    with _sites_lock:
        if key not in _sites:
            _sites[key] = Site(loader())
        return _sites[key]


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run with ``n`` torch threads (``None``: leave as is), restoring afterwards."""
    if n is None:
        yield
        return
    with _threads_lock:
        before = torch.get_num_threads()
        torch.set_num_threads(n)
    try:
        yield
    finally:
        with _threads_lock:
            torch.set_num_threads(before)


def _leave(
    site, msg: Message, content, run_id: str, round_: int, status: str, epsilon: float | None, modalities=None
) -> Message:  # noqa: ANN001
    """Log what leaves the site (audit log, fsynced), then hand the reply to Flower."""
    audit.append(
        site.config.state_dir, msg.metadata.message_type, run_id, round_, status, content, epsilon, modalities
    )
    return Message(content, reply_to=msg)


PUBLIC_ERRORS = (ProtocolError, LedgerError, PrivacyRefusal)
GENERIC_REASON = "the site could not take part in this round (details in the site's log)"


def _failure_reason(site: Site, exc: Exception) -> str:
    """What may be said about a failure. A DP site says only what rests on public facts (the
    protocol, its ledger, its budget); anything else could describe its data, so it stays in
    the site's log."""
    if not site.private or isinstance(exc, PUBLIC_ERRORS):
        return str(exc)
    log.warning("site %s: %s", site.spec.id, exc, exc_info=not isinstance(exc, MmflError))
    return GENERIC_REASON


def _expected(site: Site) -> tuple[type[BaseException], ...]:
    """Failures answered with a refusal: ours, and for a DP site any (never a traceback)."""
    return (Exception,) if site.private else (ProtocolError, MmflError)


@app.query("capabilities")
def capabilities(msg: Message, context: Context) -> Message:
    query = decode(msg.content, CapabilitiesQuery)
    site = site_for(context)
    try:
        caps = site.capabilities()
    except _expected(site) as exc:
        raise MmflError(_failure_reason(site, exc)) from None
    return _leave(
        site,
        msg,
        encode(caps),
        query.run_id,
        0,
        "ok",
        caps.privacy.epsilon_spent if caps.privacy.enabled else None,
        [],
    )


def _requested(msg: Message, key: str, default: object) -> object:
    """A field of the instruction as sent, even when the instruction does not validate."""
    try:
        return json.loads(str(msg.content["meta"]["json"])).get(key, default)
    except (KeyError, TypeError, ValueError):
        return default


@app.train("represent")
def represent(msg: Message, context: Context) -> Message:
    site = site_for(context)
    try:
        instruction = decode(msg.content, RepresentInstruction)
        with torch_threads(site.config.threads):
            reply, reps = site.represent(instruction, arrays_of(msg.content))
    except _expected(site) as exc:
        reason = _failure_reason(site, exc)
        log.warning("site %s refused a round: %s", site.spec.id, reason)
        reply = RepresentReply(
            site_id=site.spec.id,
            round=int(_requested(msg, "round", 0)),
            status="refused",
            reason=reason,
            privacy=site.privacy_status(),
        )
        reps = {}
    eps = reply.privacy.epsilon_spent if reply.privacy.enabled else None
    run_id = str(_requested(msg, "run_id", ""))
    return _leave(site, msg, encode(reply, reps), run_id, reply.round, reply.status, eps)


@app.train("weights")
def train_weights(msg: Message, context: Context) -> Message:
    """FedAvg baseline: weights in, weights out, with ``num-examples`` for the weighting (a DP
    site trains with DP-SGD and gives its noisy count; its losses stay at the site)."""
    site = site_for(context)
    instruction = decode(msg.content, WeightsInstruction)
    try:
        with torch_threads(site.config.threads):
            reply, weights, n = site.train_weights(instruction, arrays_of(msg.content))
    except _expected(site) as exc:
        reply = WeightsReply(
            site_id=site.spec.id,
            round=instruction.round,
            status="refused",
            reason=_failure_reason(site, exc),
            architecture="",
            privacy=site.privacy_status(),
        )
        eps = reply.privacy.epsilon_spent if reply.privacy.enabled else None
        return _leave(site, msg, encode(reply), instruction.run_id, instruction.round, "refused", eps, [])
    metrics: dict[str, float] = {"num-examples": n}
    if not site.private:
        metrics["task_loss"] = float(reply.metrics.get("task_loss", float("nan")))
    eps = reply.privacy.epsilon_spent if reply.privacy.enabled else None
    return _leave(
        site,
        msg,
        encode(reply, weights, metrics),
        instruction.run_id,
        instruction.round,
        "ok",
        eps,
        list(site.spec.modalities),
    )


@app.evaluate("task")
def evaluate_task(msg: Message, context: Context) -> Message:
    instruction = decode(msg.content, EvaluateInstruction)
    site = site_for(context)
    try:
        with torch_threads(site.config.threads):
            metrics = site.evaluate(instruction.run_id)
    except _expected(site) as exc:
        raise MmflError(_failure_reason(site, exc)) from None
    content = encode(EvaluateReply(site_id=site.spec.id, round=instruction.round, metrics=metrics))
    return _leave(site, msg, content, instruction.run_id, instruction.round, "ok", None, [])
