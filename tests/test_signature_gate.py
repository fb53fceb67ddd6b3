"""The signature gate decides on the headers alone, as Flower's SuperLink would on the whole
request: a registered key's fresh signature of the timestamp passes, anything else is refused."""

from __future__ import annotations

import base64
import datetime
import urllib.error
import urllib.request

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from flwr.supercore.primitives.asymmetric import sign_message

from mmfl.server.signature_gate import SignatureGate, refusal

NOW = datetime.datetime(2026, 12, 7, 12, 0, tzinfo=datetime.UTC)


def _site() -> tuple[ec.EllipticCurvePrivateKey, str]:
    key = ec.generate_private_key(ec.SECP384R1())
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return key, base64.b64encode(pem).decode("ascii")


def _headers(key: ec.EllipticCurvePrivateKey, header: str, at: datetime.datetime) -> dict[str, str]:
    """What a Flower 1.42 SuperNode sends: its key, the time, Flower's own signature of it."""
    stamp = at.isoformat()
    signature = sign_message(key, stamp.encode("ascii"))
    return {
        "flwr-public-key": header,
        "flwr-timestamp": stamp,
        "flwr-signature": base64.b64encode(signature).decode("ascii"),
    }


def test_only_a_registered_keys_fresh_signature_passes() -> None:
    from mmfl.server.signature_gate import parse_keys

    key, header = _site()
    other, other_header = _site()
    keys = parse_keys([header, "not base64!", base64.b64encode(b"not a key").decode()])
    assert list(keys) == [header]
    good = _headers(key, header, NOW - datetime.timedelta(seconds=1))
    assert refusal(good, keys, NOW) is None
    assert refusal(_headers(other, other_header, NOW), keys, NOW) == "unregistered key"
    # a registered key with another key's signature, a junk one, or none
    assert refusal({**good, "flwr-signature": _headers(other, header, NOW)["flwr-signature"]}, keys, NOW) == (
        "invalid signature"
    )
    assert refusal({**good, "flwr-signature": "AAAA"}, keys, NOW) == "invalid signature"
    assert refusal({**good, "flwr-signature": "%%%"}, keys, NOW) == "malformed signature headers"
    assert refusal({k: v for k, v in good.items() if k != "flwr-signature"}, keys, NOW) == "invalid signature"
    # the timestamp is what is signed: changing it breaks the signature; Flower's window holds
    assert refusal({**good, "flwr-timestamp": NOW.isoformat()}, keys, NOW) == "invalid signature"
    for age, ok in ((-4, True), (-6, False), (304, True), (306, False)):
        stamped = _headers(key, header, NOW - datetime.timedelta(seconds=age))
        assert (refusal(stamped, keys, NOW) is None) is ok, age
    naive = _headers(key, header, NOW.replace(tzinfo=None))
    assert refusal(naive, keys, NOW) == "malformed signature headers"


@pytest.mark.parametrize("registered", [True, False])
def test_the_gate_answers_nginx_over_http(registered: bool) -> None:
    key, header = _site()
    gate = SignatureGate().start()
    try:
        gate.set_keys([header] if registered else [])
        signed = _headers(key, header, datetime.datetime.now(tz=datetime.UTC))
        request = urllib.request.Request(
            f"http://{gate.address}/_mmfl/signature-gate", headers=signed, method="POST"
        )
        if registered:
            with urllib.request.urlopen(request, timeout=5) as answer:
                assert answer.status == 204
            assert gate.refused == 0
        else:
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(request, timeout=5)
            assert refused.value.code == 401
            assert gate.refused == 1
    finally:
        gate.stop()
