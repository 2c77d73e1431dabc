"""The shell: everything with I/O, in rooms named for what lives there.

``cli`` (commands), ``kafka`` (the adapter), ``worker`` (the stream processors), ``ingest``,
``http``, ``archive``, ``close``, ``files``, ``render`` and ``demo``. See docs/architecture.md.
"""
