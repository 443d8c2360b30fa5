"""CDISC exports for sponsors and regulators: ODM 1.3.2 (archive with audit trail, snapshot), SDTM datasets as
Dataset-JSON 1.1 and SAS XPT v5, and their Define-XML 2.1, run as export jobs on the export worker."""
