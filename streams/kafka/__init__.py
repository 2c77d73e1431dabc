"""The Kafka adapter: settings and clients, topics, record formats, the log's writer and
reader, and the embedded broker (with its TLS terminator)."""
