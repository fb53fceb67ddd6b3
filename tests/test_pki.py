"""Site public keys: anything but an OpenSSH ECDSA key is refused in one line (issue F2)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mmfl.errors import MmflError
from mmfl.pki import load_site_public_key


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"garbage", "is not an OpenSSH public key: Invalid line format"),
        (b"ecdsa-sha2-nistp999 AAAA", "is not an OpenSSH public key: Unsupported key type"),
        (b"ssh-rsa AAAA", "is not an OpenSSH public key"),
    ],
)
def test_a_malformed_public_key_is_one_line(tmp_path: Path, content: bytes, expected: str) -> None:
    (tmp_path / "site.pub").write_bytes(content)
    with pytest.raises(MmflError, match=expected) as info:
        load_site_public_key(tmp_path / "site.pub")
    assert "\n" not in str(info.value)


def test_a_missing_key_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(MmflError, match="is not an OpenSSH public key"):
        load_site_public_key(tmp_path / "nope.pub")
