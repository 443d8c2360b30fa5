"""A small syntactic UCUM check (case-sensitive c/s codes).

It accepts the UCUM grammar (terms joined by '.' and '/', exponents, parentheses, annotations,
integer factors, the 10* / 10^ powers) over a curated list of atoms and metric prefixes. It does
not check dimensions: it exists so a study file cannot declare a free-text unit as a UCUM code.
"""

from __future__ import annotations

import re

PREFIXES = (
    "da",
    "Ki",
    "Mi",
    "Gi",
    "Ti",
    "Y",
    "Z",
    "E",
    "P",
    "T",
    "G",
    "M",
    "k",
    "h",
    "d",
    "c",
    "m",
    "u",
    "n",
    "p",
    "f",
    "a",
    "z",
    "y",
)

METRIC_ATOMS = frozenset(
    {
        "m",
        "s",
        "g",
        "rad",
        "K",
        "C",
        "cd",
        "mol",
        "sr",
        "Hz",
        "N",
        "Pa",
        "J",
        "W",
        "A",
        "V",
        "F",
        "Ohm",
        "S",
        "Wb",
        "T",
        "H",
        "lm",
        "lx",
        "Bq",
        "Gy",
        "Sv",
        "l",
        "L",
        "ar",
        "t",
        "bar",
        "u",
        "eV",
        "pc",
        "kat",
        "U",
        "[IU]",
        "[iU]",
        "eq",
        "osm",
        "cal",
        "B",
        "dB",
        "Np",
        "m[Hg]",
        "m[H2O]",
        "b",
        "Ci",
        "R",
        "RAD",
        "REM",
        "st",
        "Ao",
        "dyn",
        "erg",
        "P",
        "St",
        "G",
        "Mx",
        "Oe",
        "Gb",
        "sb",
        "Lmb",
        "ph",
        "Ky",
        "g%",
        "[g]",
        "gf",
        "bit",
        "By",
        "Bd",
    }
)

NON_METRIC_ATOMS = frozenset(
    {
        "10*",
        "10^",
        "[pi]",
        "%",
        "[ppth]",
        "[ppm]",
        "[ppb]",
        "[pptr]",
        "min",
        "h",
        "d",
        "wk",
        "mo",
        "mo_j",
        "mo_g",
        "mo_s",
        "a",
        "a_j",
        "a_g",
        "a_t",
        "'",
        "''",
        "deg",
        "gon",
        "Cel",
        "[degF]",
        "[degR]",
        "[in_i]",
        "[ft_i]",
        "[yd_i]",
        "[mi_i]",
        "[lb_av]",
        "[oz_av]",
        "[gr]",
        "[ston_av]",
        "[in_us]",
        "[ft_us]",
        "[pH]",
        "[drp]",
        "[arb'U]",
        "[USP'U]",
        "[CFU]",
        "[HPF]",
        "[LPF]",
        "[iU]",
        "[IU]",
        "[mclg'U]",
        "[knk'U]",
        "[todd'U]",
        "[dye'U]",
        "[smgy'U]",
        "[bdsk'U]",
        "[ka'U]",
        "[hp'C]",
        "[hp'X]",
        "[hp'M]",
        "[hp'Q]",
        "[kp'C]",
        "[kp'X]",
        "[kp'M]",
        "[kp'Q]",
        "[psi]",
        "atm",
        "[HP]",
        "[Btu]",
        "[S]",
        "[mesh_i]",
        "[Ch]",
        "[diop]",
        "[D'ag'U]",
        "[FFU]",
        "[PFU]",
        "[BAU]",
        "[AU]",
        "[Amb'a'1'U]",
        "[PNU]",
        "[Lf]",
        "[tb'U]",
        "[EID_50]",
        "[TCID_50]",
        "[CCID_50]",
        "[ELU]",
        "[APL'U]",
        "[GPL'U]",
        "[MPL'U]",
        "[beth'U]",
        "[anti'Xa'U]",
        "[stone_av]",
        "[MET]",
        "[wood'U]",
        "mho",
        "[m/s2/Hz^(1/2)]",
        "[lne]",
        "[pnt]",
        "[pca]",
        "[HPF]",
        "[cup_us]",
        "[foz_us]",
        "[tbs_us]",
        "[tsp_us]",
        "[pt_us]",
        "[qt_us]",
        "[gal_us]",
    }
)

_TOKEN = re.compile(r"\{[^{}]*\}|\(|\)|\.|/|[^./(){}]+")
_EXPONENT = re.compile(r"^(.*?)([+-]?\d+)$")


def is_ucum_like(unit: str | None) -> bool:
    """True when `unit` parses as a UCUM case-sensitive expression over known atoms."""
    if not unit or unit != unit.strip() or " " in unit:
        return False
    try:
        tokens = _TOKEN.findall(unit)
        if "".join(tokens) != unit:
            return False
        position = _parse_term(tokens, 0, leading_division_allowed=True)
        return position == len(tokens)
    except _Invalid:
        return False


class _Invalid(Exception):
    pass


def _parse_term(tokens: list[str], pos: int, leading_division_allowed: bool) -> int:
    if pos < len(tokens) and tokens[pos] == "/" and leading_division_allowed:
        pos += 1
    pos = _parse_component(tokens, pos)
    while pos < len(tokens) and tokens[pos] in (".", "/"):
        pos = _parse_component(tokens, pos + 1)
    return pos


def _parse_component(tokens: list[str], pos: int) -> int:
    if pos >= len(tokens):
        raise _Invalid
    token = tokens[pos]
    if token == "(":
        pos = _parse_term(tokens, pos + 1, leading_division_allowed=True)
        if pos >= len(tokens) or tokens[pos] != ")":
            raise _Invalid
        return pos + 1
    if token.startswith("{"):
        return pos + 1
    if token in (".", "/", ")"):
        raise _Invalid
    if not _is_annotatable(token):
        raise _Invalid
    pos += 1
    if pos < len(tokens) and tokens[pos].startswith("{"):
        pos += 1
    return pos


def _is_annotatable(token: str) -> bool:
    if token.isdigit():
        return True
    if _is_simple_unit(token):
        return True
    match = _EXPONENT.match(token)
    return bool(match and match.group(1) and _is_simple_unit(match.group(1)))


def _is_simple_unit(text: str) -> bool:
    if text in METRIC_ATOMS or text in NON_METRIC_ATOMS:
        return True
    return any(text.startswith(prefix) and text[len(prefix) :] in METRIC_ATOMS for prefix in PREFIXES)
