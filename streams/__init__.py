"""The shell: CLI, file replay, and (later) Kafka streams, HTTP and the archive."""
