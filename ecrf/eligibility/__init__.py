"""Eligibility: the study's declarative criteria (forms/criteria.yaml) evaluated over the store's item facts."""
