"""F5: a SuperNode never outlives its site agent (real agent, real flower-supernode)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from helpers import mmfl_cli
from mmfl.client.agent import Agent, supernode_of
from mmfl.flower_runtime import flower_env
from mmfl.ports import free_port


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        state = Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def wait_for(what: str, check, seconds: float = 60.0) -> None:  # noqa: ANN001
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def launchers_of(state: Path) -> list[int]:
    """Live warm launchers started for ``state``."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if proc.name.isdigit() and b"mmfl.client.warm_launcher" in cmd and str(state).encode() in cmd:
            found.append(int(proc.name))
    return [p for p in found if alive(p)]


@contextlib.contextmanager
def flower_pull_defaults_kept() -> Iterator[None]:
    """Put Flower's pull back-off defaults back after a test that patches them in this process."""
    from flwr.supercore.inflatable import inflatable_utils

    functions = (inflatable_utils.pull_objects, inflatable_utils.pull_and_inflate_object_from_tree)
    saved = [dict(f.__kwdefaults__) for f in functions]
    try:
        yield
    finally:
        for f, defaults in zip(functions, saved, strict=True):
            f.__kwdefaults__.update(defaults)


def test_the_supernode_entry_point_caps_flowers_idle_wait() -> None:
    """mmfl.client.supernode shortens the SuperNode's 3 s idle sleep; this fails if Flower
    stops sleeping through its module's ``time`` (then the patch would do nothing)."""
    import flwr.supernode.start_client_internal as internal
    from flwr.supercore.inflatable import inflatable_utils

    from mmfl.client import supernode

    source = Path(internal.__file__).read_text()
    assert "time.sleep(3)" in source and "time.sleep(0.5)" in source and internal.time is time
    try:
        with flower_pull_defaults_kept():
            supernode.patch(0.05)
            started = time.monotonic()
            internal.time.sleep(3)
            assert time.monotonic() - started < 0.5
            started = time.monotonic()
            internal.time.sleep(0.5)  # waiting on its own state for a reply: at most LOCAL_WAIT
            assert time.monotonic() - started < 0.1
            assert internal.time.monotonic() > 0  # the rest of time is there
            assert inflatable_utils.pull_objects.__kwdefaults__["initial_backoff"] < 0.1
    finally:
        internal.time = time


def test_objects_not_yet_uploaded_are_retried_within_a_fraction_of_a_second() -> None:
    """Flower waits 1 s, then 2 s, before pulling an object again (the third try 3 s after the
    first); after the patch the third try comes about 0.15 s after it (0.05 + 0.1 s, +-20 %
    jitter), asserted under 0.4 s to leave room for a loaded machine. Fails if Flower renames
    the knobs."""
    from flwr.supercore.constant import PULL_INITIAL_BACKOFF
    from flwr.supercore.inflatable import inflatable_utils
    from flwr.supercore.inflatable.inflatable_utils import ObjectUnavailableError

    from mmfl.flower_runtime import shorten_pull_backoff

    tries: list[float] = []

    def pull(object_id: str) -> bytes:
        tries.append(time.monotonic())
        if len(tries) < 3:
            raise ObjectUnavailableError(object_id)
        return b"arrays"

    with flower_pull_defaults_kept():
        shorten_pull_backoff()
        started = time.monotonic()
        assert inflatable_utils.pull_objects(["a"], pull) == {"a": b"arrays"}
        assert len(tries) == 3 and tries[-1] - started < 0.4
    assert PULL_INITIAL_BACKOFF == 1  # Flower's own: the first retry a second later


def test_a_clientapp_forked_by_the_warm_launcher_retries_arrays_still_arriving_within_a_fraction_of_a_second() -> (
    None
):
    """A ClientApp starts while its SuperNode is still pulling the message's arrays, and pulls
    them through ``pull_and_inflate_object_from_tree``, which passes its own backoff on (seen in
    a deployed trace: one message in three waited 1 s). The warm launcher patches it before it
    forks: here the message's first object is missing twice and the message is inflated about
    0.15 s after the first try (Flower: 3 s)."""
    import numpy as np
    from flwr.app import ArrayRecord, RecordDict
    from flwr.supercore.inflatable import inflatable_utils
    from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects, get_object_tree
    from flwr.supercore.inflatable.inflatable_utils import ObjectUnavailableError

    from mmfl.client.warm_launcher import _warm_up

    sent = RecordDict({"arrays": ArrayRecord([np.arange(6.0)])})  # a message's content and its arrays
    objects = {k: v.deflate() for k, v in get_all_nested_objects(sent).items()}
    late = next(iter(objects))
    tries: list[float] = []

    def pull(object_id: str) -> bytes:
        if object_id == late:
            tries.append(time.monotonic())
            if len(tries) < 3:
                raise ObjectUnavailableError(object_id)
        return objects[object_id]

    with flower_pull_defaults_kept():
        _warm_up(None)
        started = time.monotonic()
        got = inflatable_utils.pull_and_inflate_object_from_tree(get_object_tree(sent), pull, lambda _: None)
        assert len(tries) == 3 and tries[-1] - started < 0.4
        assert np.array_equal(got["arrays"].to_numpy_ndarrays()[0], np.arange(6.0))


def test_a_killed_agent_takes_its_supernode_and_stop_ends_an_orphan(digits, tmp_path: Path) -> None:
    root = digits.root
    assert mmfl_cli("server", "init", "--dir", str(tmp_path / "srv")).returncode == 0
    assert mmfl_cli("client", "keygen", "--out", str(tmp_path / "keys"), "--name", "s1").returncode == 0
    state = tmp_path / "state"
    args = [
        "--server",
        "127.0.0.1:9",
        "--ca",
        str(tmp_path / "srv" / "tls" / "ca.crt"),
        "--key",
        str(tmp_path / "keys" / "s1"),
    ]
    done = mmfl_cli(
        "client", "start", *args, "--data", str(root / "private.jsonl"), "--public", str(root / "public.jsonl"),
        "--state", str(state),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    wait_for("the agent", lambda: (state / "agent.pid").exists())
    agent = int((state / "agent.pid").read_text())
    wait_for("the SuperNode", lambda: supernode_of(state) is not None)
    node = supernode_of(state)
    assert node is not None and alive(node)
    wait_for("the warm launcher", lambda: len(launchers_of(state)) == 1)
    (launcher,) = launchers_of(state)
    assert os.getpgid(launcher) == node  # in the SuperNode's group: stopped with it
    os.kill(agent, signal.SIGKILL)  # no clean-up code runs
    wait_for("the SuperNode to follow its agent", lambda: not alive(node), 30)
    wait_for("the launcher to follow its agent", lambda: not alive(launcher), 30)

    # A SuperNode left behind some other way (started here by hand, as a crashed agent would
    # have left it) is found by `client stop` and ended.
    command = Agent(
        state / "site.toml", "127.0.0.1:9", tmp_path / "srv" / "tls" / "ca.crt", tmp_path / "keys" / "s1"
    ).command(free_port())
    orphan = subprocess.Popen(
        command, env=flower_env(state / "flwr-home"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    try:
        (state / "supernode.pid").write_text(f"{orphan.pid}\n")
        assert supernode_of(state) == orphan.pid
        out = mmfl_cli("client", "stop", "--state", str(state))
        assert out.returncode == 0 and f"stopped the SuperNode (pid {orphan.pid})" in out.stdout
        assert orphan.wait(timeout=30) is not None
    finally:
        if orphan.poll() is None:
            orphan.kill()
    out = mmfl_cli("client", "stop", "--state", str(state))
    assert out.returncode == 2 and "no agent runs" in out.stderr


def test_a_process_keeps_the_most_recent_sites_built_and_rebuilds_the_rest(monkeypatch) -> None:
    """Many virtual sites on one Ray actor: the cache of built sites stays bounded."""
    from mmfl.client import app

    monkeypatch.setattr(app, "MAX_CACHED_SITES", 2)
    monkeypatch.setattr(app, "_sites", app.OrderedDict())
    built: list[str] = []

    def build(key: str):  # noqa: ANN202
        return lambda: built.append(key) or key

    for key in ["a", "b", "a", "c", "a", "b"]:
        assert app._cached(key, build(key)) == key
    # a, b built; a reused; c evicts b (a was used more recently); a reused; b rebuilt, evicting c
    assert built == ["a", "b", "c", "b"] and list(app._sites) == ["a", "b"]


def test_a_killed_agent_left_unreaped_is_not_taken_for_a_running_one(tmp_path: Path) -> None:
    """In a container whose init does not reap orphans, a SIGKILLed agent stays a zombie: it
    still answers ``kill(pid, 0)``, yet ``client stop`` must treat it as gone."""
    from mmfl.client.cli import _agent_pid
    from mmfl.processes import running

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)  # mmfl"])
    try:
        (tmp_path / "agent.pid").write_text(f"{child.pid}\n")
        assert running(child.pid) and _agent_pid(tmp_path) == child.pid
        child.kill()
        wait_for(
            "the zombie", lambda: Path(f"/proc/{child.pid}/stat").read_text().rsplit(") ", 1)[1][0] == "Z", 10
        )
        os.kill(child.pid, 0)  # a zombie still answers the signal-0 probe
        assert not running(child.pid) and _agent_pid(tmp_path) is None
    finally:
        child.kill()
        child.wait()
    assert not running(child.pid) and _agent_pid(tmp_path) is None
