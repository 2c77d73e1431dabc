"""What the pages need besides the API's state: the log, the rule books, where claim files
go, how long a session lives."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from projections.rules import SHIPPED_CATALOG, RuleCatalog
from streams.kafka.clients import Connection

SESSION_IDLE_S = 30 * 60
SESSION_MAX_S = 12 * 60 * 60


@dataclass(frozen=True)
class WebConfig:
    """``kafka`` and ``log_topic``: where audits and closes read (and closes append);
    ``claims_dir``: where a close from a page writes its claim files."""

    kafka: Connection
    log_topic: str
    claims_dir: Path
    catalog: RuleCatalog = SHIPPED_CATALOG
    session_idle_s: float = SESSION_IDLE_S
    session_max_s: float = SESSION_MAX_S
    secure_cookies: bool = False  # Secure even over plain HTTP (TLS ends at a proxy)


WEB = web.AppKey("web_config", WebConfig)
