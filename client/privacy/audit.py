"""The site's audit log: one JSON line per message that left the site, written (fsync) before
the message is handed to Flower.

Each line: time, run, round, message type, status, modalities, array shapes, bytes, the
SHA-256 of the payload (the message JSON and every array's bytes, in key order) and the
site's epsilon after the round. ``mmfl client audit --state DIR`` prints it.
"""

from __future__ import annotations

import hashlib
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flwr.app import RecordDict
from pydantic import BaseModel, ConfigDict

from mmfl.modalities import MODALITIES


class AuditEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    time: str
    run_id: str
    round: int
    message_type: str
    status: str
    modalities: list[str]
    shapes: dict[str, list[int]]
    bytes: int
    sha256: str
    epsilon_after: float | None
    note: str = ""
    """What a reader must know about this message (e.g. a model's weights left the site)."""


def payload_digest(content: RecordDict) -> tuple[str, int, dict[str, list[int]]]:
    """(sha256, bytes, shapes) of everything the payload carries."""
    digest, size, shapes = hashlib.sha256(), 0, {}
    for name in sorted(content.config_records):
        data = json.dumps(
            {k: content.config_records[name][k] for k in sorted(content.config_records[name])}, default=str
        ).encode()
        digest.update(data)
        size += len(data)
    for name in sorted(content.metric_records):
        data = json.dumps(dict(content.metric_records[name]), sort_keys=True).encode()
        digest.update(data)
        size += len(data)
    for name in sorted(content.array_records):
        record = content.array_records[name]
        for key in sorted(record):
            array = record[key]
            digest.update(key.encode())
            digest.update(array.data)
            size += len(array.data)
            shapes[key] = list(array.shape)
    return digest.hexdigest(), size, shapes


def append(
    state_dir: Path,
    message_type: str,
    run_id: str,
    round_: int,
    status: str,
    content: RecordDict,
    epsilon: float | None,
    modalities: list[str] | None = None,
    note: str = "",
) -> AuditEntry:
    sha, size, shapes = payload_digest(content)
    entry = AuditEntry(
        time=datetime.now(UTC).isoformat(timespec="milliseconds"),
        run_id=run_id,
        round=round_,
        message_type=message_type,
        status=status,
        modalities=sorted(modalities if modalities is not None else [k for k in shapes if k in MODALITIES]),
        shapes=shapes,
        bytes=size,
        sha256=sha,
        epsilon_after=epsilon,
        note=note,
    )
    path = Path(state_dir) / "audit.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("ab+") as fh:
        fh.seek(0, os.SEEK_END)
        torn = False
        if fh.tell():
            fh.seek(-1, os.SEEK_END)
            torn = fh.read(1) != b"\n"  # an append cut by a crash: end that line first
        fh.write((b"\n" if torn else b"") + entry.model_dump_json().encode() + b"\n")
        fh.flush()
        os.fsync(fh.fileno())
    return entry


def read(state_dir: Path) -> list[AuditEntry]:
    """Every entry; a line cut by a crash mid-append (not JSON) is skipped: its message was
    never sent, since the entry is written before the reply leaves. A line that is JSON but not
    an entry raises (that is damage, not a crash)."""
    path = Path(state_dir) / "audit.jsonl"
    if not path.exists():
        return []
    entries = []
    for line in path.read_bytes().splitlines():
        if not line.strip():
            continue
        try:
            json.loads(line)
        except ValueError:
            continue  # torn
        entries.append(AuditEntry.model_validate_json(line))
    return entries


def summary(entries: list[AuditEntry]) -> dict[str, Any]:
    return {
        "messages": len(entries),
        "bytes": sum(e.bytes for e in entries),
        "runs": sorted({e.run_id for e in entries}),
    }


def largest_epsilon(state_dir: Path) -> float | None:
    """The largest positive epsilon the site declared in a reply it sent as ``ok`` (None: no
    such reply). Refusals and errors release nothing, so what they declared is no evidence of
    a spend (logs of older versions hold refusals declaring a locked site's whole budget).
    Lines that do not parse are skipped: this is a floor, not an account."""
    path = Path(state_dir) / "audit.jsonl"
    if not path.exists():
        return None
    found = None
    for line in path.read_bytes().splitlines():
        try:
            entry = AuditEntry.model_validate_json(line)
        except ValueError:
            continue
        eps = entry.epsilon_after
        if entry.status == "ok" and eps is not None and eps > 0:
            found = eps if found is None else max(found, eps)
    return found
