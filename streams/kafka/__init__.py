"""Kafka plumbing: where the cluster is, the embedded broker, topics, record formats, reads."""
