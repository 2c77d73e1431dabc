"""Prometheus exposition for the long-running processes.

Every process (and every app a test starts in process) keeps its metrics in its own
:class:`~prometheus_client.CollectorRegistry`, never the library's global default, so two
of them in one interpreter do not collide. Labels never hold an org or patient id: only
bounded sets (route templates, status codes, topic roles).
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    ProcessCollector,
    generate_latest,
)

__all__ = ["CONTENT_TYPE_LATEST", "CollectorRegistry", "exposition", "new_registry"]

HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def new_registry(process: bool = False) -> CollectorRegistry:
    """A registry of one's own; with ``process``, it also reports the process's CPU time,
    memory and open files (``process_*``, read from ``/proc`` at each scrape)."""
    registry = CollectorRegistry(auto_describe=True)
    if process:
        ProcessCollector(registry=registry)
    return registry


def exposition(registry: CollectorRegistry) -> tuple[bytes, str]:
    """The registry in the Prometheus text format, and its ``Content-Type``."""
    return generate_latest(registry), CONTENT_TYPE_LATEST


def method_label(method: str) -> str:
    """A request method as a label value: the standard ones, else ``other`` (a client
    chooses the method, and must not grow the number of time series)."""
    return method if method in HTTP_METHODS else "other"
