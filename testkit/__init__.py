"""Helpers shared by the tests and the benches (a free port, the synthetic eligibility patients).

It lives at the repository root, beside `tests/` and `bench/`, and is not shipped with the package: pytest
puts the root on the path (`pythonpath` in pyproject.toml) and every bench script inserts it, so both import
`testkit` and `bench/` never imports `tests`.
"""
