"""A fault at the proxy, on its own federation (one image-only site) so that it runs beside the
main deployment tests: uploads blocked by nginx must fail the round, never complete it."""

from __future__ import annotations

import json
import re

import pytest
from deploy_helpers import Federation, mmfl, start_federation, wait_for
from sqlalchemy import select
from sqlalchemy.orm import Session

from mmfl.server.store import RoundRow, Run, open_store

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def federation(digits, tmp_path_factory: pytest.TempPathFactory):
    yield from start_federation(tmp_path_factory.mktemp("deploy-faults"), {"img": ["image"]})


def test_a_round_with_uploads_blocked_at_the_proxy_is_failed(federation: Federation) -> None:
    config = federation.server / "server.toml"
    original = config.read_text()
    # Representation uploads (200 x 256 floats) exceed 16 KiB; capability replies do not.
    # Applied with a reload: nginx reloads in place, the SuperLink and the sites stay up.
    config.write_text(original.replace('max_body_size = "64m"', 'max_body_size = "16k"'))
    try:
        mmfl("server", "reload", "--dir", str(federation.server))
        assert "client_max_body_size 16k" in (federation.server / "nginx" / "nginx.conf").read_text()
        run_id = federation.submit(1, round_timeout=15)
        wait_for("the blocked run", lambda: federation.summary(run_id).exists(), 600)
        summary = json.loads(federation.summary(run_id).read_text())
        r1 = summary["rounds"][0]
        assert r1["status"] == "failed" and "0 sites accepted, fewer than the minimum of 1" in r1["reason"]
        # The cut upload holds the round no longer than its deadline (Flower alone waits 180 s).
        assert [s["reason"] for s in r1["sites"]] == ["no reply within 15 s"]
        with Session(open_store(federation.server / "runs.sqlite")) as s:
            assert s.scalars(select(RoundRow).where(RoundRow.run_id == run_id)).one().status == "failed"
            assert s.get(Run, run_id).status == "completed-with-failed-rounds"
        assert " 413 " in (federation.server / "logs" / "nginx-access.log").read_text()
    finally:
        config.write_text(original)
    # A config the daemon cannot apply in place is refused, and the running one is kept.
    port = int(re.search(r"superlink_port = (\d+)", original).group(1))
    config.write_text(original.replace(f"superlink_port = {port}", f"superlink_port = {port + 1}"))
    try:
        bad = mmfl("server", "reload", "--dir", str(federation.server), check=False)
        assert bad.returncode != 0 and "superlink_port" in bad.stderr
    finally:
        config.write_text(original)
    mmfl("server", "reload", "--dir", str(federation.server))
    assert "client_max_body_size 64m" in (federation.server / "nginx" / "nginx.conf").read_text()
