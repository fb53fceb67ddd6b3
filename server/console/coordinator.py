"""What a server folder knows beyond the run store: registered site keys, which nodes are
online now (the SuperLink's node list, on loopback, cached) and the certificates' expiry."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mmfl.server.console.convert import timestamp
from mmfl.server.console.views import CertificateView
from mmfl.server.daemon import CONNECTION, ServerLayout, daemon_pid, flwr, registered_sites

NODES_TTL = 10.0
"""Seconds a node list is reused: each costs a ``flwr`` process on the coordinator."""


class NodeList:
    """``flwr supernode list`` against the loopback SuperLink, cached for ``ttl`` seconds; an
    empty list when no daemon runs or the SuperLink does not answer."""

    def __init__(self, layout: ServerLayout, ttl: float = NODES_TTL) -> None:
        self.layout = layout
        self.ttl = ttl
        self._lock = threading.Lock()
        self._at = -1e9
        self._nodes: dict[int, dict[str, Any]] = {}

    def __call__(self) -> dict[int, dict[str, Any]] | None:
        """Node id -> its entry (``status``, ``online-at``, ``offline-at``); None when no daemon runs."""
        if daemon_pid(self.layout) is None:
            return None
        with self._lock:
            if time.monotonic() - self._at > self.ttl:
                self._nodes = self._fetch()
                self._at = time.monotonic()
            return dict(self._nodes)

    def _fetch(self) -> dict[int, dict[str, Any]]:
        try:
            out = flwr(self.layout, "supernode", "list", CONNECTION, "--format", "json", timeout=30)
            nodes = json.loads(out.stdout).get("nodes", []) if out.returncode == 0 else []
        except (OSError, ValueError, TimeoutError):
            return {}
        return {int(n["node-id"]): n for n in nodes if str(n.get("node-id", "")).isdigit()}


def registrations(layout: ServerLayout) -> dict[str, dict[str, Any]]:
    """``sites.json``: name -> node_id, registered_at, revoked, ..."""
    try:
        return registered_sites(layout)
    except (OSError, ValueError):
        return {}


def certificates(tls: Path, now: datetime | None = None) -> list[CertificateView]:
    """Every certificate in the folder (``*.crt``, ``*.pem``) with its expiry, soonest first."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    now = now or datetime.now(UTC)
    out = []
    for path in sorted([*tls.glob("*.crt"), *tls.glob("*.pem")]):
        try:
            cert = x509.load_pem_x509_certificate(path.read_bytes())
        except (OSError, ValueError):
            continue
        names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        end = cert.not_valid_after_utc
        out.append(
            CertificateView(
                file=path.name,
                subject=str(names[0].value) if names else cert.subject.rfc4514_string(),
                not_after=end.strftime("%Y-%m-%d"),
                days_left=(end - now).days,
                expires_at=timestamp(end) or "",
            )
        )
    return sorted(out, key=lambda c: c.days_left)
