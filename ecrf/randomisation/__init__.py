"""Randomisation by the system: stratified permuted blocks, lists generated from a secret, concealed until
allocation (CRF-SPEC version 2, section 6). The scheme is data: `forms/randomisation.yaml`."""
