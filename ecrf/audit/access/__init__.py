"""Who saw which subject's identifiers: an append-only log of responses that carried them (ids only, no PHI)."""
