"""``mmfl server console``: serve the read-only console (uvicorn) for a server folder, a run
store or a run folder; and the same, in a thread, beside ``mmfl simulate --console``."""

from __future__ import annotations

import signal
import socket
import sys
import threading
import time
from pathlib import Path

import typer

from mmfl.errors import MmflError
from mmfl.server.console.security import Exposure, plan_exposure

DEFAULT_PORT = 8787


def source_of(dir_: Path | None, store: str | None, run_folder: Path | None):  # noqa: ANN201 - a Source
    """The console's source and the server folder it belongs to (None for a store or folder);
    without any: the server folder ``.``."""
    given = [x for x in (dir_, store, run_folder) if x is not None]
    if len(given) > 1:
        raise MmflError("give one of --dir, --store and --run-folder")
    if run_folder is not None:
        from mmfl.server.console.folder_source import FolderSource

        return FolderSource(run_folder.resolve()), None
    from mmfl.server.console.store_source import StoreSource

    if store is not None:
        if "://" not in store and not Path(store).is_file():
            raise MmflError(f"no run store at {store}")
        return StoreSource(store), None
    from mmfl.server.daemon import ServerLayout

    layout = ServerLayout((dir_ or Path(".")).resolve())
    layout.config()  # not a server folder: one line
    return StoreSource(layout.store(), layout), layout


def check_bindable(host: str, port: int) -> None:
    """Refuse a port that another process holds (before printing an address that would lie)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            raise MmflError(f"the console cannot listen on {host}:{port}: {exc.strerror}") from None


def _not_the_fleet_address(layout, host: str, port: int) -> None:  # noqa: ANN001 - a ServerLayout
    """The public Fleet address (nginx) and the SuperLink's port never serve the console."""
    config = layout.config()
    if port in (config.public_port, config.superlink_port):
        which = "public Fleet port" if port == config.public_port else "SuperLink port"
        raise MmflError(f"--port {port} is the coordinator's {which}: the console needs a port of its own")


def build(
    dir_: Path | None,
    store: str | None,
    run_folder: Path | None,
    host: str,
    port: int,
    token_file: Path | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    refresh: float,
):  # noqa: ANN201 - (FastAPI app, Exposure)
    """Check every setting, then the app and where it listens; any problem is one line."""
    source, layout = source_of(dir_, store, run_folder)
    default_tls = None
    if layout is not None:
        _not_the_fleet_address(layout, host, port)
        default_tls = (layout.tls / "proxy.pem", layout.tls / "proxy.key")
    exposure = plan_exposure(host, port, token_file, tls_cert, tls_key, default_tls)
    from mmfl.server.console.app import create_app

    app = create_app(source, refresh, exposure.token, exposure.allowed_hosts)
    return app, exposure


def uvicorn_server(app, exposure: Exposure):  # noqa: ANN001, ANN201
    import uvicorn

    config = uvicorn.Config(
        app,
        host=exposure.host,
        port=exposure.port,
        ssl_certfile=str(exposure.tls_cert) if exposure.tls_cert else None,
        ssl_keyfile=str(exposure.tls_key) if exposure.tls_key else None,
        log_level="warning",
        access_log=False,
        server_header=False,
        proxy_headers=False,
    )
    return uvicorn.Server(config)


def serve_in_thread(app, exposure: Exposure, timeout: float = 20):  # noqa: ANN001, ANN201
    """Start the console in a daemon thread (beside a simulation); returns the uvicorn server
    (``server.should_exit = True`` stops it)."""
    check_bindable(exposure.host, exposure.port)
    server = uvicorn_server(app, exposure)
    thread = threading.Thread(target=server.run, name="mmfl-console", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    if not server.started:
        raise MmflError(f"the console did not start on {exposure.url}")
    return server


def console_cmd(
    dir_: Path | None = typer.Option(
        None,
        "--dir",
        help="a server folder: its run store, registered sites, node list, certificates (default: .)",
    ),
    store: str | None = typer.Option(
        None, "--store", help="a run store alone: a SQLite file or a database URL"
    ),
    run_folder: Path | None = typer.Option(
        None,
        "--run-folder",
        help="a run folder (a simulation's, running or finished): its plan, rounds.jsonl, summary",
    ),
    host: str = typer.Option(
        "127.0.0.1", "--host", help="listen address; anything but loopback needs --token-file and TLS"
    ),
    port: int = typer.Option(DEFAULT_PORT, "--port", min=1, max=65535),
    token_file: Path | None = typer.Option(
        None,
        "--token-file",
        help="a file (mode 0600) whose first line is the access token (Bearer, or Basic password)",
    ),
    tls_cert: Path | None = typer.Option(
        None, "--tls-cert", help="certificate (PEM); default with --dir off loopback: tls/proxy.pem"
    ),
    tls_key: Path | None = typer.Option(None, "--tls-key", help="its key; default with --dir: tls/proxy.key"),
    refresh: float = typer.Option(2.0, "--refresh", min=0.5, help="seconds between a live page's updates"),
) -> None:
    """Serve the read-only operator console: sites, runs and their rounds live, privacy, events."""
    app, exposure = build(dir_, store, run_folder, host, port, token_file, tls_cert, tls_key, refresh)
    check_bindable(exposure.host, exposure.port)
    auth = "token required" if exposure.token else "no token (loopback)"
    print(f"console on {exposure.url} (read-only, {auth}); Ctrl-C to stop", file=sys.stderr, flush=True)
    uvicorn_server(app, exposure).run()


def serve_folder(folder: Path, port: int = DEFAULT_PORT):  # noqa: ANN201 - a uvicorn.Server
    """The console of a run folder on loopback, in a thread (``mmfl simulate --console``)."""
    app, exposure = build(None, None, folder, "127.0.0.1", port, None, None, None, 2.0)
    server = serve_in_thread(app, exposure)
    print(f"console on {exposure.url} (read-only)", file=sys.stderr, flush=True)
    return server


def keep_serving(server) -> None:  # noqa: ANN001 - a uvicorn.Server
    """Serve until Ctrl-C, then stop the console."""
    print("the run is over; the console stays up until Ctrl-C", file=sys.stderr, flush=True)
    # Our own handlers: the run's engine may have replaced Python's SIGINT handler (it then
    # never raises KeyboardInterrupt here and Ctrl-C would be ignored).
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not server.should_exit and not stop.wait(0.5):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        server.should_exit = True
