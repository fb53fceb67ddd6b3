"""``mmfl server``: the operator's commands."""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import asdict
from datetime import UTC, datetime
from importlib.resources import files
from pathlib import Path

import typer
from rich.table import Table

from mmfl import terminal
from mmfl.config import SITE_ID_PATTERN, DaemonConfig, FederationSpec, RunPlan, load_config
from mmfl.data.builtin import open_dataset
from mmfl.errors import MmflError
from mmfl.files import atomic_write_text
from mmfl.pki import key_fingerprint, load_site_public_key
from mmfl.server.console.cli import console_cmd
from mmfl.server.daemon import (
    CONNECTION,
    ServerLayout,
    Supervisor,
    daemon_pid,
    flwr,
    init_server,
    registered_sites,
    reload_daemon,
    start_detached,
    stop_daemon,
)
from mmfl.server.runs_cli import read_store
from mmfl.server.store import RunStore, open_store

app = typer.Typer(help="The coordinator daemon and its runs (operators).", no_args_is_help=True)
run_app = typer.Typer(help="Submit and inspect runs.", no_args_is_help=True)
app.add_typer(run_app, name="run")
app.command("console")(console_cmd)
console = terminal.console()
DirOpt = typer.Option(Path("."), "--dir", help="the server folder")


@app.command("init")
def init_cmd(
    dir_: Path = DirOpt,
    name: list[str] = typer.Option(["localhost"], "--name", help="DNS name of the coordinator (repeatable)"),
    ip: list[str] = typer.Option(["127.0.0.1"], "--ip", help="IP address of the coordinator (repeatable)"),
    public_host: str = typer.Option("0.0.0.0", "--public-host", help="where nginx listens"),
    public_port: int = typer.Option(8443, "--public-port"),
    superlink_port: int = typer.Option(9092, "--superlink-port", help="SuperLink port on 127.0.0.1"),
    store: str | None = typer.Option(None, "--store", help="run store URL (default: SQLite in the folder)"),
    force: bool = typer.Option(False, "--force"),
) -> None:
    """Create the CA, the coordinator's certificates and server.toml."""
    config = DaemonConfig(
        public_host=public_host,
        public_port=public_port,
        superlink_port=superlink_port,
        names=name,
        ips=ip,
        store_url=store,
    )
    layout = init_server(dir_, config, force)
    open_store(layout.store())  # the store is born here; read commands never create one
    console.print(
        f"server folder {layout.root}: give sites {layout.tls / 'ca.crt'} and the address {name[0]}:{public_port}"
    )


@app.command("start")
def start_cmd(
    dir_: Path = DirOpt,
    foreground: bool = typer.Option(False, "--foreground", help="stay attached (systemd)"),
) -> None:
    """Start the daemon: SuperLink on loopback (TLS, SuperNode auth) behind nginx (Fleet API only)."""
    layout = ServerLayout(dir_.resolve())
    layout.config()
    if foreground:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        Supervisor(layout).run()
        return
    pid = start_detached(layout)
    console.print(f"daemon pid {pid}; logs in {layout.logs}")


@app.command("stop")
def stop_cmd(dir_: Path = DirOpt) -> None:
    """Stop the daemon (SuperLink and nginx with it)."""
    if not stop_daemon(ServerLayout(dir_.resolve())):
        raise MmflError(f"no daemon runs for {dir_}")
    console.print("stopped")


@app.command("reload")
def reload_cmd(dir_: Path = DirOpt) -> None:
    """Apply an edited server.toml's proxy settings (e.g. max_body_size) without a restart:
    nginx reloads in place, the SuperLink and the sites' connections stay up."""
    verdict = reload_daemon(ServerLayout(dir_.resolve()))
    if not verdict["ok"]:
        raise MmflError(f"reload refused: {verdict['message']}")
    console.print("reloaded")


@app.command("register-site")
def register_site(name: str, pubkey: Path, dir_: Path = DirOpt) -> None:
    """Allow the site with this public key (from `mmfl client keygen`) to connect."""
    layout = ServerLayout(dir_.resolve())
    if not re.fullmatch(SITE_ID_PATTERN, name):
        raise MmflError(
            f"site name {name!r} must be 1-64 letters, digits, '_', '.' or '-', starting with a letter or digit"
        )
    key = load_site_public_key(pubkey)
    sites = registered_sites(layout)
    if name in sites and not sites[name].get("revoked"):
        raise MmflError(f"site {name} is already registered")
    out = flwr(layout, "supernode", "register", str(pubkey), CONNECTION, "--name", name, "--format", "json")
    verdict = flwr_verdict(out)
    node_id = verdict.get("node-id")
    if not verdict.get("success") or node_id is None:
        reason = verdict.get("error-message") or _flwr_error(out)
        hint = (
            " (a key that was registered before, even if revoked, cannot be registered again: "
            "make a new one with `mmfl client keygen`)"
            if "already" in reason.lower() or "exist" in reason.lower()
            else ""
        )
        raise MmflError(f"the SuperLink refused the key of {name}: {' '.join(reason.split())}{hint}")
    sites[name] = {
        "public_key": key.decode(),
        "fingerprint": key_fingerprint(key),
        "node_id": node_id,
        "registered_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "revoked": False,
    }
    atomic_write_text(layout.sites_file, json.dumps(sites, indent=2))
    _apply_site_keys(layout)
    console.print(f"registered {name} as node {node_id} ({key_fingerprint(key)})")


@app.command("revoke-site")
def revoke_site(name: str, dir_: Path = DirOpt) -> None:
    """Remove a site's key: it can no longer connect."""
    layout = ServerLayout(dir_.resolve())
    sites = registered_sites(layout)
    if name not in sites or sites[name].get("revoked"):
        raise MmflError(f"no registered site {name}")
    out = flwr(layout, "supernode", "unregister", str(sites[name]["node_id"]), CONNECTION, "--format", "json")
    verdict = flwr_verdict(out)
    if not verdict.get("success"):
        reason = verdict.get("error-message") or _flwr_error(out)
        raise MmflError(f"the SuperLink refused to revoke {name}: {' '.join(reason.split())}")
    sites[name]["revoked"] = True
    sites[name]["revoked_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    atomic_write_text(layout.sites_file, json.dumps(sites, indent=2))
    _apply_site_keys(layout)
    console.print(f"revoked {name}")


def _apply_site_keys(layout: ServerLayout) -> None:
    """The proxy admits registered keys only: reload it (in place) with the new list."""
    if daemon_pid(layout) is None or not layout.config().manage_proxy:
        return
    verdict = reload_daemon(layout)
    if not verdict["ok"]:
        raise MmflError(f"the site list changed but the proxy kept the old one: {verdict['message']}")


def flwr_verdict(out) -> dict:  # noqa: ANN001 - a CompletedProcess of `flwr ... --format json`
    """What a ``flwr ... --format json`` command said: its JSON object (``success``,
    ``error-message``, ...). flwr exits 0 with ``"success": false`` when the SuperLink refuses,
    so the exit code alone is not the answer."""
    for text in (out.stdout, out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ""):
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            continue
        if isinstance(data, dict):
            return data if out.returncode == 0 else {**data, "success": False}
    return {"success": False, "error-message": _flwr_error(out)}


def _flwr_error(out) -> str:  # noqa: ANN001
    text = (out.stdout + out.stderr).strip()
    try:
        return str(json.loads(out.stdout).get("error", text))
    except (json.JSONDecodeError, AttributeError):
        return text.splitlines()[-1] if text else f"exit {out.returncode}"


@app.command("status")
def status_cmd(dir_: Path = DirOpt, as_json: bool = typer.Option(False, "--json")) -> None:
    """Daemon, sites online, runs and their last rounds, epsilon per site."""
    layout = ServerLayout(dir_.resolve())
    config = layout.config()
    pid = daemon_pid(layout)
    report: dict = {
        "daemon": {
            "pid": pid,
            "running": pid is not None,
            "public": f"{config.public_host}:{config.public_port}",
        }
    }
    nodes = []
    if pid is not None:
        out = flwr(layout, "supernode", "list", CONNECTION, "--format", "json")
        if out.returncode == 0:
            nodes = json.loads(out.stdout).get("nodes", [])
    by_id = {str(n.get("node-id")): n for n in nodes}
    report["sites"] = [
        {
            "name": name,
            "node_id": s["node_id"],
            "revoked": s.get("revoked", False),
            "status": by_id.get(str(s["node_id"]), {}).get("status", "unknown"),
        }
        for name, s in registered_sites(layout).items()
    ]
    runs = read_store(layout.store(), lambda engine: RunStore.recent(engine, limit=10))
    report["runs"] = [asdict(r) for r in runs]
    if as_json:
        print(json.dumps(report, indent=2, default=str))
        return
    console.print(
        f"daemon: {'running, pid ' + str(pid) if pid else 'stopped'}; public address {report['daemon']['public']}"
    )
    table = Table(title="sites")
    for col in ("name", "node", "status"):
        table.add_column(col)
    for s in report["sites"]:
        table.add_row(s["name"], str(s["node_id"]), "revoked" if s["revoked"] else s["status"])
    console.print(table)
    table = Table(title="runs")
    for col in ("run", "status", "rounds", "last round", "epsilon per site"):
        table.add_column(col)
    for r in runs:
        last = r.last_round
        lr = (
            "—"
            if last is None
            else f"{last.round} {last.status} rsum {last.rsum if last.rsum is None else round(last.rsum, 1)}"
        )
        table.add_row(
            r.run_id,
            r.status,
            str(r.rounds),
            lr,
            ", ".join(f"{k} {v:.2f}" for k, v in r.epsilon.items()) or "—",
        )
    console.print(table)


def _site_names(layout: ServerLayout) -> dict[int, str]:
    """Node id -> registered name of every site not revoked: the run holds each to its name."""
    return {int(s["node_id"]): name for name, s in registered_sites(layout).items() if not s.get("revoked")}


def _site_keys(layout: ServerLayout) -> dict[int, str]:
    """Node id -> fingerprint of its registered public key: what a site's privacy record is bound to."""
    return {
        int(s["node_id"]): s["fingerprint"] for s in registered_sites(layout).values() if not s.get("revoked")
    }


def _privacy_acks(layout: ServerLayout) -> dict[str, datetime]:
    """Identity -> the newest operator acknowledgement of its privacy record going back."""
    path = layout.root / ACKS_FILE
    if not path.exists():
        return {}
    acks = json.loads(path.read_text(encoding="utf-8"))
    return {a["identity"]: datetime.fromisoformat(a["at"]) for a in acks}


ACKS_FILE = "privacy_acks.json"


@app.command("privacy-ack")
def privacy_ack(
    name: str,
    reason: str = typer.Option(..., "--reason", help="who decided and why (kept in privacy_acks.json)"),
    dir_: Path = DirOpt,
) -> None:
    """Acknowledge that a site's privacy record went back (its state folder was lost, its ledger
    re-made): the spend it reported before no longer bars it. Recorded with the reason; prefer
    that the site carries its spend over (mmfl client ledger-reset --spent EPSILON)."""
    layout = ServerLayout(dir_.resolve())
    if not reason.strip():
        raise MmflError("a privacy acknowledgement needs a reason")
    sites = registered_sites(layout)
    if name not in sites or sites[name].get("revoked"):
        raise MmflError(f"no registered site {name}")
    path = layout.root / ACKS_FILE
    acks = json.loads(path.read_text(encoding="utf-8")) if path.exists() else []
    acks.append(
        {
            "site": name,
            "identity": f"key:{sites[name]['fingerprint']}",
            "at": datetime.now(UTC).isoformat(timespec="seconds"),
            "reason": reason.strip(),
        }
    )
    atomic_write_text(path, json.dumps(acks, indent=2))
    console.print(f"acknowledged: {name}'s earlier privacy reports no longer bar it ({reason.strip()})")


def _submit(layout: ServerLayout, plan: RunPlan) -> str:
    app_dir = Path(str(files("mmfl") / "flower_app"))
    out = flwr(
        layout,
        "run",
        str(app_dir),
        CONNECTION,
        "--run-config",
        f"plan='{Path(plan.output_dir) / 'plan.json'}'",
        "--format",
        "json",
    )
    if out.returncode != 0:
        raise MmflError(f"flwr run failed: {_flwr_error(out)}")
    flower_run = json.loads(out.stdout).get("run-id")
    history = Path(plan.output_dir) / "flower_runs.json"
    ids = json.loads(history.read_text()) if history.exists() else []
    atomic_write_text(history, json.dumps([*ids, flower_run]))
    return str(flower_run)


@run_app.command("submit")
def run_submit(
    config: Path = typer.Argument(..., help="federation spec (TOML); its [[sites]] are not used"),
    dir_: Path = DirOpt,
    sites: int | None = typer.Option(None, "--sites", help="sites to wait for (default: all registered)"),
    set_: list[str] | None = typer.Option(None, "--set", help="override a spec key (repeatable)"),
    wait: bool = typer.Option(
        False, "--wait", help="follow the run until it ends: a line per round, then what it delivered"
    ),
    timeout: float | None = typer.Option(
        None, "--timeout", min=1, help="with --wait: give up following after this many seconds"
    ),
) -> None:
    """Start a run on the connected sites; prints the run id (with --wait, follows it to its end
    and exits 1 when it failed)."""
    layout = ServerLayout(dir_.resolve())
    # The run writes to the store from its first round: a damaged one fails here, not in the run.
    read_store(layout.store(), lambda engine: RunStore.recent(engine, limit=1))
    if daemon_pid(layout) is None:
        raise MmflError("the daemon is not running (mmfl server start)")
    spec = load_config(FederationSpec, config, set_)
    from mmfl.strategies.methods import method_of  # here: it pulls in torch

    if spec.strategy != "auto" and method_of(spec.strategy).server_data == "public+sites":
        raise MmflError(f"{spec.strategy} pools the sites' rows at the server: a simulation-only baseline")
    expected = (
        sites
        if sites is not None
        else sum(1 for s in registered_sites(layout).values() if not s.get("revoked"))
    )
    ds = open_dataset(spec.data_dir or spec.dataset)
    run_id = f"{spec.name}-{datetime.now(UTC):%Y%m%d-%H%M%S}"
    out_dir = layout.runs / run_id
    out_dir.mkdir(parents=True, exist_ok=False)
    plan = RunPlan(
        run_id=run_id,
        spec=spec,
        dataset_root=ds.root,
        output_dir=out_dir,
        store_url=layout.store(),
        expected_sites=expected,
        site_names=_site_names(layout),
        site_keys=_site_keys(layout),
        privacy_acks=_privacy_acks(layout),
    )
    atomic_write_text(out_dir / "plan.json", plan.to_json())
    flower_run = _submit(layout, plan)
    console.print(f"run {run_id} submitted (Flower run {flower_run}); output in {out_dir}")
    print(run_id, flush=True)
    if wait:
        follow_run(layout, run_id, out_dir, timeout)


def follow_run(layout: ServerLayout, run_id: str, out_dir: Path, timeout: float | None) -> None:
    """A line per round of ``run_id`` as it completes, then its delivery line once its
    ``summary.json`` is written; a run that failed, a daemon that stopped, or ``timeout`` seconds
    passing raise :class:`MmflError`. Reads only the run's files and the store."""
    from mmfl.protocols.summary import SUMMARY_FILE, RunSummary

    deadline = None if timeout is None else time.monotonic() + timeout
    progress, offset = out_dir / "rounds.jsonl", 0
    store: RunStore | None = None  # opened once, when first needed, then polled
    while True:
        offset = _print_rounds(progress, offset)
        if (out_dir / SUMMARY_FILE).exists():
            summary = RunSummary.read(out_dir)
            console.print(
                summary.delivery.line if summary.delivery else f"run {run_id} completed", soft_wrap=True
            )
            return
        store = store or RunStore(read_store(layout.store(), lambda engine: engine), run_id)
        status = store.status()
        if status is not None and status.status in ("failed", "interrupted"):
            raise MmflError(
                f"run {run_id} {status.status} (mmfl runs show {run_id} --store {layout.store()})"
            )
        if daemon_pid(layout) is None:
            raise MmflError(
                f"the daemon stopped during run {run_id}; start it, then mmfl server resume {run_id}"
            )
        if deadline is not None and time.monotonic() > deadline:
            raise MmflError(f"run {run_id} is still running after {timeout:g} s (mmfl server status)")
        time.sleep(1.0)


def _print_rounds(progress: Path, offset: int) -> int:
    """Print the completed lines of ``rounds.jsonl`` after byte ``offset`` that end a round;
    returns the new offset."""
    try:
        with progress.open("rb") as fh:
            fh.seek(offset)
            data = fh.read()
    except OSError:
        return offset
    complete = data[: data.rfind(b"\n") + 1]
    for line in complete.decode("utf-8").splitlines():
        event = json.loads(line) if line.strip() else {}
        if event.get("event") == "round":
            test = ((event.get("server") or {}).get("test") or {}).get("rsum")
            accepted = sum(1 for x in event.get("sites") or [] if x.get("accepted"))
            shown = "" if test is None else f", test rsum {test:.1f}"
            console.print(
                f"round {event['round']} {event['status']}: {accepted}/{len(event.get('sites') or [])} sites{shown}"
            )
    return offset + len(complete)


@app.command("resume")
def resume_cmd(run_id: str, dir_: Path = DirOpt) -> None:
    """Continue a run from its last completed round (after a crash of the coordinator)."""
    layout = ServerLayout(dir_.resolve())
    if daemon_pid(layout) is None:
        raise MmflError("the daemon is not running (mmfl server start)")
    plan_path = layout.runs / run_id / "plan.json"
    if not plan_path.exists():
        raise MmflError(f"no run {run_id} in {layout.runs}")
    plan = RunPlan.model_validate_json(plan_path.read_text()).model_copy(
        update={
            "resume": True,
            "site_names": _site_names(layout),
            "site_keys": _site_keys(layout),
            "privacy_acks": _privacy_acks(layout),
        }
    )
    atomic_write_text(plan_path, plan.to_json())
    flower_run = _submit(layout, plan)
    console.print(f"run {run_id} resumed (Flower run {flower_run})")
