"""Randomness for a DP site that no one outside it can predict or replay.

DP-SGD's guarantee assumes the noise and the Poisson batches are unknown to the adversary. A
seeded generator breaks that: whoever knows the seed (here it was derived from the run seed and
the site id) replays the noise bit for bit and subtracts it. Opacus' ``secure_mode`` would fix
this but needs ``torchcsprng``, which has no build for current torch. So every draw here comes
from a ChaCha20 keystream (the cipher behind Linux's ``/dev/urandom``) keyed with 256 bits from
``os.urandom`` when the object is made. The key is held in memory only, never stored and never
derived from a seed: two runs of the same round draw independent batches and noise.

* uniforms: 52 random bits as the mantissa of a double in [1, 2), minus 1: ``u`` in [0, 1);
* Gaussians (Box-Muller): ``z = sqrt(-2 ln(1 - u1)) * (cos 2 pi u2, sin 2 pi u2)``, so
  ``|z| < 8.5`` (a normal draw lies beyond with probability below 1e-16);
* a noisy count (discrete Laplace, ``P(k) ~ exp(-eps |k|)``, the difference of two geometric
  variables), for releasing a data set's size under epsilon-DP.
"""

from __future__ import annotations

import math
import os

import numpy as np
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

_MANTISSA = 0x000F_FFFF_FFFF_FFFF
_ONE = 0x3FF0_0000_0000_0000  # the bit pattern of 1.0


class SecureRandom:
    """A ChaCha20 keystream with a fresh OS-entropy key: uniforms, integers, Gaussians."""

    def __init__(self) -> None:
        # 32-bit block counter starts at 0; 96-bit random nonce; 256-bit random key.
        nonce = bytes(4) + os.urandom(12)
        self._stream = Cipher(algorithms.ChaCha20(os.urandom(32), nonce), mode=None).encryptor()
        self._zeros = b""  # the plaintext: the keystream XOR zeros is the keystream

    def _words(self, n: int) -> torch.Tensor:
        """``n`` uniformly random 64-bit words."""
        if len(self._zeros) < 8 * n:
            self._zeros = bytes(8 * n)
        out = bytearray(8 * n + 15)  # update_into wants room for a block's worth of slack
        written = self._stream.update_into(memoryview(self._zeros)[: 8 * n], out)
        return torch.frombuffer(out, dtype=torch.int64, count=written // 8)

    def _unit_plus_one(self, n: int) -> torch.Tensor:
        """``n`` uniforms in [1, 2) as float64: 52 random mantissa bits under exponent 0."""
        if n == 0:
            return torch.ones(0, dtype=torch.float64)
        return self._words(n).bitwise_and_(_MANTISSA).bitwise_or_(_ONE).view(torch.float64)

    def uniform(self, n: int) -> np.ndarray:
        """``n`` uniforms in [0, 1)."""
        return (self._unit_plus_one(n) - 1.0).numpy()

    def below(self, high: np.ndarray) -> np.ndarray:
        """One integer uniformly in ``[0, high[i])`` for each entry (bias below 2**-40)."""
        high = np.asarray(high, dtype=np.int64)
        return np.minimum((self.uniform(len(high)) * high).astype(np.int64), high - 1)

    def normal(
        self,
        shape: torch.Size | tuple[int, ...],
        std: float,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> torch.Tensor:
        """Gaussian noise ``N(0, std^2)`` of ``shape``."""
        n = math.prod(shape)
        half = (n + 1) // 2
        f = self._unit_plus_one(2 * half)
        # 1 - u1 is exact in float64 and lies in (0, 1]; float32 keeps its relative precision.
        radius = torch.log((2.0 - f[:half]).to(torch.float32)).mul_(-2.0).sqrt_().mul_(std)
        angle = (f[half:] - 1.0).to(torch.float32).mul_(2.0 * math.pi)
        z = torch.empty(2 * half, dtype=torch.float32)
        torch.mul(radius, torch.cos(angle), out=z[:half])
        torch.mul(radius, torch.sin(angle), out=z[half:])
        return z[:n].reshape(shape).to(dtype=dtype, device=device)

    def noisy_count(self, n: int, epsilon: float) -> int:
        """``n`` plus discrete Laplace noise: an epsilon-DP release of a count (sensitivity 1
        under adding or removing one unit), never below 1."""
        u = self.uniform(2)
        # Geometric on {0, 1, ...} with P(k) = (1 - a) a^k, a = exp(-epsilon), by inversion:
        # floor(ln(1 - u) / ln a); 1 - u lies in (0, 1].
        g1, g2 = (math.floor(math.log1p(-x) / -epsilon) for x in u)
        return max(1, n + g1 - g2)
