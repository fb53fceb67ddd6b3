"""deploy/ without a container engine: the compose file, Dockerfiles, units and proxy config
parse and point at files that exist; their commands are real mmfl commands."""

from __future__ import annotations

import configparser
import shlex
import subprocess
import sys
from pathlib import Path

import yaml

from mmfl.server.nginx import container_config

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    text = path.read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_compose_parses_and_references_existing_files() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert {"coordinator", "nginx", "site-img", "site-txt", "site-pair"} <= set(services)
    for name, svc in services.items():
        if "build" in svc:
            context = (DEPLOY / svc["build"]["context"]).resolve()
            assert context == ROOT, name
            assert (context / svc["build"]["dockerfile"]).is_file(), name
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./nginx/"):
                assert (DEPLOY / source).is_file(), source
    # Sites reach only the proxy; the SuperLink's network is internal.
    assert compose["networks"]["backend"]["internal"] is True
    assert services["coordinator"]["networks"] == ["backend"]
    assert all(services[s]["networks"] == ["frontend"] for s in ("site-img", "site-txt", "site-pair"))


def test_dockerfiles_copy_what_exists_and_run_mmfl() -> None:
    files = sorted((DEPLOY / "docker").glob("*.Dockerfile"))
    assert {f.name for f in files} == {
        "coordinator.Dockerfile",
        "coordinator-cuda.Dockerfile",
        "site.Dockerfile",
        "site-cuda.Dockerfile",
    }
    for f in files:
        instructions = dockerfile_instructions(f)
        assert instructions[0][0] == "FROM", f.name
        for word, rest in instructions:
            if word == "COPY":
                *sources, _dest = shlex.split(rest)
                for src in sources:
                    assert (ROOT / src).exists(), f"{f.name}: COPY {src}"
        entry = [rest for word, rest in instructions if word == "ENTRYPOINT"]
        assert entry and '"mmfl"' in entry[0]
        assert any("torch==2.13.0" in rest for word, rest in instructions if word == "RUN")
        assert ("cu128" in f.read_text()) == ("cuda" in f.name)


def test_systemd_units_parse_and_call_real_commands() -> None:
    for unit in sorted((DEPLOY / "systemd").glob("*.service")):
        parser = configparser.ConfigParser(strict=False, interpolation=None)
        parser.read(unit)
        assert {"Unit", "Service", "Install"} <= set(parser.sections())
        argv = shlex.split(parser["Service"]["ExecStart"])
        assert argv[0].endswith("/mmfl") and "--foreground" in argv
        sub = argv[1:3]
        out = subprocess.run(
            [sys.executable, "-m", "mmfl.cli", *sub, "--help"], capture_output=True, text=True
        )
        assert out.returncode == 0, unit.name
        flags = {a.split("=")[0] for a in argv if a.startswith("--")}
        for flag in flags:
            assert flag in out.stdout, f"{unit.name}: {flag}"


def test_compose_proxy_config_is_what_the_code_renders() -> None:
    assert (DEPLOY / "nginx" / "mmfl.conf").read_text() == container_config()
    text = container_config()
    assert "client_max_body_size 64m;" in text and "location / { return 404; }" in text
