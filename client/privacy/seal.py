"""The ledger's seal: a signature by the site's own key over the ledger and its journal chain.

A checksum only shows that a file was not damaged; anyone who can write the state folder can
edit ``ledger.json`` and recompute its SHA-256. A deployed site holds an ECDSA P-384 key (its
SuperNode key, ``mmfl client keygen``), so each change of the ledger is signed with it:

    seal = ECDSA-SHA384(key, "mmfl-ledger-v1" | site_id | sha256(ledger.json) | journal head)

where the journal head is the SHA-256 of its last line, which commits to every earlier line
through their ``prev`` links. An edit without the key fails the check and the site refuses to
train (fail closed, as for a damaged checksum). Whoever can read the key can still re-sign;
against that the coordinator keeps the highest ε each site reported and refuses a site whose
spend went back (:meth:`~mmfl.server.sites.SiteRegistry.check_spend`).
"""

from __future__ import annotations

import base64
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from mmfl.errors import MmflError
from mmfl.pki import key_fingerprint

DOMAIN = b"mmfl-ledger-v1"


class LedgerSeal:
    """Signs and verifies ledger states with one site's private key (OpenSSH format)."""

    def __init__(self, key_path: Path) -> None:
        try:
            key = serialization.load_ssh_private_key(Path(key_path).read_bytes(), password=None)
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise MmflError(f"{key_path} is not an OpenSSH private key: {exc}") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise MmflError(
                f"{key_path}: the ledger is signed with the site's ECDSA key (mmfl client keygen)"
            )
        self.key = key
        self.fingerprint = key_fingerprint(
            key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        )

    @staticmethod
    def message(site_id: str, ledger_sha256: str, journal_head: str) -> bytes:
        return b"\0".join([DOMAIN, site_id.encode(), ledger_sha256.encode(), journal_head.encode()])

    def sign(self, site_id: str, ledger_sha256: str, journal_head: str) -> str:
        """The seal as one line: ``FINGERPRINT BASE64-SIGNATURE``."""
        signature = self.key.sign(
            self.message(site_id, ledger_sha256, journal_head), ec.ECDSA(hashes.SHA384())
        )
        return f"{self.fingerprint} {base64.b64encode(signature).decode('ascii')}"

    def verify(self, seal: str, site_id: str, ledger_sha256: str, journal_head: str) -> str | None:
        """None when ``seal`` is this key's signature of that state, else what is wrong."""
        parts = seal.split()
        if len(parts) != 2:
            return "its seal is not FINGERPRINT SIGNATURE"
        fingerprint, encoded = parts
        if fingerprint != self.fingerprint:
            return f"it is sealed by key {fingerprint}, not by this site's key {self.fingerprint}"
        try:
            signature = base64.b64decode(encoded, validate=True)
            self.key.public_key().verify(
                signature, self.message(site_id, ledger_sha256, journal_head), ec.ECDSA(hashes.SHA384())
            )
        except (ValueError, InvalidSignature):
            return "its seal does not match its contents (changed without this site's key)"
        return None
