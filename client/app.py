"""The ClientApp: Flower's entry point at a site, the same in simulation and deployment.

Which site this node is comes from its configuration:

* deployment: ``flower-supernode --node-config 'site-config="/etc/mmfl/site.toml"'``
  (a :class:`~mmfl.config.SiteConfig` TOML file);
* simulation: the run config's ``site-configs`` (a JSON list of SiteConfig), indexed by the
  virtual node's ``partition-id``.

Every reply passes :func:`audit_mod` (a Flower ``Mod``) on its way out, so the audit log sees
each message that leaves the site, refusals and errors included. A handler that cannot do its
work answers with a refusal (:func:`refusal`); a DP site says why only when the reason rests on
public facts.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp

from mmfl.client.policy import PolicyRefusal
from mmfl.client.privacy import audit
from mmfl.client.privacy.budget import PrivacyRefusal
from mmfl.client.privacy.ledger import LedgerError
from mmfl.client.site import Site
from mmfl.config import SiteConfig, load_config
from mmfl.errors import MmflError
from mmfl.protocols.messages import (
    MSG_RELEASE,
    MSG_REPRESENT,
    MSG_WEIGHTS,
    CapabilitiesQuery,
    EvaluateInstruction,
    EvaluateReply,
    ReleaseInstruction,
    ReleaseReply,
    RepresentInstruction,
    RepresentReply,
    WeightsInstruction,
    WeightsReply,
)
from mmfl.protocols.records import ProtocolError, arrays_of, decode, encode

log = logging.getLogger("mmfl.client")

MAX_CACHED_SITES = 16
"""Sites kept built per process (their data loaded); a simulation process that serves more, e.g.
a Ray actor among 100 virtual sites, rebuilds the least recently used from its state folder."""
_sites: OrderedDict[str, Site] = OrderedDict()
_sites_lock = threading.Lock()


def _cached(key: str, build: Callable[[], Site]) -> Site:
    with _sites_lock:
        if key in _sites:
            _sites.move_to_end(key)
        else:
            _sites[key] = build()
            while len(_sites) > MAX_CACHED_SITES:
                _sites.popitem(last=False)
        return _sites[key]


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
    return _cached(key, lambda: Site(loader()))


def preload(site_config: Path) -> Site:
    """Build the deployed site of ``site_config`` as :func:`site_for` would, with its data and
    public set loaded and featurised, so that processes forked afterwards start warm."""
    key = str(Path(site_config).resolve())
    site = _cached(key, lambda: Site(load_config(SiteConfig, Path(site_config))))
    site.data.featurizers, site.data.public, site.data.train, site.data.holdout  # noqa: B018
    return site


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


def _requested(msg: Message, key: str, default: object) -> object:
    """A field of the instruction as sent, even when the instruction does not validate."""
    try:
        return json.loads(str(msg.content["meta"]["json"])).get(key, default)
    except (KeyError, TypeError, ValueError):
        return default


def audit_mod(msg: Message, context: Context, call_next: Callable[[Message, Context], Message]) -> Message:
    """Write what leaves the site to its audit log (fsynced) before Flower sends it: the
    message type, run, round, status, shapes, bytes, the payload's SHA-256 and the epsilon the
    reply declares. A handler's exception is logged as an ``error`` entry, then raised on."""
    try:
        site = site_for(context)
    except Exception:  # noqa: BLE001 - no site, no state folder: the handler reports it
        return call_next(msg, context)
    kind = msg.metadata.message_type
    run_id, round_ = str(_requested(msg, "run_id", "")), int(_requested(msg, "round", 0) or 0)
    try:
        reply = call_next(msg, context)
    except Exception:
        audit.append(site.config.state_dir, kind, run_id, round_, "error", RecordDict(), None, [])
        raise
    if reply.has_error():
        audit.append(site.config.state_dir, kind, run_id, round_, "error", RecordDict(), None, [])
        return reply
    meta = json.loads(str(reply.content["meta"]["json"]))
    privacy = meta.get("privacy") or {}
    status = meta.get("status", "ok")
    # A refusal releases nothing: it records no spend (whatever its status declares).
    spent = privacy.get("epsilon_spent") if privacy.get("enabled") and status == "ok" else None
    note = ""
    if kind in (MSG_WEIGHTS, MSG_RELEASE) and status == "ok":
        note = (
            "model weights left the site: post-processing of a DP-trained model (epsilon unchanged)"
            if privacy.get("enabled")
            else "model weights left the site WITHOUT differential privacy: they are the site's model itself"
        )
    audit.append(
        site.config.state_dir,
        kind,
        run_id,
        int(meta.get("round", round_)),
        status,
        reply.content,
        spent,
        list(site.spec.modalities) if kind in (MSG_WEIGHTS, MSG_RELEASE) and status == "ok" else None,
        note,
    )
    return reply


app = ClientApp(mods=[audit_mod])

PUBLIC_ERRORS = (ProtocolError, LedgerError, PrivacyRefusal, PolicyRefusal)
GENERIC_REASON = "the site could not take part in this round (details in the site's log)"


def _failure_reason(site: Site, exc: Exception) -> str:
    """What may be said about a failure. A DP site says only what rests on public facts (the
    protocol, its ledger, its budget, its policy); anything else could describe its data, so it
    stays in the site's log."""
    if not site.private or isinstance(exc, PUBLIC_ERRORS):
        return str(exc)
    log.warning("site %s: %s", site.spec.id, exc, exc_info=not isinstance(exc, MmflError))
    return GENERIC_REASON


def _expected(site: Site) -> tuple[type[BaseException], ...]:
    """Failures answered with a refusal: ours, and for a DP site any (never a traceback)."""
    return (Exception,) if site.private else (ProtocolError, MmflError)


def refusal(site: Site, msg: Message, exc: Exception) -> Message:
    """The one refusal: the reply type of the message, ``status = refused``, the reason that
    may be said, the site's privacy status; no arrays. Messages without a refusal form
    (capabilities, evaluation) raise instead, and Flower sends an error reply."""
    reason = _failure_reason(site, exc)
    log.warning("site %s refused %s: %s", site.spec.id, msg.metadata.message_type, reason)
    common = {
        "site_id": site.spec.id,
        "round": int(_requested(msg, "round", 0) or 0),
        "status": "refused",
        "reason": reason,
        "privacy": site.privacy_status(),
    }
    kind = msg.metadata.message_type
    if kind == MSG_REPRESENT:
        return Message(encode(RepresentReply(**common)), reply_to=msg)
    if kind == MSG_WEIGHTS:
        return Message(encode(WeightsReply(**common, architecture="")), reply_to=msg)
    if kind == MSG_RELEASE:
        return Message(encode(ReleaseReply(**common)), reply_to=msg)
    raise MmflError(reason) from None


@app.query("capabilities")
def capabilities(msg: Message, context: Context) -> Message:
    decode(msg.content, CapabilitiesQuery)
    site = site_for(context)
    try:
        return Message(encode(site.capabilities()), reply_to=msg)
    except _expected(site) as exc:
        return refusal(site, msg, exc)


@app.train("represent")
def represent(msg: Message, context: Context) -> Message:
    site = site_for(context)
    try:
        instruction = decode(msg.content, RepresentInstruction)
        with torch_threads(site.config.threads):
            reply, reps = site.represent(instruction, arrays_of(msg.content))
    except _expected(site) as exc:
        return refusal(site, msg, exc)
    return Message(encode(reply, reps), reply_to=msg)


@app.train("weights")
def train_weights(msg: Message, context: Context) -> Message:
    """FedAvg baseline: weights in, weights out, with ``num-examples`` for the weighting (a DP
    site trains with DP-SGD and gives its noisy count; its losses stay at the site)."""
    site = site_for(context)
    try:
        instruction = decode(msg.content, WeightsInstruction)
        with torch_threads(site.config.threads):
            reply, weights, n = site.train_weights(instruction, arrays_of(msg.content))
    except _expected(site) as exc:
        return refusal(site, msg, exc)
    metrics: dict[str, float] = {"num-examples": n}
    if not site.private:
        metrics["task_loss"] = float(reply.metrics.get("task_loss", float("nan")))
    return Message(encode(reply, weights, metrics), reply_to=msg)


@app.query("release")
def release(msg: Message, context: Context) -> Message:
    """The final model, once at the end of a run, where the site's policy consents."""
    site = site_for(context)
    try:
        instruction = decode(msg.content, ReleaseInstruction)
        reply, weights = site.release(instruction)
    except _expected(site) as exc:
        return refusal(site, msg, exc)
    return Message(encode(reply, weights), reply_to=msg)


@app.evaluate("task")
def evaluate_task(msg: Message, context: Context) -> Message:
    instruction = decode(msg.content, EvaluateInstruction)
    site = site_for(context)
    try:
        with torch_threads(site.config.threads):
            metrics = site.evaluate(instruction.run_id)
    except _expected(site) as exc:
        return refusal(site, msg, exc)
    content = encode(EvaluateReply(site_id=site.spec.id, round=instruction.round, metrics=metrics))
    return Message(content, reply_to=msg)
