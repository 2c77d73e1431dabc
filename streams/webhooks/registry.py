"""The webhook registry: who receives an org's alerts, kept in a JSON file.

A webhook is an org, an HTTPS URL, the alert kinds it wants (None: all, including kinds
added later) and a signing secret. Unlike an API key the secret is stored in plaintext:
the delivery process signs every request with it, so it must be able to read it. The
file is therefore as sensitive as the receivers' own credentials (docs/webhooks.md).

The file (``--webhooks``, else ``$CARETALLY_WEBHOOKS``, else ``.caretally/webhooks.json``)
is rewritten atomically with mode 0600 under an advisory lock, as the API key file is
(``streams.http.api_keys``); ``caretally webhooks deliver`` re-reads it when it changes.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import os
import secrets
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, get_args
from urllib.parse import urlsplit

import orjson

from schemas.views import AlertKind
from streams.files.atomic import write_bytes

ENV = "CARETALLY_WEBHOOKS"
DEFAULT_PATH = Path(".caretally/webhooks.json")
FORMAT_VERSION = 1
ALERT_KINDS: tuple[str, ...] = get_args(AlertKind)
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
MAX_URL_CHARS = 2048
_SECRET_BYTES = 32


class WebhookError(Exception):
    """The registry cannot be read or written, a value is refused, or an id is unknown."""


@dataclass(frozen=True, slots=True)
class Webhook:
    """One registered receiver, as stored (the secret included: see the module docstring)."""

    webhook_id: str
    org_id: str
    url: str
    kinds: tuple[str, ...] | None
    secret: str
    created_at: str

    def wants(self, org_id: str, kind: str) -> bool:
        """Whether an alert of ``org_id`` and ``kind`` goes here: never another org's."""
        return self.org_id == org_id and (self.kinds is None or kind in self.kinds)

    def public(self) -> dict[str, Any]:
        """What ``webhooks list`` shows: everything but the secret."""
        return {
            "webhook_id": self.webhook_id,
            "org_id": self.org_id,
            "url": self.url,
            "kinds": list(self.kinds) if self.kinds is not None else None,
            "created_at": self.created_at,
        }


def resolve_path(option: str | os.PathLike[str] | None) -> Path:
    """The registry: ``--webhooks``, else ``$CARETALLY_WEBHOOKS``, else the default."""
    if option:
        return Path(option)
    env = os.environ.get(ENV, "").strip()
    return Path(env) if env else DEFAULT_PATH


def check_url(url: str) -> str:
    """``url`` if a webhook may use it, else :class:`WebhookError` saying why: https (http
    only to a loopback host, for local relays and tests), a host, no credentials."""
    if not url or len(url) > MAX_URL_CHARS:
        raise WebhookError(f"a webhook URL is 1 to {MAX_URL_CHARS} characters")
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in url):
        raise WebhookError("a webhook URL cannot hold spaces or control characters")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (a bad port raises here)
    except ValueError as exc:
        raise WebhookError(f"not a URL: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("https", "http"):
        raise WebhookError(f"a webhook URL must start with https:// (not {scheme or 'nothing'}://)")
    host = (parts.hostname or "").lower()
    if not host:
        raise WebhookError("a webhook URL needs a host, e.g. https://hooks.example.com/caretally")
    if parts.username is not None or parts.password is not None:
        raise WebhookError(
            "a webhook URL cannot hold credentials (user:password@); the receiver "
            "authenticates requests by their signature"
        )
    if parts.fragment:
        raise WebhookError("a webhook URL cannot have a #fragment (it is never sent)")
    if scheme == "http" and not _loopback(host):
        raise WebhookError(
            "a webhook URL must use https; http is allowed only to 127.0.0.1, ::1 or "
            "localhost (a local relay)"
        )
    return url


def _loopback(host: str) -> bool:
    if host in LOOPBACK_HOSTS:
        return True
    with contextlib.suppress(ValueError):
        return ipaddress.ip_address(host) in (
            ipaddress.ip_address("127.0.0.1"),
            ipaddress.ip_address("::1"),
        )
    return False


def parse_kinds(text: str | None) -> tuple[str, ...] | None:
    """``threshold_crossed,cap_reached`` as a sorted tuple of alert kinds; None or ``all``:
    every kind. An unknown kind is a :class:`WebhookError` listing the known ones."""
    if text is None or text.strip() in ("", "all"):
        return None
    kinds = {k.strip() for k in text.split(",") if k.strip()}
    unknown = sorted(kinds - set(ALERT_KINDS))
    if unknown:
        raise WebhookError(
            f"unknown alert kind(s) {', '.join(unknown)}; known: {', '.join(ALERT_KINDS)}"
        )
    if not kinds:
        return None
    return tuple(sorted(kinds))


def _now() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _record(item: dict[str, Any]) -> Webhook:
    kinds = item["kinds"]
    return Webhook(
        webhook_id=str(item["webhook_id"]),
        org_id=str(item["org_id"]),
        url=str(item["url"]),
        kinds=tuple(kinds) if kinds is not None else None,
        secret=str(item["secret"]),
        created_at=str(item["created_at"]),
    )


def load(path: Path) -> list[Webhook]:
    """The webhooks in ``path`` (none when the file does not exist)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise WebhookError(f"cannot read webhook registry {str(path)!r}: {exc.strerror}") from None
    try:
        doc = orjson.loads(raw)
        return [_record(item) for item in doc["webhooks"]]
    except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
        raise WebhookError(
            f"{str(path)!r} is not a caretally webhook registry ({type(exc).__name__}: {exc})"
        ) from None


def _write(path: Path, hooks: Iterable[Webhook]) -> None:
    items = []
    for h in hooks:
        item = asdict(h)
        item["kinds"] = list(h.kinds) if h.kinds is not None else None
        items.append(item)
    doc = {"version": FORMAT_VERSION, "webhooks": items}
    write_bytes(path, orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n")  # 0600


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Serialize read-modify-write of the registry between processes."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        lock = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise WebhookError(f"cannot write webhook registry {str(path)!r}: {exc.strerror}") from None
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield
    finally:
        os.close(lock)


def add_webhook(path: Path, org_id: str, url: str, kinds: tuple[str, ...] | None) -> Webhook:
    """Register a webhook; the returned record holds its new secret (print it once)."""
    check_url(url)
    with _locked(path):
        hooks = load(path)
        taken = {h.webhook_id for h in hooks}
        webhook_id = f"wh_{secrets.token_hex(4)}"
        while webhook_id in taken:
            webhook_id = f"wh_{secrets.token_hex(4)}"
        hook = Webhook(
            webhook_id=webhook_id,
            org_id=org_id,
            url=url,
            kinds=kinds,
            secret=f"whsec_{secrets.token_urlsafe(_SECRET_BYTES)}",
            created_at=_now(),
        )
        _write(path, [*hooks, hook])
    return hook


def remove_webhook(path: Path, webhook_id: str) -> Webhook:
    """Delete a webhook (its secret with it); its parked deliveries are then skipped."""
    with _locked(path):
        hooks = load(path)
        for hook in hooks:
            if hook.webhook_id == webhook_id:
                _write(path, [h for h in hooks if h.webhook_id != webhook_id])
                return hook
    raise WebhookError(f"no webhook with id {webhook_id!r} in {str(path)!r}")


class Registry:
    """The registry as a long-running process sees it: re-read when the file changes
    (one ``stat`` per :meth:`refresh`); a file that cannot be read, or is gone, keeps the
    last good webhooks (a half-edited or misplaced file must not stop or redirect
    deliveries: alerts read for no webhook are committed, never sent)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.hooks: list[Webhook] = []
        self._stamp: tuple[int, int, int] | None = None
        self.checked = 0.0
        self.reload()

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def reload(self) -> None:
        """Read the file now (:class:`WebhookError` if it cannot be read)."""
        stamp = self._stat()
        self.hooks = load(self.path) if stamp is not None else []
        self._stamp = stamp
        self.checked = time.monotonic()

    def refresh(self) -> bool:
        """Re-read the file if it changed; whether it did (and was read)."""
        stamp = self._stat()
        self.checked = time.monotonic()
        if stamp == self._stamp:
            return False
        if stamp is None:  # keep delivering: reading alerts for no one would lose them
            raise WebhookError(f"webhook registry {str(self.path)!r} is gone")
        try:
            self.reload()
        except WebhookError:
            self._stamp = stamp
            raise
        return True

    def get(self, webhook_id: str) -> Webhook | None:
        return next((h for h in self.hooks if h.webhook_id == webhook_id), None)

    def targets(self, org_id: str, kind: str) -> list[Webhook]:
        """The webhooks an alert of ``org_id`` and ``kind`` goes to."""
        return [h for h in self.hooks if h.wants(org_id, kind)]
