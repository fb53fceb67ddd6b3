"""The reverse proxy in front of the SuperLink: only the Fleet API and ``/health`` are public.

Flower 1.42 serves the Fleet, Control and Runtime APIs on one port, and the Control API has no
authentication: whoever reaches it can run code on the coordinator and every site. So the
SuperLink listens on loopback and nginx, on the public address, forwards only canonical
``/v1/fleet/*`` POSTs and ``GET /health``; everything else is 404 at nginx. Settings and the
one that is required (``client_max_body_size``, else array uploads get 413 and rounds silently
have zero sites) are measured in docs/security.md and docs/operate.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# Refusals happen on the headers, before a body is read: a request without Flower's SuperNode
# signature (401), from a key that is not registered here (403) or whose signature the gate
# (:mod:`.signature_gate`) does not verify (401) never reaches the SuperLink, which would parse
# its body before checking the signature (docs/security.md: +1,797 MB from 16 junk uploads).
FLEET_PROXY = """\
        limit_except POST {{ deny all; }}
        if ($flwr_sig = "no") {{ return 401; }}
        if ($flwr_known = "0") {{ return 403; }}
        auth_request /_mmfl/signature-gate;
        limit_conn fleet_conn {conns};
        limit_req zone=fleet_rate burst={burst} nodelay;
        proxy_request_buffering off;
        proxy_buffering off;
        proxy_connect_timeout 5s;
        proxy_send_timeout 60s;
        proxy_read_timeout 60s;
        proxy_pass https://flwr_superlink;
"""

FLEET_LOCATIONS = """\
    location /v1/fleet/ {{
        if ($request_uri !~ "^/v1/fleet/[a-z][a-z-]*$") {{ return 404; }}
        client_max_body_size 1m;
{proxy}    }}
    location = /v1/fleet/push-object {{
        if ($request_uri != "/v1/fleet/push-object") {{ return 404; }}
        client_max_body_size {max_body};
{proxy}    }}
    location = /v1/fleet {{ return 404; }}
    location = /v1/fleet/register-node {{ return 404; }}
    location = /v1/fleet/unregister-node {{ return 404; }}
    location = /_mmfl/signature-gate {{
        internal;
        client_max_body_size 0;  # the outer location's limit applies; the gate reads no body
        proxy_pass http://{gate};
        proxy_pass_request_body off;
        proxy_set_header Content-Length "";
        proxy_set_header Connection "";
        proxy_connect_timeout 2s;
        proxy_read_timeout 5s;
    }}
    location = /health {{
        limit_except GET {{ deny all; }}
        proxy_pass https://flwr_superlink;
    }}
    location / {{ return 404; }}
"""


def known_keys_map(keys: list[str] | None) -> str:
    """``$flwr_known``: 1 for a ``flwr-public-key`` header of a registered site (``keys``, as
    :func:`~mmfl.pki.flower_key_header` writes them), else 0; without a list every key passes
    (the container set-up, where sites register after the proxy's configuration is written)."""
    if keys is None:
        return '    map $http_flwr_public_key $flwr_known { default "1"; }\n'
    lines = "".join(f'        "{k}" "1";\n' for k in sorted(keys))
    return f'    map $http_flwr_public_key $flwr_known {{\n        default "0";\n{lines}    }}\n'


@dataclass(frozen=True)
class ProxyPaths:
    """Where nginx finds its certificates and writes its files."""

    prefix: Path  # nginx -p; temp folders live here
    pid: Path
    error_log: Path
    access_log: Path
    proxy_cert: Path
    proxy_key: Path
    upstream_ca: Path


def render(
    paths: ProxyPaths,
    listen: str,
    superlink: str,
    gate: str,
    max_body: str = "64m",
    extra: str = "",
    superlink_name: str = "localhost",
    known_keys: list[str] | None = None,
    requests_per_second: int = 50,
    connections_per_client: int = 64,
) -> str:
    """A complete ``nginx.conf`` (one worker). ``max_body`` (object uploads only; every other
    Fleet call is limited to 1 MiB) must stay well above Flower's 5 MiB array chunks; ``extra``
    is inserted into the public server block (e.g. allow/deny lists). ``superlink`` is HOST:PORT
    of the SuperLink, ``gate`` HOST:PORT of its :class:`~.signature_gate.SignatureGate`;
    ``superlink_name`` a DNS name in its certificate (nginx checks DNS names
    only, not IP addresses). ``known_keys``: see :func:`known_keys_map`. Each client address may
    hold ``connections_per_client`` connections and make ``requests_per_second`` requests
    (bursts of four times that); beyond, nginx answers 429."""
    p = paths
    proxy = FLEET_PROXY.format(conns=connections_per_client, burst=4 * requests_per_second)
    locations = FLEET_LOCATIONS.format(max_body=max_body, proxy=proxy, gate=gate)
    temps = "\n".join(
        f"    {name}_temp_path {p.prefix / ('tmp-' + name)};"
        for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""# written by mmfl; see server/nginx.py
worker_processes 1;
pid {p.pid};
error_log {p.error_log} info;
events {{ worker_connections 512; }}
http {{
{temps}
    server_tokens off;
    map_hash_bucket_size 512;  # before any map: registered keys' headers are ~300 characters
    map $http_flwr_public_key $flwr_pk {{ "~^.{{100}}(?<p>.{{12}})" $p; default "-"; }}
    map $http_flwr_signature $flwr_sig {{ "" "no"; default "yes"; }}
{known_keys_map(known_keys)}    limit_conn_zone $binary_remote_addr zone=fleet_conn:10m;
    limit_req_zone $binary_remote_addr zone=fleet_rate:10m rate={requests_per_second}r/s;
    limit_conn_status 429;
    limit_req_status 429;
    log_format flwr '$remote_addr [$time_local] "$request" $status up=$upstream_status '
                    'len=$request_length sent=$bytes_sent rt=$request_time pk=$flwr_pk sig=$flwr_sig';
    access_log {p.access_log} flwr;
    upstream flwr_superlink {{
        server {superlink};
        keepalive 16;
        keepalive_timeout 4s;
    }}
    server {{
        listen {listen} ssl;
        server_name _;
        ssl_certificate {p.proxy_cert};
        ssl_certificate_key {p.proxy_key};
        ssl_protocols TLSv1.2 TLSv1.3;
        proxy_ssl_trusted_certificate {p.upstream_ca};
        proxy_ssl_verify on;
        proxy_ssl_verify_depth 2;
        proxy_ssl_name {superlink_name};
        proxy_ssl_server_name on;
        proxy_ssl_session_reuse on;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_set_header X-Forwarded-For $remote_addr;
        proxy_set_header X-Forwarded-Proto $scheme;
{extra}{locations}    }}
}}
"""


def container_config() -> str:
    """The nginx.conf of ``deploy/compose.yaml`` (nginx in its own container)."""
    paths = ProxyPaths(
        prefix=Path("/var/cache/nginx"),
        pid=Path("/tmp/nginx.pid"),
        error_log=Path("/dev/stderr"),
        access_log=Path("/dev/stdout"),
        proxy_cert=Path("/etc/mmfl/tls/proxy.pem"),
        proxy_key=Path("/etc/mmfl/tls/proxy.key"),
        upstream_ca=Path("/etc/mmfl/tls/ca.crt"),
    )
    return render(paths, "0.0.0.0:8443", "coordinator:9092", "coordinator:9093", superlink_name="coordinator")
