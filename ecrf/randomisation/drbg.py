"""HMAC_DRBG with SHA-256 (NIST SP 800-90A Rev. 1, section 10.1.2): a deterministic cryptographic generator.

Seeded from the randomisation secret and the study/stratum, it gives the same allocation lists every time,
so the unblinded statistician can regenerate and verify them; without the secret they cannot be predicted.
No reseeding: a list is at most a few thousand draws, far below the 2^48 requests the standard allows.
"""

import hashlib
import hmac


class HmacDrbg:
    def __init__(self, entropy: bytes, nonce: bytes, personalization: bytes = b""):
        self._key = b"\x00" * 32
        self._value = b"\x01" * 32
        self._update(entropy + nonce + personalization)

    def _hmac(self, key: bytes, data: bytes) -> bytes:
        return hmac.new(key, data, hashlib.sha256).digest()

    def _update(self, provided: bytes = b"") -> None:
        self._key = self._hmac(self._key, self._value + b"\x00" + provided)
        self._value = self._hmac(self._key, self._value)
        if provided:
            self._key = self._hmac(self._key, self._value + b"\x01" + provided)
            self._value = self._hmac(self._key, self._value)

    def generate(self, length: int) -> bytes:
        out = b""
        while len(out) < length:
            self._value = self._hmac(self._key, self._value)
            out += self._value
        self._update()
        return out[:length]

    def below(self, n: int) -> int:
        """A uniform integer in [0, n), by rejection (no modulo bias)."""
        if n < 1:
            raise ValueError("n must be positive")
        if n == 1:
            return 0
        bits = (n - 1).bit_length()
        size = (bits + 7) // 8
        while True:
            candidate = int.from_bytes(self.generate(size), "big") >> (size * 8 - bits)
            if candidate < n:
                return candidate

    def shuffle(self, items: list) -> None:
        """Fisher-Yates, in place."""
        for i in range(len(items) - 1, 0, -1):
            j = self.below(i + 1)
            items[i], items[j] = items[j], items[i]
