"""The signature gate: nginx asks it whether a Fleet request is signed by a registered site
before it reads the request's body (nginx ``auth_request``).

A Flower 1.42 SuperNode signs every Fleet request's timestamp with its key:
``flwr-public-key`` is the base64 of its PEM public key, ``flwr-timestamp`` an ISO time and
``flwr-signature`` the base64 of ECDSA-SHA256 over that timestamp's ASCII bytes. The SuperLink
checks this only after it has read and parsed the body, and public keys are not secret: with a
registered key and a junk signature, 16 parallel 60 MB uploads grew the SuperLink by 1.8 GB.
The gate applies the SuperLink's own check to the headers alone:

    accept  <=>  key registered  and  -5 s < now - timestamp < 305 s
                 and  ECDSA-SHA256-verify(key, timestamp, signature)

and answers 204 (accept) or 401; on 401 nginx answers the site 401 without reading the body.
A valid signature can be replayed for its 5 minutes by whoever saw the headers (Flower's design,
the signature covers the timestamp alone); the body limits and rates of :mod:`.nginx` bound that.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import threading
from collections.abc import Iterable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

# Flower 1.42's window (flwr.common.constant: TIMESTAMP_TOLERANCE, SYSTEM_TIME_TOLERANCE).
SIGNATURE_LIFETIME_S = 300.0
CLOCK_SKEW_S = 5.0


def refusal(
    headers: Mapping[str, str], keys: Mapping[str, ec.EllipticCurvePublicKey], at: datetime.datetime
) -> str | None:
    """None when the headers carry a registered key's valid, fresh signature; else why not."""
    header = headers.get("flwr-public-key", "")
    key = keys.get(header)
    if key is None:
        return "unregistered key"
    try:
        signature = base64.b64decode(headers.get("flwr-signature", ""), validate=True)
        stamp = headers.get("flwr-timestamp", "")
        age = (at - datetime.datetime.fromisoformat(stamp)).total_seconds()
        if not -CLOCK_SKEW_S < age < SIGNATURE_LIFETIME_S + CLOCK_SKEW_S:
            return "timestamp outside the signature's window"
        key.verify(signature, stamp.encode("ascii"), ec.ECDSA(hashes.SHA256()))
    except (ValueError, TypeError, UnicodeError, binascii.Error):
        return "malformed signature headers"
    except InvalidSignature:
        return "invalid signature"
    return None


def parse_keys(headers: Iterable[str]) -> dict[str, ec.EllipticCurvePublicKey]:
    """``flwr-public-key`` header values (:func:`mmfl.pki.flower_key_header`) to their keys."""
    keys = {}
    for header in headers:
        try:
            key = serialization.load_pem_public_key(base64.b64decode(header, validate=True))
        except (ValueError, binascii.Error, UnsupportedAlgorithm):
            continue  # a key the SuperLink could not use either
        if isinstance(key, ec.EllipticCurvePublicKey):
            keys[header] = key
    return keys


class SignatureGate:
    """An HTTP server on ``host:port`` (0: any free port) for nginx's ``auth_request``."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.keys: dict[str, ec.EllipticCurvePublicKey] = {}
        self.refused = 0
        gate = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                why = refusal(self.headers, gate.keys, datetime.datetime.now(tz=datetime.UTC))
                if why is not None:
                    gate.refused += 1
                self.send_response(204 if why is None else 401)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_POST = _answer

            def log_message(self, *_: object) -> None:  # nginx's access log records each answer
                pass

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, name="signature-gate", daemon=True)

    @property
    def address(self) -> str:
        host, port = self.server.server_address[:2]
        return f"{host}:{port}"

    def set_keys(self, headers: Iterable[str]) -> None:
        """Replace the registered keys (one swap: a request sees the old set or the new)."""
        self.keys = parse_keys(headers)

    def start(self) -> SignatureGate:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
