"""The demos and their synthetic EHR traffic, and the client side of the pipeline."""
