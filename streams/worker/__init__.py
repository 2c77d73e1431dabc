"""The stream worker: the Faust app, the ingress gate, partition folds and their snapshots."""
