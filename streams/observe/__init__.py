"""What the long-running processes share to be observed: log setup, Prometheus exposition."""
