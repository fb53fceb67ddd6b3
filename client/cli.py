"""``mmfl client``: the data site's commands."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from mmfl import terminal
from mmfl.client.agent import (
    LAUNCHERS,
    Agent,
    stop_process_group,
    supernode_of,
    validate_inputs,
    write_site_config,
)
from mmfl.client.privacy import audit
from mmfl.client.privacy.ledger import LedgerError, PrivacyLedger
from mmfl.config import DEFAULT_ARCHITECTURES, SiteConfig, load_config
from mmfl.errors import MmflError
from mmfl.processes import running

if TYPE_CHECKING:  # imported where used: it pulls in torch, which `mmfl --help` does not need
    from mmfl.client.privacy.budget import PrivacyBudget

app = typer.Typer(help="The data site's agent and its records (IT at a data site).", no_args_is_help=True)
console = terminal.console()


def _site_budget(config: Path) -> tuple[SiteConfig, PrivacyBudget]:
    from mmfl.client.privacy.budget import PrivacyBudget

    site = load_config(SiteConfig, config)
    return site, PrivacyBudget(site.state_dir, site.site.id, site.site.privacy, site.ledger_key)


policy_app = typer.Typer(
    help="The site's own policy: what no coordinator can ask of it.", no_args_is_help=True
)
app.add_typer(policy_app, name="policy")


@policy_app.command("show")
def policy_show_cmd(
    state: Path | None = typer.Option(None, "--state", help="a started site's state folder (its site.toml)"),
    config: Path | None = typer.Option(None, "--config", help="a site configuration (TOML)"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Print the policy this site enforces, every key with its value (defaults included)."""
    from mmfl.config import SitePolicy

    if (state is None) == (config is None):
        raise MmflError("give either --state (a started site) or --config (a site configuration)")
    path = config if config is not None else state / "site.toml"  # type: ignore[operator]
    if not path.is_file():
        raise MmflError(f"{path} does not exist" + (" (start the site first)" if config is None else ""))
    policy = load_config(SiteConfig, path).site.policy
    if as_json:
        print(policy.model_dump_json(indent=2))
        return
    table = Table(title=f"site policy ({path})")
    for col in ("key", "value", "meaning"):
        table.add_column(col)
    for name, field in SitePolicy.model_fields.items():
        value = getattr(policy, name)
        shown = (
            ", ".join(value)
            if isinstance(value, list)
            else str(value).lower()
            if isinstance(value, bool)
            else str(value)
        )
        table.add_row(name, shown, field.description or "")
    console.print(table)


@app.command("ledger")
def ledger_cmd(state: Path = typer.Option(..., "--state", help="the site's state folder")) -> None:
    """Print the site's privacy ledger: every round, count release, budget change and reset."""
    files = PrivacyLedger(state, "")
    raw = files.read_anyway()
    if raw is None:
        if files.exists():
            raise LedgerError(
                f"privacy ledger {files.path} is missing or unreadable; the site refuses to train"
            )
        raise MmflError(f"{state} holds no privacy ledger (this site never used DP)")
    site_toml = state / "site.toml"
    key = load_config(SiteConfig, site_toml).ledger_key if site_toml.exists() else None
    ledger = PrivacyLedger(state, raw.site_id, key).load()  # verified as training verifies it
    assert ledger is not None
    spent = ledger.spent()
    table = Table(title=f"{ledger.site_id}: privacy ledger ({files.path})")
    for col in ("run", "round", "sigma", "q", "steps", "epsilon after", "at"):
        table.add_column(col, justify="right")
    for e in ledger.entries:
        table.add_row(
            e.run_id, str(e.round), f"{e.noise_multiplier:.4f}", f"{e.sample_rate:.4f}", str(e.steps),
            f"{e.epsilon_after:.4f}", e.at,
        )  # fmt: skip
    console.print(table)
    for c in ledger.count_releases:
        console.print(
            f"count release {c.at}: data {c.data[:16]} has ≈{c.units} units (epsilon {c.epsilon:g})"
        )
    for c in ledger.carried:
        console.print(f"carried spend {c.at}: epsilon {c.epsilon:.4f}, delta {c.delta:g}: {c.reason}")
    for ev in ledger.events:
        console.print(f"{ev.kind} {ev.at}: {ev.detail}")
    console.print(
        f"{ledger.statement()} Remaining: {max(0.0, ledger.budget - spent):.4f}. "
        "This covers every representation and model this site released, not only the last."
    )


@app.command("ledger-reset")
def ledger_reset_cmd(
    config: Path = typer.Option(
        ..., "--config", help="the site's configuration (TOML, e.g. STATE/site.toml)"
    ),
    reason: str = typer.Option(..., "--reason", help="why the ledger is re-initialised (recorded in it)"),
    spent: float | None = typer.Option(
        None, "--spent", help="epsilon already spent, when neither the ledger nor its journal survives"
    ),
) -> None:
    """Operator action: re-initialise a missing or corrupt privacy ledger. The spent history is
    recovered from what survives (the larger spend wins) and never forgiven; the reason is kept."""
    site, budget = _site_budget(config)
    ledger = budget.reset(reason, spent)
    console.print(
        f"ledger of {site.site.id} re-initialised: epsilon spent {ledger.spent():.4f} of {ledger.budget:g} "
        f"({ledger.events[-1].detail})"
    )


@app.command("ledger-raise")
def ledger_raise_cmd(
    config: Path = typer.Option(
        ..., "--config", help="the site's configuration (TOML, e.g. STATE/site.toml)"
    ),
    to: float = typer.Option(..., "--to", help="the new lifetime budget (epsilon)"),
    reason: str = typer.Option(..., "--reason", help="who decided and why (recorded in the ledger)"),
) -> None:
    """Operator action: raise the site's lifetime privacy budget, recording the reason."""
    site, budget = _site_budget(config)
    ledger = budget.raise_budget(to, reason)
    console.print(f"budget of {site.site.id} is now {ledger.budget:g} (spent {ledger.spent():.4f})")


@app.command("keygen")
def keygen_cmd(
    out: Path = typer.Option(Path("."), "--out", help="folder for the key pair"),
    name: str = typer.Option("site", "--name", help="file name of the private key (NAME.pub is public)"),
) -> None:
    """Create the site's SuperNode key pair; send NAME.pub to the coordinator's operator."""
    from mmfl.pki import create_site_keys, key_fingerprint

    private, public = create_site_keys(out, name)
    console.print(
        f"private key {private} (keep it on this machine); public key {public} ({key_fingerprint(public.read_bytes())})"
    )


def resolve_public_pool(public: Path, option: str | None) -> Path | None:
    """The unpaired pool a site holds after its public set: none (the default, as a coordinator's
    spec has ``public_pool = false``), ``beside`` (``pool.jsonl`` next to the public manifest, as
    a prepared data set ships it) or a path."""
    if option is None or option.lower() == "none":
        return None
    pool = public.parent / "pool.jsonl" if option.lower() == "beside" else Path(option)
    if not pool.is_file():
        raise MmflError(f"--public-pool {option}: {pool} does not exist")
    return pool.resolve()


@app.command("start")
def start_cmd(
    server: str = typer.Option(..., "--server", help="the coordinator's public HOST:PORT"),
    data: Path = typer.Option(..., "--data", help="this site's manifest (CSV or JSONL)"),
    public: Path = typer.Option(..., "--public", help="the public set's manifest (dataset.json beside it)"),
    state: Path = typer.Option(..., "--state", help="the site's state folder (models, ledger, audit log)"),
    data_root: Path | None = typer.Option(
        None, "--data-root", help="this site's files must lie below it (default: the manifest's folder)"
    ),
    public_root: Path | None = typer.Option(
        None, "--public-root", help="public-set files must lie below it (default: its manifest's folder)"
    ),
    public_pool: str | None = typer.Option(
        None,
        "--public-pool",
        help="the unpaired public pool's manifest, when the coordinator's run uses one (its spec "
        "says public_pool = true): a path, or 'beside' for pool.jsonl next to --public (default: none)",
    ),
    ca: Path = typer.Option(..., "--ca", help="the federation CA certificate"),
    key: Path = typer.Option(..., "--key", help="this site's private key (mmfl client keygen)"),
    config: Path | None = typer.Option(None, "--config", help="site settings (TOML: site, train, ...)"),
    site_id: str | None = typer.Option(None, "--id", help="site name (default: the key's file name)"),
    arch: list[str] | None = typer.Option(None, "--arch", help="MODALITY=ARCHITECTURE (repeatable)"),
    epsilon: float | None = typer.Option(None, "--epsilon", help="turn on DP-SGD with this lifetime budget"),
    delta: float = typer.Option(1e-5, "--delta"),
    max_grad_norm: float = typer.Option(1.0, "--max-grad-norm"),
    threads: int | None = typer.Option(
        None, "--threads", help="torch threads for the site's training (default: torch's, one per core)"
    ),
    launcher: str = typer.Option(
        "warm",
        "--launcher",
        help="warm: fork each message's ClientApp from a process with everything imported; "
        "flower: Flower's own launcher, a fresh process per message",
    ),
    privacy_unit: str = typer.Option("sample", "--privacy-unit", help="sample or group (e.g. per patient)"),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda[:N]"),
    foreground: bool = typer.Option(False, "--foreground", help="stay attached (systemd)"),
) -> None:
    """Validate the data and the public set, then join the federation (and stay joined)."""
    for path, what in ((ca, "CA certificate"), (key, "private key")):
        if not path.is_file():
            raise MmflError(f"{what} {path} does not exist")
    base = {
        "manifest": str(data.resolve()),
        "public_manifest": str(public.resolve()),
        "state_dir": str(state.resolve()),
        "ledger_key": str(key.resolve()),
    }
    if threads is not None:
        base["threads"] = threads
    pool = resolve_public_pool(public, public_pool)
    if pool is not None:
        base["public_pool"] = str(pool)
    for key_name, root in (("data_root", data_root), ("public_root", public_root)):
        if root is not None:
            base[key_name] = str(root.resolve())
    overrides: list[str] = []
    if config is None:
        from mmfl.data.manifest import load_manifest

        held = [m for m in load_manifest(data).modalities]
        chosen = dict(DEFAULT_ARCHITECTURES)
        for item in arch or []:
            if "=" not in item:
                raise MmflError(f"--arch {item!r} is not MODALITY=ARCHITECTURE")
            m, a = item.split("=", 1)
            chosen[m.strip()] = a.strip()
        base["site"] = {
            "id": site_id or key.stem,
            "modalities": held,
            "architectures": {m: chosen[m] for m in held},
            "device": device,
        }
    if epsilon is not None:
        overrides += [
            "site.privacy.enabled=true",
            f"site.privacy.target_epsilon={epsilon}",
            f"site.privacy.delta={delta}",
            f"site.privacy.max_grad_norm={max_grad_norm}",
            f'site.privacy.unit="{privacy_unit}"',
        ]
    site = load_config(SiteConfig, config, overrides, base=base)
    from mmfl.models.encoders import architecture

    for m, a in site.site.architectures.items():
        try:
            architecture(a, m)
        except ValueError as exc:
            raise MmflError(str(exc)) from None
    console.print(f"site {site.site.id}: " + validate_inputs(site))
    if site.site.policy.release_final_model and not site.site.privacy.enabled:
        console.print(
            f"site {site.site.id}: policy.release_final_model is true WITHOUT DP: at the end of each run "
            "this site's final model weights leave it (its audit log records each release)"
        )
    if site.site.privacy.enabled:
        from mmfl.client.privacy.budget import PrivacyBudget

        budget = PrivacyBudget(site.state_dir, site.site.id, site.site.privacy, site.ledger_key)
        budget.check_configuration(budget.load())
    config_path = write_site_config(site)
    if launcher not in LAUNCHERS:
        raise MmflError(f"--launcher {launcher!r} is not one of {', '.join(LAUNCHERS)}")
    server_args = [
        "--server",
        server,
        "--ca",
        str(ca.resolve()),
        "--key",
        str(key.resolve()),
        "--launcher",
        launcher,
    ]
    if foreground:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        Agent(config_path, server, ca.resolve(), key.resolve(), launcher).run()
        return
    if _agent_pid(site.state_dir):
        raise MmflError(f"an agent already runs for {site.state_dir}")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mmfl.cli", "client", "run-agent", str(config_path), *server_args],
        stdout=(site.state_dir / "agent.log").open("ab"),
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    console.print(f"agent pid {proc.pid}; logs in {site.state_dir}")


@app.command("run-agent", hidden=True)
def run_agent(
    config_path: Path,
    server: str = typer.Option(...),
    ca: Path = typer.Option(...),
    key: Path = typer.Option(...),
    launcher: str = typer.Option("warm"),
) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    Agent(config_path, server, ca, key, launcher).run()


def _agent_pid(state: Path) -> int | None:
    try:
        pid = int((state / "agent.pid").read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    # a killed agent left as a zombie, or its pid reused by another program, is not an agent
    return pid if running(pid) and b"mmfl" in cmdline else None


@app.command("stop")
def stop_cmd(state: Path = typer.Option(..., "--state")) -> None:
    """Stop the site agent (and its SuperNode)."""
    pid = _agent_pid(state)
    if pid is None:
        orphan = supernode_of(state)
        if orphan is None:
            raise MmflError(f"no agent runs for {state}")
        stop_process_group(orphan)
        console.print(f"no agent ran; stopped the SuperNode (pid {orphan}) it left behind")
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while _agent_pid(state) == pid and time.monotonic() < deadline:
        time.sleep(0.2)
    console.print("stopped")


@app.command("audit")
def audit_cmd(
    state: Path = typer.Option(..., "--state"), as_json: bool = typer.Option(False, "--json")
) -> None:
    """Print the log of every message that left this site."""
    entries = audit.read(state)
    if as_json:
        print(json.dumps([e.model_dump() for e in entries], indent=2))
        return
    table = Table(title=f"messages that left {state}")
    for col in (
        "time",
        "run",
        "round",
        "type",
        "status",
        "modalities",
        "shapes",
        "bytes",
        "sha256",
        "epsilon",
        "note",
    ):
        table.add_column(col)
    for e in entries:
        shapes = ", ".join(f"{k} {'x'.join(map(str, v))}" for k, v in e.shapes.items())
        table.add_row(
            e.time,
            e.run_id,
            str(e.round),
            e.message_type,
            e.status,
            ",".join(e.modalities),
            shapes,
            str(e.bytes),
            e.sha256[:16],
            "—" if e.epsilon_after is None else f"{e.epsilon_after:.3f}",
            e.note,
        )
    console.print(table)
    total = audit.summary(entries)
    console.print(f"{total['messages']} messages, {total['bytes']} bytes, runs: {', '.join(total['runs'])}")
