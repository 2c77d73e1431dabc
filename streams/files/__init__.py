"""Local files: NDJSON event logs and atomic replacement."""
