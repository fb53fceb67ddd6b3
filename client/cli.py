"""``mmfl client``: the data site's commands."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from mmfl.client.ledger import LedgerError, LedgerFile, PrivacyLedger
from mmfl.config import SiteConfig, load_config
from mmfl.data.manifest import load_manifest
from mmfl.errors import MmflError

app = typer.Typer(help="The data site's agent and its records (IT at a data site).", no_args_is_help=True)
console = Console()


def _ledgers(state: Path) -> list[tuple[Path, LedgerFile]]:
    folder = state / "privacy"
    if not folder.is_dir():
        raise MmflError(f"{state} holds no privacy ledger (no {folder})")
    out = []
    for path in sorted(folder.glob("ledger-*.json")):
        if ".replaced-" in path.name:
            continue
        raw = LedgerFile.model_validate_json(path.read_text(encoding="utf-8"))
        # Verify through the same code path training uses (checksum, owner).
        verified = PrivacyLedger(state, raw.site_id, raw.data_fingerprint).load()
        assert verified is not None
        out.append((path, verified))
    registered = (
        json.loads((folder / "ledgers.json").read_text()) if (folder / "ledgers.json").exists() else {}
    )
    present = {ledger.data_fingerprint for _, ledger in out}
    missing = [fp for fp in registered if fp not in present]
    if missing:
        raise LedgerError(
            f"privacy ledger for data {missing[0][:16]} is missing from {folder}; the site refuses to train"
        )
    return out


@app.command("ledger")
def ledger_cmd(state: Path = typer.Option(..., "--state", help="the site's state folder")) -> None:
    """Print the site's privacy ledger: epsilon spent after every round, budget, resets."""
    for path, ledger in _ledgers(state):
        spent = PrivacyLedger.spent(ledger)
        table = Table(title=f"{ledger.site_id}: data {ledger.data_fingerprint[:16]} ({path.name})")
        for col in ("run", "round", "sigma", "q", "steps", "epsilon after", "at"):
            table.add_column(col, justify="right")
        for e in ledger.entries:
            table.add_row(
                e.run_id,
                str(e.round),
                f"{e.noise_multiplier:.4f}",
                f"{e.sample_rate:.4f}",
                str(e.steps),
                f"{e.epsilon_after:.4f}",
                e.at,
            )
        console.print(table)
        console.print(
            f"{ledger.unit}-level DP, add/remove adjacency, {ledger.accountant.upper()} accounting at delta = {ledger.delta:g}: "
            f"epsilon spent {spent:.4f} of a budget of {ledger.target_epsilon:g} (remaining {max(0.0, ledger.target_epsilon - spent):.4f}). "
            "This covers every representation and model this site released, not only the last."
        )
        for r in ledger.resets:
            console.print(
                f"reset at {r.at}: {r.reason} (replaced ledger sha256 {r.previous_sha256 or 'none'})"
            )


@app.command("ledger-reset")
def ledger_reset_cmd(
    config: Path = typer.Option(..., "--config", help="the site's configuration (TOML)"),
    reason: str = typer.Option(..., "--reason", help="why the ledger is re-initialised (recorded in it)"),
) -> None:
    """Operator action: re-initialise a missing or corrupt privacy ledger, recording the reason."""
    site = load_config(SiteConfig, config)
    p = site.site.privacy
    fingerprint = load_manifest(site.manifest).fingerprint()
    ledger = PrivacyLedger(site.state_dir, site.site.id, fingerprint).reset(
        reason, p.accountant, p.delta, p.target_epsilon, p.unit
    )
    console.print(f"new ledger for {site.site.id} on data {fingerprint[:16]}: {ledger.resets[0].reason}")
