"""The site's privacy budget: the one place that decides whether the site may spend privacy,
knows what it has spent, and keeps the durable ledger (:mod:`mmfl.client.privacy.ledger`) current.

Policy:

* The budget lives in the ledger. The site's configuration may lower it (recorded); raising it
  needs an explicit operator action with a reason (:meth:`PrivacyBudget.raise_budget`,
  ``mmfl client ledger-raise``); a configuration asking for more is refused, never obeyed.
* The size of a training set leaves the site once per data set, as a discrete-Laplace count
  with ``count_epsilon`` (charged to the budget). The sampling rate ``q = B / N~`` and the
  steps per epoch ``round(N~ / B)`` derive from that noisy count, never from the exact one.
* Before a round, the epsilon after it is projected exactly (the accountant on the history
  plus the round's segment); a round that would exceed the budget is refused with the numbers.
  That projection is the round's epsilon: computed once, committed after training.
* ``sigma`` is fixed at the first DP round: as configured, or the smallest that keeps
  ``planned_rounds`` such rounds within what the budget has left.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

from mmfl.client.privacy.audit import largest_epsilon
from mmfl.client.privacy.ledger import (
    AccountingState,
    CarriedSpend,
    CountRelease,
    LedgerEntry,
    LedgerError,
    LedgerEvent,
    LedgerFile,
    PrivacyLedger,
    add_segment,
    epsilon_of,
    now,
)
from mmfl.client.privacy.secure_random import SecureRandom
from mmfl.client.state import SiteState
from mmfl.config import PrivacyConfig
from mmfl.errors import MmflError
from mmfl.protocols.messages import PrivacyStatus

MAX_NOISE_MULTIPLIER = 1000.0


class PrivacyRefusal(MmflError):
    """The site will not spend privacy on this; the message holds only public numbers."""


@dataclass(frozen=True)
class RoundPlan:
    """A DP-SGD round the budget allows: its mechanism and the epsilon after it."""

    noise_multiplier: float
    sample_rate: float
    steps: int
    units: int  # the noisy number of training units (samples, or groups)
    epsilon_after: float


def plan_noise(
    history: list[list[float]],
    fixed: float,
    budget: float,
    sample_rate: float,
    steps: int,
    delta: float,
    accountant: str,
    tolerance: float = 0.01,
) -> float:
    """The smallest sigma (within ``tolerance`` in epsilon) with which ``steps`` more steps at
    ``sample_rate`` keep ``fixed + eps(history + steps)`` within ``budget``."""
    if steps <= 0:
        raise ValueError("noise is planned for at least one step")
    target = budget - fixed

    def eps(sigma: float) -> float:
        with warnings.catch_warnings():  # the search visits sigmas whose optimal RDP order is the largest
            warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
            return epsilon_of(add_segment(history, sigma, sample_rate, steps), delta, accountant)

    if target <= 0 or eps(MAX_NOISE_MULTIPLIER) > target:
        raise PrivacyRefusal(
            f"privacy budget: target epsilon {budget:.3f} leaves {max(target, 0.0):.3f} after what is "
            f"spent, too little for {steps} planned steps at any noise multiplier up to {MAX_NOISE_MULTIPLIER:g}"
        )
    low, high = 0.0, 10.0
    while eps(high) > target:
        low, high = high, 2 * high
    while target - eps(high) > tolerance:
        mid = (low + high) / 2
        if eps(mid) > target:
            low = mid
        else:
            high = mid
    return high


class PrivacyBudget:
    """Budget policy over a site's ledger (see the module docstring)."""

    def __init__(
        self,
        state_dir: Path,
        site_id: str,
        config: PrivacyConfig,
        key: Path | None = None,
    ) -> None:
        self.config = config
        self.state_dir = Path(state_dir)
        self.files = PrivacyLedger(state_dir, site_id, key)
        self._spent: tuple[int, float] | None = None

    def exclusive(self):  # noqa: ANN201 - a context manager
        """One DP round (plan to commit) or operator action at a time on this ledger."""
        return self.files.lock()

    # -- reading -------------------------------------------------------------------------------
    def _reported(self) -> float | None:
        """What the site's other records say it spent: the largest epsilon its audit log shows
        it released with (0 if only its model snapshot says it trained with DP), None if they
        show no spend."""
        eps = largest_epsilon(self.state_dir)
        if eps is None and SiteState(self.state_dir).trained_with_dp():
            return 0.0
        return eps

    def load(self) -> LedgerFile | None:
        return self.files.load(expected_existing=lambda: self._reported() is not None)

    def spent(self, ledger: LedgerFile) -> float:
        """Epsilon spent, computed once per change of the ledger."""
        if self._spent is None or self._spent[0] != ledger.seq:
            self._spent = (ledger.seq, ledger.spent())
        return self._spent[1]

    def status(self, data_key: str | None = None) -> PrivacyStatus:
        """What the site declares. An unverifiable ledger is *locked*: its spend is unknown, so
        none is declared (declaring the whole budget would be recorded, and later taken for a
        real spend); the site refuses to train until an operator recovers it."""
        p = self.config
        if not p.enabled:
            return PrivacyStatus(enabled=False)
        try:
            ledger = self.load()
        except LedgerError:
            return PrivacyStatus(
                enabled=True, unit=p.unit, target_epsilon=p.target_epsilon, delta=p.delta,
                epsilon_spent=None, ledger_locked=True, noise_multiplier=p.noise_multiplier,
            )  # fmt: skip
        if ledger is None:
            return PrivacyStatus(
                enabled=True, unit=p.unit, target_epsilon=p.target_epsilon, delta=p.delta,
                noise_multiplier=p.noise_multiplier,
            )  # fmt: skip
        return PrivacyStatus(
            enabled=True,
            unit=ledger.unit,
            target_epsilon=ledger.budget,
            delta=ledger.total_delta(),
            epsilon_spent=self.spent(ledger),
            noise_multiplier=ledger.noise_multiplier or p.noise_multiplier,
            noisy_units=self.noisy_units(ledger, data_key) if data_key else None,
        )

    @staticmethod
    def noisy_units(ledger: LedgerFile, data_key: str) -> int | None:
        found = [c.units for c in ledger.count_releases if c.data == data_key]
        return found[-1] if found else None

    # -- opening for a round -----------------------------------------------------------------------
    def open(self, data_key: str, units: int) -> LedgerFile:
        """The verified ledger, ready for training on data ``data_key`` of ``units`` training
        units: created on first use, the budget reconciled with the configuration, the data's
        size released once as a noisy count. Raises :class:`LedgerError` or
        :class:`PrivacyRefusal`."""
        p = self.config
        ledger = self.load()
        if ledger is None:
            state = AccountingState(
                accountant=p.accountant, delta=p.delta, unit=p.unit, budget=p.target_epsilon
            )
            ledger = self.files.create(state, f"budget {p.target_epsilon:g} at delta {p.delta:g}")
        self.check_configuration(ledger)
        if p.target_epsilon < ledger.budget:
            ledger = self._change(
                ledger,
                "budget-lowered",
                f"budget lowered from {ledger.budget:g} to {p.target_epsilon:g} by the site configuration",
                budget=p.target_epsilon,
            )
        if self.noisy_units(ledger, data_key) is None:
            if self.spent(ledger) + p.count_epsilon > ledger.budget * (1 + 1e-9):
                raise PrivacyRefusal(
                    f"privacy budget: target epsilon {ledger.budget:.3f}, spent {self.spent(ledger):.3f}: "
                    f"no room for the count of new data (epsilon {p.count_epsilon:g})"
                )
            if ledger.data and data_key not in ledger.data:
                ledger = self._change(
                    ledger, "data-changed", f"new data {data_key[:16]}: spending continues on the same budget"
                )
            release = CountRelease(
                data=data_key,
                epsilon=p.count_epsilon,
                units=SecureRandom().noisy_count(units, p.count_epsilon),
                at=now(),
            )
            updated = ledger.model_copy(
                update={
                    "count_releases": [*ledger.count_releases, release],
                    "data": [*ledger.data, data_key] if data_key not in ledger.data else ledger.data,
                }
            )
            ledger = self.files.save(
                updated, "count", f"noisy size of data {data_key[:16]} (epsilon {p.count_epsilon:g})"
            )
        return ledger

    def check_configuration(self, ledger: LedgerFile | None) -> None:
        """Refuse a configuration that asks for more than the ledger allows or changes its
        settings (a ledger keeps the accountant, delta and unit it started with)."""
        if ledger is None:
            return
        p = self.config
        for key, mine, theirs in (
            ("accountant", ledger.accountant, p.accountant),
            ("delta", ledger.delta, p.delta),
            ("unit", ledger.unit, p.unit),
        ):
            if mine != theirs:
                raise PrivacyRefusal(
                    f"privacy.{key} is {theirs} in the site configuration but {mine} in its ledger; "
                    "a ledger keeps the settings it started with"
                )
        if p.target_epsilon > ledger.budget * (1 + 1e-12):
            raise PrivacyRefusal(
                f"the site configuration asks for a privacy budget of {p.target_epsilon:g} but the ledger's is "
                f"{ledger.budget:g}; raising it needs `mmfl client ledger-raise --to {p.target_epsilon:g} --reason ...`"
            )

    def _change(self, ledger: LedgerFile, kind: str, detail: str, **update: object) -> LedgerFile:
        event = LedgerEvent(at=now(), kind=kind, detail=detail)  # type: ignore[arg-type]
        return self.files.save(
            ledger.model_copy(update={**update, "events": [*ledger.events, event]}), kind, detail
        )

    def note(self, ledger: LedgerFile, kind: str, detail: str) -> LedgerFile:
        """Record something a reviewer must see (e.g. a DP model started afresh)."""
        return self._change(ledger, kind, detail)

    # -- a round -------------------------------------------------------------------------------------
    def plan(self, ledger: LedgerFile, data_key: str, batch_size: int, local_epochs: int) -> RoundPlan:
        """The round's mechanism, or :class:`PrivacyRefusal` if it would exceed the budget."""
        units = self.noisy_units(ledger, data_key)
        if units is None:
            raise LedgerError(f"the ledger holds no count release for data {data_key[:16]}")
        q = min(1.0, batch_size / units)
        steps = local_epochs * max(1, round(1.0 / q))
        spent = self.spent(ledger)
        if steps == 0:  # nothing trains, nothing is spent: the reply is post-processing
            return RoundPlan(ledger.noise_multiplier or 0.0, q, 0, units, spent)
        sigma = ledger.noise_multiplier or self.config.noise_multiplier
        if sigma is None:
            sigma = plan_noise(
                ledger.history,
                ledger.fixed_spent(),
                ledger.budget,
                q,
                self.config.planned_rounds * steps,
                ledger.delta,
                ledger.accountant,
            )
        after = ledger.fixed_spent() + epsilon_of(
            add_segment(ledger.history, sigma, q, steps), ledger.delta, ledger.accountant
        )
        if after > ledger.budget * (1 + 1e-9):
            raise PrivacyRefusal(
                f"privacy budget: target epsilon {ledger.budget:.3f}, spent {spent:.3f}, "
                f"this round would reach {after:.3f}"
            )
        return RoundPlan(sigma, q, steps, units, after)

    def commit(self, ledger: LedgerFile, plan: RoundPlan, run_id: str, round_: int) -> LedgerFile:
        """Charge a round; durable on return. Called before the round's first step: the charge is
        never given back, since a round that fails midway has still touched the data."""
        if plan.steps == 0:
            return ledger
        entry = LedgerEntry(
            run_id=run_id,
            round=round_,
            noise_multiplier=plan.noise_multiplier,
            sample_rate=plan.sample_rate,
            steps=plan.steps,
            epsilon_after=plan.epsilon_after,
            at=now(),
        )
        updated = ledger.model_copy(
            update={
                "history": add_segment(ledger.history, plan.noise_multiplier, plan.sample_rate, plan.steps),
                "noise_multiplier": plan.noise_multiplier,
                "entries": [*ledger.entries, entry],
            }
        )
        saved = self.files.save(updated, "round", f"run {run_id} round {round_}: {plan.steps} steps")
        self._spent = (saved.seq, plan.epsilon_after)
        return saved

    # -- operator actions ---------------------------------------------------------------------------
    def raise_budget(self, to: float, reason: str) -> LedgerFile:
        """Raise the lifetime budget; explicit, with a reason that the ledger keeps."""
        if not reason.strip():
            raise MmflError("raising a privacy budget needs a reason")
        with self.exclusive():
            ledger = self.load()
            if ledger is None:
                raise MmflError("this site has no privacy ledger yet; its first DP round creates one")
            if to <= ledger.budget:
                raise MmflError(f"the budget is {ledger.budget:g} already; {to:g} would not raise it")
            detail = f"budget raised from {ledger.budget:g} to {to:g}: {reason.strip()}"
            return self._change(ledger, "budget-raised", detail, budget=to)

    def reset(self, reason: str, spent_floor: float | None = None) -> LedgerFile:
        """Re-initialise a broken ledger: keep the larger spend of what survives (the ledger file
        if it still parses, the journal's last valid state; never below what the audit log
        reported), the smallest budget of those and the configuration, and record the reason.
        When nothing survives but the site did spend privacy, the operator must state the spend
        (``spent_floor``), which is carried over."""
        if not reason.strip():
            raise MmflError("a ledger reset needs a reason")
        with self.exclusive():
            p = self.config
            parsed, journal_state, seq, prev = self.files.recover()
            candidates = [
                s for s in (parsed.accounting() if parsed else None, journal_state) if s is not None
            ]
            recovered = max(candidates, key=lambda s: s.spent(), default=None)
            reported = self._reported()
            if recovered is None and spent_floor is None and (self.files.exists() or reported is not None):
                known = f" (its audit log shows at least {reported:.4f})" if reported else ""
                raise MmflError(
                    "nothing of the spent privacy could be recovered (ledger and journal are gone or unreadable); "
                    f"state what this site has spent{known} with --spent EPSILON"
                )
            state = recovered or AccountingState(
                accountant=p.accountant, delta=p.delta, unit=p.unit, budget=p.target_epsilon
            )
            # The budget never comes out of a reset higher than any surviving record or the configuration.
            budget = min([c.budget for c in candidates] + [p.target_epsilon])
            recovered_spent = state.spent()
            floor = max(spent_floor or 0.0, reported or 0.0)
            carried = list(state.carried)
            if floor > recovered_spent:
                source = (
                    "stated by the operator" if floor == spent_floor else "reported in the site's audit log"
                )
                carried.append(
                    CarriedSpend(
                        epsilon=floor - recovered_spent,
                        delta=state.delta,
                        reason=f"{source} at reset: {reason.strip()}",
                        at=now(),
                    )
                )
            detail = f"{reason.strip()} (recovered spend {recovered_spent:.4f}"
            detail += f", stated {spent_floor:g}" if spent_floor is not None else ""
            detail += f", audit log {reported:.4f}" if reported is not None else ""
            detail += f"; budget {budget:g})"
            events = list(parsed.events) if parsed else []
            ledger = LedgerFile(
                site_id=self.files.site_id,
                created_at=parsed.created_at if parsed else now(),
                seq=seq,
                data=list(parsed.data) if parsed else [c.data for c in state.count_releases],
                entries=list(parsed.entries) if parsed else [],
                events=[*events, LedgerEvent(at=now(), kind="reset", detail=detail)],
                **state.model_copy(update={"carried": carried, "budget": budget}).model_dump(),
            )
            return self.files.restart(ledger, prev, detail)
