"""Safety: the serious adverse event reporting clock (CRF-SPEC 7.2)."""
