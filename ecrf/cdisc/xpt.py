"""SAS transport (XPORT) version 5, written by hand from the SAS technical note TS-140 ("The record layout of a
SAS transport file"): what the FDA accepts. 80-byte records; numbers are IBM 370 doubles; character values are
ASCII, at most 200 bytes; names at most 8 characters, labels 40. No third-party writer needed (pyreadstat, used
by the tests to read the files back, writes XPT only through pandas or polars)."""

import math
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, BinaryIO

RECORD = 80
MISSING = b"\x2e" + b"\x00" * 7
MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")


@dataclass(frozen=True)
class Variable:
    name: str
    label: str
    numeric: bool
    length: int  # characters for character variables; 8 for numbers


def ibm_double(value: float | int | None) -> bytes:
    """An IEEE double as an IBM 370 hexadecimal float (8 bytes); None is SAS missing (.)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    if value == 0:
        return b"\x00" * 8
    sign = 0x80 if value < 0 else 0
    mantissa, exponent = math.frexp(abs(float(value)))  # value = m * 2**e, 0.5 <= m < 1
    hexponent = (exponent + 3) // 4
    fraction = mantissa / (1 << (4 * hexponent - exponent))  # in [1/16, 1)
    digits = int(round(fraction * (1 << 56)))
    if digits >= 1 << 56:
        digits >>= 4
        hexponent += 1
    if not -64 <= hexponent <= 63:
        raise ValueError(f"{value} is outside the range of an IBM double")
    return bytes([sign | (hexponent + 64)]) + digits.to_bytes(7, "big")


def _stamp(moment: datetime) -> bytes:
    return f"{moment.day:02d}{MONTHS[moment.month - 1]}{moment.year % 100:02d}:{moment:%H:%M:%S}".encode()


def _text(value: str, length: int) -> bytes:
    data = value.encode("ascii", "replace")[:length]
    return data + b" " * (length - len(data))


def _header(kind: str, numbers: str = "0" * 30) -> bytes:
    return f"HEADER RECORD*******{kind:<8}HEADER RECORD!!!!!!!{numbers}".encode().ljust(RECORD)


def _pad(data: bytes, fill: bytes = b" ") -> bytes:
    rest = len(data) % RECORD
    return data if rest == 0 else data + fill * (RECORD - rest)


def write(
    out: BinaryIO, name: str, label: str, variables: list[Variable], rows: Iterable[list[Any]], created: datetime
) -> int:
    """One dataset (member) in one transport file; returns the number of observations written."""
    stamp = _stamp(created)
    out.write(_header("LIBRARY"))
    out.write(b"SAS     SAS     SASLIB  9.4     " + _text("ecrf", 8) + b" " * 24 + stamp)
    out.write(stamp + b" " * 64)
    out.write(_header("MEMBER", "000000000000000001600000000140"))
    out.write(_header("DSCRPTR"))
    out.write(b"SAS     " + _text(name, 8) + b"SASDATA " + _text("9.4", 8) + _text("ecrf", 8) + b" " * 24 + stamp)
    out.write(stamp + b" " * 16 + _text(label, 40) + _text("", 8))
    out.write(_header("NAMESTR", f"000000{len(variables):04d}" + "0" * 20))
    position, namestrs = 0, b""
    for number, variable in enumerate(variables, start=1):
        namestrs += struct.pack(
            ">hhhh8s40s8shhh2s8shhi52s",
            1 if variable.numeric else 2,
            0,
            variable.length,
            number,
            _text(variable.name, 8),
            _text(variable.label, 40),
            _text("", 8),
            0,
            0,
            0,
            b"\x00\x00",
            _text("", 8),
            0,
            0,
            position,
            b"\x00" * 52,
        )
        position += variable.length
    out.write(_pad(namestrs))
    out.write(_header("OBS"))
    count, pending = 0, bytearray()
    for row in rows:
        for variable, value in zip(variables, row):
            if variable.numeric:
                pending += ibm_double(value)
            else:
                pending += _text("" if value is None else str(value), variable.length)
        count += 1
        if len(pending) >= 65536:
            whole = len(pending) - len(pending) % RECORD
            out.write(bytes(pending[:whole]))
            del pending[:whole]
    out.write(_pad(bytes(pending)))
    return count
