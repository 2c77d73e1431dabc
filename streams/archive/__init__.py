"""The Parquet archive of the log: its format, the archiver, replay, SQL and restore."""
