"""SMART Backend Services: the registry of machine clients, the token endpoint and this server's signing key."""
