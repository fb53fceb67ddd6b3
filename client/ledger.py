"""The site's privacy ledger: what its DP-SGD has spent on its data, across rounds, runs and
restarts, and the budget it enforces.

One ledger per (site, data fingerprint) under ``STATE/privacy/``. It holds the accountant's
history (``(sigma, q, steps)`` segments, the Opacus accountant ``state_dict``) and one entry per
round. It is written atomically with fsync after every round *before* the reply leaves the site.
Its SHA-256 is kept beside it; a ledger that is missing while the site's records say it existed,
or whose content does not match its checksum, makes the site refuse to train (fail closed)
until an operator re-initialises it with a reason, which the new ledger records.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mmfl.errors import MmflError
from mmfl.files import atomic_write_bytes

Segment = tuple[float, float, int]  # (noise multiplier, sample rate, steps)


class LedgerError(MmflError):
    """The ledger is missing, corrupt or exhausted; the site must not train."""


class LedgerEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    run_id: str
    round: int
    noise_multiplier: float
    sample_rate: float
    steps: int
    epsilon_after: float
    at: str


class LedgerReset(BaseModel):
    model_config = ConfigDict(extra="forbid")
    at: str
    reason: str
    previous_sha256: str | None


class LedgerFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    format_version: int = 1
    site_id: str
    data_fingerprint: str
    accountant: Literal["rdp", "prv"]
    delta: float
    target_epsilon: float
    unit: Literal["sample", "group"]
    noise_multiplier: float | None = None
    history: list[list[float]] = Field(default_factory=list)
    entries: list[LedgerEntry] = Field(default_factory=list)
    resets: list[LedgerReset] = Field(default_factory=list)
    created_at: str


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def epsilon_of(history: list[Segment] | list[list[float]], delta: float, accountant: str) -> float:
    """Epsilon at ``delta`` after the given (sigma, q, steps) segments (0 when empty)."""
    if not history:
        return 0.0
    from opacus.accountants import create_accountant  # opacus takes seconds to import

    acc = create_accountant(accountant)
    acc.history = [(float(s), float(q), int(n)) for s, q, n in history]
    return float(acc.get_epsilon(delta=delta))


class PrivacyLedger:
    """Load, check, project and commit a site's privacy spending on one data set."""

    def __init__(self, state_dir: Path, site_id: str, data_fingerprint: str) -> None:
        self.dir = Path(state_dir) / "privacy"
        self.site_id = site_id
        self.fingerprint = data_fingerprint
        self.path = self.dir / f"ledger-{data_fingerprint[:16]}.json"
        self.checksum_path = self.path.with_suffix(".sha256")
        self.registry_path = self.dir / "ledgers.json"

    # -- on disk ---------------------------------------------------------------------------------
    def _registered(self) -> dict[str, str]:
        if not self.registry_path.exists():
            return {}
        try:
            return dict(json.loads(self.registry_path.read_text(encoding="utf-8")))
        except (json.JSONDecodeError, TypeError, ValueError):
            raise LedgerError(
                f"privacy ledger registry {self.registry_path} is corrupt; refusing to train"
            ) from None

    def exists(self) -> bool:
        return self.path.exists()

    def load(self, expected_existing: bool = False) -> LedgerFile | None:
        """The ledger, None if this site never trained on this data with DP.

        Raises :class:`LedgerError` when it should exist but does not, or does not verify.
        """
        registered = self.fingerprint in self._registered() or expected_existing
        if not self.path.exists():
            if registered:
                raise LedgerError(
                    f"privacy ledger {self.path} is missing although this site spent privacy on this data; "
                    "refusing to train until an operator re-initialises it (mmfl client ledger-reset --reason ...)"
                )
            return None
        data = self.path.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        stored = self.checksum_path.read_text().strip() if self.checksum_path.exists() else None
        if stored != digest:
            raise LedgerError(f"privacy ledger {self.path} does not match its checksum; refusing to train")
        try:
            ledger = LedgerFile.model_validate_json(data)
        except ValidationError:
            raise LedgerError(
                f"privacy ledger {self.path} is not a valid ledger; refusing to train"
            ) from None
        if ledger.data_fingerprint != self.fingerprint or ledger.site_id != self.site_id:
            raise LedgerError(
                f"privacy ledger {self.path} belongs to another site or data set; refusing to train"
            )
        return ledger

    def save(self, ledger: LedgerFile) -> None:
        """Write ledger, then checksum, then registry (each atomic, fsynced)."""
        data = ledger.model_dump_json(indent=2).encode("utf-8")
        atomic_write_bytes(self.path, data)
        atomic_write_bytes(self.checksum_path, (hashlib.sha256(data).hexdigest() + "\n").encode())
        registered = self._registered()
        if self.fingerprint not in registered:
            registered[self.fingerprint] = str(self.path.name)
            atomic_write_bytes(self.registry_path, json.dumps(registered, indent=2).encode())

    def create(self, accountant: str, delta: float, target_epsilon: float, unit: str) -> LedgerFile:
        ledger = LedgerFile(
            site_id=self.site_id,
            data_fingerprint=self.fingerprint,
            accountant=accountant,  # type: ignore[arg-type]
            delta=delta,
            target_epsilon=target_epsilon,
            unit=unit,
            created_at=now(),  # type: ignore[arg-type]
        )
        self.save(ledger)
        return ledger

    # -- accounting ------------------------------------------------------------------------------
    @staticmethod
    def spent(ledger: LedgerFile) -> float:
        return epsilon_of(ledger.history, ledger.delta, ledger.accountant)

    @staticmethod
    def project(ledger: LedgerFile, noise_multiplier: float, sample_rate: float, steps: int) -> float:
        """Epsilon after this round's planned steps on top of the history."""
        return epsilon_of(
            [*ledger.history, [noise_multiplier, sample_rate, steps]], ledger.delta, ledger.accountant
        )

    def commit(
        self,
        ledger: LedgerFile,
        run_id: str,
        round_: int,
        history: list[Segment],
        noise_multiplier: float,
        sample_rate: float,
        steps: int,
    ) -> LedgerFile:
        """Record a finished round (``history`` is the accountant's after it); durable on return."""
        updated = ledger.model_copy(deep=True)
        updated.history = [[float(s), float(q), int(n)] for s, q, n in history]
        updated.noise_multiplier = noise_multiplier
        updated.entries.append(
            LedgerEntry(
                run_id=run_id,
                round=round_,
                noise_multiplier=noise_multiplier,
                sample_rate=sample_rate,
                steps=steps,
                epsilon_after=epsilon_of(updated.history, updated.delta, updated.accountant),
                at=now(),
            )
        )
        self.save(updated)
        return updated

    def reset(
        self, reason: str, accountant: str, delta: float, target_epsilon: float, unit: str
    ) -> LedgerFile:
        """Operator action: start a new ledger for this data, recording why and what it replaced."""
        if not reason.strip():
            raise MmflError("a ledger reset needs a reason")
        previous = hashlib.sha256(self.path.read_bytes()).hexdigest() if self.path.exists() else None
        if self.path.exists():
            self.path.rename(
                self.path.with_name(f"{self.path.stem}.replaced-{datetime.now(UTC):%Y%m%dT%H%M%S}.json")
            )
        ledger = LedgerFile(
            site_id=self.site_id,
            data_fingerprint=self.fingerprint,
            accountant=accountant,  # type: ignore[arg-type]
            delta=delta,
            target_epsilon=target_epsilon,
            unit=unit,
            created_at=now(),  # type: ignore[arg-type]
            resets=[LedgerReset(at=now(), reason=reason.strip(), previous_sha256=previous)],
        )
        self.save(ledger)
        return ledger
