"""Certificates and keys with the ``cryptography`` library (no shell calls to openssl).

* A certificate authority (``ca.crt``, ``ca.key``) that the sites trust.
* The SuperLink's certificate, for ``localhost`` / 127.0.0.1 only: the SuperLink listens on
  loopback and only the reverse proxy talks to it (and verifies it against the CA).
* The reverse proxy's certificate, for the coordinator's public names and addresses.
* A site's SuperNode key pair: ECDSA P-384, private key in OpenSSH format (what
  ``flower-supernode --auth-supernode-private-key`` reads), public key in OpenSSH format (what
  ``flwr supernode register`` takes).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import ipaddress
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mmfl.errors import MmflError
from mmfl.files import atomic_write_bytes

VALID_DAYS_CA = 3650
VALID_DAYS_LEAF = 825


def _write_private(path: Path, key: ec.EllipticCurvePrivateKey, fmt: serialization.PrivateFormat) -> None:
    data = key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption())
    atomic_write_bytes(path, data)
    path.chmod(0o600)


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "mmfl"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def create_ca(directory: Path, common_name: str = "mmfl federation CA") -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP384R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=VALID_DAYS_CA))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA384())
    )
    directory.mkdir(parents=True, exist_ok=True)
    _write_private(directory / "ca.key", key, serialization.PrivateFormat.PKCS8)
    atomic_write_bytes(directory / "ca.crt", cert.public_bytes(serialization.Encoding.PEM))
    return directory / "ca.crt", directory / "ca.key"


def load_ca(directory: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    try:
        cert = x509.load_pem_x509_certificate((directory / "ca.crt").read_bytes())
        key = serialization.load_pem_private_key((directory / "ca.key").read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise MmflError(f"no usable CA in {directory}: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise MmflError(f"the CA key in {directory} is not an EC key")
    return cert, key


def issue_server_certificate(
    ca_dir: Path, out_dir: Path, stem: str, dns_names: Sequence[str], ip_addresses: Sequence[str]
) -> tuple[Path, Path]:
    """A TLS server certificate for the given names and addresses, signed by the CA."""
    if not dns_names and not ip_addresses:
        raise MmflError("a server certificate needs at least one DNS name or IP address")
    ca_cert, ca_key = load_ca(ca_dir)
    key = ec.generate_private_key(ec.SECP384R1())
    try:
        sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
        sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in ip_addresses]
    except ValueError as exc:
        raise MmflError(f"bad certificate name or address: {exc}") from None
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(dns_names[0] if dns_names else ip_addresses[0]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=VALID_DAYS_LEAF))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, True, False, False, False, False, False, False), critical=True
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA384())
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_private(out_dir / f"{stem}.key", key, serialization.PrivateFormat.PKCS8)
    atomic_write_bytes(out_dir / f"{stem}.pem", cert.public_bytes(serialization.Encoding.PEM))
    return out_dir / f"{stem}.pem", out_dir / f"{stem}.key"


def create_site_keys(directory: Path, name: str = "site") -> tuple[Path, Path]:
    """An ECDSA P-384 key pair for SuperNode authentication: ``NAME`` (private, 0600) and ``NAME.pub``."""
    key = ec.generate_private_key(ec.SECP384R1())
    directory.mkdir(parents=True, exist_ok=True)
    private, public = directory / name, directory / f"{name}.pub"
    if private.exists():
        raise MmflError(f"{private} already exists; refusing to overwrite a site key")
    _write_private(private, key, serialization.PrivateFormat.OpenSSH)
    atomic_write_bytes(
        public,
        key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        + b"\n",
    )
    return private, public


def load_site_public_key(path: Path) -> bytes:
    """Validate an OpenSSH ECDSA public key file and return its bytes."""
    try:
        data = Path(path).read_bytes().strip()
        key = serialization.load_ssh_public_key(data)
    except (OSError, ValueError, UnsupportedAlgorithm) as exc:
        raise MmflError(f"{path} is not an OpenSSH public key: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise MmflError(f"{path}: SuperNode keys must be ECDSA (mmfl client keygen makes them)")
    return data


def flower_key_header(openssh_key: bytes) -> str:
    """The ``flwr-public-key`` header a SuperNode with this key sends (Flower 1.42: base64 of
    the PEM SubjectPublicKeyInfo), so the proxy can refuse unregistered keys by header."""
    key = serialization.load_ssh_public_key(openssh_key.strip())
    pem = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(pem).decode("ascii")


def key_fingerprint(public_key: bytes) -> str:
    return "SHA256:" + hashlib.sha256(public_key.strip()).hexdigest()[:32]
