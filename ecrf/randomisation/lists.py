"""Allocation lists: permuted blocks per stratum from the HMAC_DRBG, and their SHA-256 checksums. Pure: no
database, no settings; the same secret, study, scheme and stratum always give the same list."""

import hashlib
from dataclasses import dataclass

from ecrf.randomisation.drbg import HmacDrbg
from ecrf.randomisation.scheme import Scheme

DOMAIN = b"ecrf-randomisation-list/1"


@dataclass(frozen=True)
class Slot:
    sequence: int  # 1-based position in the stratum's list
    block: int  # 1-based block number
    block_size: int
    arm: str


def generator(secret: bytes, study_id: str, scheme: Scheme, stratum: str) -> HmacDrbg:
    personalization = b"|".join([DOMAIN, study_id.encode(), scheme.fingerprint.encode(), stratum.encode()])
    return HmacDrbg(secret, study_id.encode(), personalization)


def generate(secret: bytes, study_id: str, scheme: Scheme, stratum: str) -> list[Slot]:
    """Whole blocks until the list holds at least `list_length` slots. Each block's size is drawn with equal
    probability from `block_sizes`; it holds every arm in the ratio, shuffled (Fisher-Yates)."""
    drbg = generator(secret, study_id, scheme, stratum)
    arms = sorted(scheme.ratio)
    unit = sum(scheme.ratio.values())
    slots: list[Slot] = []
    block = 0
    while len(slots) < scheme.list_length:
        block += 1
        size = scheme.block_sizes[drbg.below(len(scheme.block_sizes))]
        content = [arm for arm in arms for _ in range(scheme.ratio[arm] * size // unit)]
        drbg.shuffle(content)
        slots += [Slot(len(slots) + i + 1, block, size, arm) for i, arm in enumerate(content)]
    return slots


def canonical(study_id: str, stratum: str, slots: list[Slot]) -> bytes:
    """The checksum's input: one line per slot."""
    lines = [f"{study_id}\t{stratum}\t{s.sequence}\t{s.block}\t{s.block_size}\t{s.arm}" for s in slots]
    return ("\n".join(lines) + "\n").encode()


def checksum(study_id: str, stratum: str, slots: list[Slot]) -> str:
    return hashlib.sha256(canonical(study_id, stratum, slots)).hexdigest()
