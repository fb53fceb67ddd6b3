"""The site's privacy ledger: everything its DP-SGD and its releases have spent, across rounds,
runs, restarts and changes of its data, and the budget it enforces.

One ledger per site state folder, under ``STATE/privacy/``:

* ``ledger.json`` (+ ``ledger.sha256``): the current state, for people and for enforcement;
* ``journal.jsonl``: append-only, one hash-chained line per change, each holding the accounting
  state after it (the segments, count releases, carried spend and budget);
* ``ledger.seal``: on a site with a key (every deployed site), its signature over the ledger and
  the journal's head (:mod:`mmfl.client.privacy.seal`), so an edit by hand with the checksum
  recomputed is refused too.

Spent privacy is a composition, at the ledger's ``delta`` (add/remove-one adjacency):

    epsilon = eps_accountant(history) + sum(count releases) + sum(carried)

where ``history`` is the Opacus accountant's ``(sigma, q, steps)`` segments of every DP-SGD step
on this site's data, a count release is the epsilon-DP noisy size of the training set (the only
form in which the site's size ever leaves it), and carried spend comes from a ledger an operator
had to re-initialise. Changes are written journal first (fsync), then the ledger (atomic), then
its checksum; a round is charged before its first step.

Fail closed: a ledger that is missing while the site's records say it existed, that does not
match its checksum, or that disagrees with its journal stops training until an operator runs
``mmfl client ledger-reset``, which recovers the spent history from whatever of the two survives
(the spend is never forgiven) and records the reason.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mmfl.client.privacy.seal import LedgerSeal
from mmfl.errors import MmflError
from mmfl.files import atomic_write_bytes

Segment = tuple[float, float, int]  # (noise multiplier, sample rate, steps)
FORMAT_VERSION = 2


class LedgerError(MmflError):
    """The ledger is missing, corrupt or inconsistent; the site must not train."""


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LedgerEntry(_Record):
    """One DP-SGD round."""

    run_id: str
    round: int
    noise_multiplier: float
    sample_rate: float
    steps: int
    epsilon_after: float
    at: str


class CountRelease(_Record):
    """The noisy number of training units of one data set, released once under ``epsilon``."""

    data: str  # the data set's keyed fingerprint
    epsilon: float
    units: int
    at: str


class CarriedSpend(_Record):
    """Spend taken over from a ledger that could not be recovered in full."""

    epsilon: float
    delta: float
    reason: str
    at: str


class LedgerEvent(_Record):
    at: str
    kind: Literal[
        "created", "budget-lowered", "budget-raised", "reset", "data-changed", "fresh-model", "model-released"
    ]
    detail: str


class AccountingState(_Record):
    """What the budget decisions rest on; the journal holds a copy after every change."""

    accountant: Literal["rdp", "prv"]
    delta: float
    unit: Literal["sample", "group"]
    budget: float
    noise_multiplier: float | None = None
    history: list[list[float]] = Field(default_factory=list)
    count_releases: list[CountRelease] = Field(default_factory=list)
    carried: list[CarriedSpend] = Field(default_factory=list)

    def spent(self) -> float:
        return self.fixed_spent() + epsilon_of(self.history, self.delta, self.accountant)

    def fixed_spent(self) -> float:
        """The part outside the accountant (count releases and carried spend)."""
        return sum(c.epsilon for c in self.carried) + sum(c.epsilon for c in self.count_releases)

    def total_delta(self) -> float:
        return self.delta + sum(c.delta for c in self.carried)


class LedgerFile(AccountingState):
    format_version: int = FORMAT_VERSION
    site_id: str
    adjacency: Literal["add-remove"] = "add-remove"
    seq: int = 0
    data: list[str] = Field(default_factory=list)
    entries: list[LedgerEntry] = Field(default_factory=list)
    events: list[LedgerEvent] = Field(default_factory=list)
    created_at: str

    def accounting(self) -> AccountingState:
        return AccountingState.model_validate(self.model_dump(include=set(AccountingState.model_fields)))

    def statement(self) -> str:
        """The privacy statement a reviewer reads (TF-Privacy's form)."""
        return (
            f"{self.unit}-level DP with add-or-remove-one adjacency: ({self.spent():.4f}, "
            f"{self.total_delta():.3g})-DP for everything this site released from its data "
            f"({self.accountant.upper()} accounting of DP-SGD, plus noisy counts of the training "
            f"set and any carried spend), against a budget of {self.budget:g}. The data set's "
            "size left the site only as an epsilon-DP count."
        )


class JournalLine(_Record):
    seq: int
    prev: str  # sha256 of the previous line, or of the journal this one continues
    at: str
    kind: str
    note: str
    state: AccountingState


def epsilon_of(history: list[Segment] | list[list[float]], delta: float, accountant: str) -> float:
    """Epsilon at ``delta`` after the given (sigma, q, steps) segments (0 when empty)."""
    if not history:
        return 0.0
    from opacus.accountants import create_accountant  # opacus takes seconds to import

    acc = create_accountant(accountant)
    acc.history = [(float(s), float(q), int(n)) for s, q, n in history]
    return float(acc.get_epsilon(delta=delta))


def add_segment(history: list[list[float]], sigma: float, q: float, steps: int) -> list[list[float]]:
    """History plus ``steps`` steps at (sigma, q), merged into the last segment when it has the
    same sigma and q (as Opacus' accountants merge consecutive steps)."""
    out = [list(h) for h in history]
    if steps <= 0:
        return out
    if out and out[-1][0] == sigma and out[-1][1] == q:
        out[-1][2] = int(out[-1][2]) + steps
    else:
        out.append([float(sigma), float(q), int(steps)])
    return out


class PrivacyLedger:
    """The durable files of a site's ledger: load and verify, save, recover."""

    def __init__(self, state_dir: Path, site_id: str, key: Path | None = None) -> None:
        """``key``: the site's private key; when given, every change is sealed with it and a
        ledger without its valid seal is refused."""
        self.dir = Path(state_dir) / "privacy"
        self.site_id = site_id
        self.path = self.dir / "ledger.json"
        self.checksum_path = self.dir / "ledger.sha256"
        self.journal_path = self.dir / "journal.jsonl"
        self.seal_path = self.dir / "ledger.seal"
        self.seal = LedgerSeal(key) if key is not None else None

    def exists(self) -> bool:
        return self.path.exists() or self.journal_path.exists()

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the ledger exclusively (an OS file lock, also between threads): one DP round,
        from planning to commit, or one operator action at a time."""
        self.dir.mkdir(parents=True, exist_ok=True)
        with (self.dir / "ledger.lock").open("a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    # -- reading ---------------------------------------------------------------------------------
    def _journal(self) -> tuple[list[JournalLine], str, str | None]:
        """(valid lines, sha256 of the last valid line, the problem that ended the chain)."""
        if not self.journal_path.exists():
            return [], "", None
        lines: list[JournalLine] = []
        prev = ""
        for number, raw in enumerate(self.journal_path.read_bytes().splitlines(), start=1):
            try:
                line = JournalLine.model_validate_json(raw)
            except ValidationError:
                return lines, prev, f"line {number} is not a journal line"
            if lines and (line.prev != prev or line.seq != lines[-1].seq + 1):
                return lines, prev, f"line {number} breaks the chain"
            lines.append(line)
            prev = hashlib.sha256(raw).hexdigest()
        return lines, prev, None

    def load(self, expected_existing: Callable[[], bool] = lambda: False) -> LedgerFile | None:
        """The verified ledger, or None if this site never spent privacy.

        Raises :class:`LedgerError` when it should exist but does not, does not match its
        checksum or its journal, or belongs to another site.
        """
        legacy = self.dir / "ledgers.json"
        if legacy.exists():
            raise LedgerError(
                f"{legacy} is a ledger of an older mmfl (one per data set); refusing to train until an "
                "operator carries its spend over with `mmfl client ledger-reset --reason ... --spent EPSILON`"
            )
        if not self.path.exists():
            if self.journal_path.exists() or expected_existing():
                raise LedgerError(
                    f"privacy ledger {self.path} is missing although this site spent privacy; refusing to "
                    "train until an operator re-initialises it (mmfl client ledger-reset --reason ...)"
                )
            return None
        data = self.path.read_bytes()
        stored = self.checksum_path.read_text().strip() if self.checksum_path.exists() else None
        if stored != hashlib.sha256(data).hexdigest():
            raise LedgerError(f"privacy ledger {self.path} does not match its checksum; refusing to train")
        try:
            ledger = LedgerFile.model_validate_json(data)
        except ValidationError:
            raise LedgerError(
                f"privacy ledger {self.path} is not a valid ledger; refusing to train"
            ) from None
        if ledger.site_id != self.site_id:
            raise LedgerError(
                f"privacy ledger {self.path} belongs to site {ledger.site_id!r}; refusing to train"
            )
        lines, head, problem = self._journal()
        if self.seal is not None and not problem:
            self._check_seal(ledger.site_id, hashlib.sha256(data).hexdigest(), head)
        if problem or not lines or lines[-1].seq != ledger.seq or lines[-1].state != ledger.accounting():
            where = problem or (
                f"the journal ends at change {lines[-1].seq}" if lines else "the journal is missing"
            )
            raise LedgerError(
                f"privacy ledger {self.path} (change {ledger.seq}) disagrees with its journal: {where}; "
                "refusing to train until an operator runs mmfl client ledger-reset"
            )
        return ledger

    def _check_seal(self, site_id: str, ledger_sha256: str, head: str) -> None:
        assert self.seal is not None
        if not self.seal_path.exists():
            wrong = f"it carries no seal of this site's key {self.seal.fingerprint}"
        else:
            wrong = self.seal.verify(self.seal_path.read_text().strip(), site_id, ledger_sha256, head)
        if wrong:
            raise LedgerError(
                f"privacy ledger {self.path}: {wrong}; refusing to train until an operator runs "
                "mmfl client ledger-reset (the spend is recovered, never forgiven)"
            )

    # -- writing ---------------------------------------------------------------------------------
    def _write(self, ledger: LedgerFile, kind: str, note: str, prev: str, append: bool) -> LedgerFile:
        """Journal line (appended, or as a new journal), then ledger, then checksum, each
        fsynced; returns the saved ledger."""
        saved = ledger.model_copy(update={"seq": ledger.seq + 1})
        line = JournalLine(seq=saved.seq, prev=prev, at=now(), kind=kind, note=note, state=saved.accounting())
        raw = line.model_dump_json().encode() + b"\n"
        if append:
            with self.journal_path.open("ab") as fh:
                fh.write(raw)
                fh.flush()
                os.fsync(fh.fileno())
        else:
            atomic_write_bytes(self.journal_path, raw)
        data = saved.model_dump_json(indent=2).encode("utf-8")
        digest = hashlib.sha256(data).hexdigest()
        if self.seal is not None:
            # Sealed before the ledger is replaced: a crash between leaves the old ledger with a
            # seal that no longer matches it, which fails closed like a checksum mismatch.
            head = hashlib.sha256(raw.rstrip(b"\n")).hexdigest()
            atomic_write_bytes(self.seal_path, (self.seal.sign(saved.site_id, digest, head) + "\n").encode())
        atomic_write_bytes(self.path, data)
        atomic_write_bytes(self.checksum_path, (digest + "\n").encode())
        return saved

    def save(self, ledger: LedgerFile, kind: str, note: str) -> LedgerFile:
        """Record a change of a verified ledger; durable on return."""
        _, prev, problem = self._journal()
        if problem:
            raise LedgerError(f"privacy journal {self.journal_path}: {problem}; refusing to record")
        return self._write(ledger, kind, note, prev, append=True)

    def create(self, state: AccountingState, note: str) -> LedgerFile:
        ledger = LedgerFile(
            site_id=self.site_id,
            created_at=now(),
            events=[LedgerEvent(at=now(), kind="created", detail=note)],
            **state.model_dump(),
        )
        return self._write(ledger, "created", note, "", append=False)

    # -- recovery --------------------------------------------------------------------------------
    def recover(self) -> tuple[LedgerFile | None, AccountingState | None, int, str]:
        """What survives of a broken ledger: (the ledger file if it still parses, the journal's
        last valid state, the highest change number seen, the sha256 of the last valid journal
        line). Nothing here is trusted more than the other: the caller keeps the larger spend."""
        parsed = None
        if self.path.exists():
            try:
                parsed = LedgerFile.model_validate_json(self.path.read_bytes())
            except ValidationError:
                parsed = None
        lines, prev, _ = self._journal()
        state = lines[-1].state if lines else None
        seq = max([parsed.seq if parsed else 0, lines[-1].seq if lines else 0])
        return parsed, state, seq, prev

    def set_aside(self) -> None:
        """Copy the current files to ``*.replaced-TIME`` (kept for review, never read again)."""
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
        for path in (
            self.path,
            self.checksum_path,
            self.seal_path,
            self.journal_path,
            self.dir / "ledgers.json",
        ):
            if path.exists():
                shutil.copy2(path, path.with_name(f"{path.name}.replaced-{stamp}"))
        (self.dir / "ledgers.json").unlink(missing_ok=True)

    def restart(self, ledger: LedgerFile, prev: str, note: str) -> LedgerFile:
        """Keep copies of the old files, then replace them with ``ledger`` as the first change of a
        new journal whose first line points at ``prev``, the last valid line of the old one. Each
        file is replaced atomically, so a crash leaves old or new files (or a mix that fails
        closed), never none."""
        self.set_aside()
        return self._write(ledger, "reset", note, prev, append=False)

    def read_anyway(self) -> LedgerFile | None:
        """The ledger as it is on disk, unverified (for ``mmfl client ledger`` to show a broken one)."""
        try:
            return LedgerFile.model_validate_json(self.path.read_bytes())
        except (OSError, ValidationError):
            return None
