"""Administration: the effective configuration (never a secret) and the audit chain check."""
