"""Reading event files (NDJSON, CSV) into wire-contract events for ``caretally ingest``."""
