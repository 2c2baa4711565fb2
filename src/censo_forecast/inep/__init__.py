"""What censo-forecast knows about INEP: catalog, download, archives, ingest, synthetic census."""
