"""The webhook registry: who receives an org's alerts, kept in a JSON file.

A webhook is an org, an HTTPS URL, the alert kinds it wants (None: all, including kinds
added later) and a signing secret. Unlike an API key the secret is stored in plaintext:
the delivery process signs every request with it, so it must be able to read it. The
file is therefore as sensitive as the receivers' own credentials (docs/webhooks.md).

The file (``--webhooks``, else ``$CARETALLY_WEBHOOKS``, else ``.caretally/webhooks.json``)
is a :class:`~streams.files.json_store.JsonStore`, as the API key file is;
``caretally webhooks deliver`` re-reads it when it changes. Every URL is checked when it
is added and again whenever the file is read (a hand-edited entry could skip the first
check): one a delivery could not use is skipped with a warning, never sent to.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import secrets
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, get_args
from urllib.parse import urlsplit

from schemas.views import AlertKind
from streams.files.json_store import JsonStore, utc_now

log = logging.getLogger("caretally.webhooks")

ENV = "CARETALLY_WEBHOOKS"
DEFAULT_PATH = Path(".caretally/webhooks.json")
FORMAT_VERSION = 1
ALERT_KINDS: tuple[str, ...] = get_args(AlertKind)
LOOPBACK_NAMES = frozenset({"localhost"})
MAX_URL_CHARS = 2048
MAX_HOST_CHARS = 253
MAX_LABEL_CHARS = 63
_NUMERIC_LABEL = re.compile(r"(0x[0-9a-f]*|[0-9]+)")
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
    only to a loopback host, for local relays and tests), a host a client can look up, no
    credentials, and no literal address of a private, link-local, multicast, unspecified or
    reserved network (a loopback one excepted). A DNS name is not resolved here: only an
    operator registers webhooks, and where a name points is theirs to vouch for."""
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
    loopback = _check_host(host)
    if scheme == "http" and not loopback:
        raise WebhookError(
            "a webhook URL must use https; http is allowed only to a loopback address "
            "(127.0.0.1, ::1) or localhost (a local relay)"
        )
    return url


def _check_host(host: str) -> bool:
    """Refuse a host no request could go to, or a literal non-public address; whether
    it is a loopback one."""
    if host in LOOPBACK_NAMES:
        return True
    address = _address(host)
    if address is None:
        _check_name(host)
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.is_loopback:
        return True
    kinds = [
        what
        for what, flag in (
            ("unspecified", address.is_unspecified),
            ("multicast", address.is_multicast),
            ("link-local", address.is_link_local),
            ("private", address.is_private),
            ("reserved", address.is_reserved),
        )
        if flag
    ]
    if not kinds and address.is_global:
        return False
    raise WebhookError(
        f"a webhook URL cannot point at a non-public address ({host}: "
        f"{kinds[0] if kinds else 'not global'}); a receiver on a private network needs a "
        "public DNS name (e.g. a relay's)"
    )


def _address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address a host literal names; None for a DNS name. Numbers in other forms
    than a dotted quad (``0x7f000001``, ``2130706433``, ``127.1``, ``0177.0.0.1``) name
    an IPv4 address too for many clients: they are refused, not guessed at."""
    if ":" in host:
        try:
            return ipaddress.IPv6Address(host)
        except ValueError:
            raise WebhookError(f"not a valid IPv6 address: {host}") from None
    if _NUMERIC_LABEL.fullmatch(host.rstrip(".").rsplit(".", 1)[-1]):
        try:
            return ipaddress.IPv4Address(host)
        except ValueError:
            raise WebhookError(
                f"a numeric host must be a dotted-quad IPv4 address like 203.0.113.7 (not {host})"
            ) from None
    return None


def _check_name(host: str) -> None:
    """A DNS name a client can encode (IDNA): labels of 1 to 63 characters, 253 in all."""
    try:
        ascii_host = host.encode("idna").decode("ascii")
    except UnicodeError as exc:
        raise WebhookError(f"not a valid host name ({host[:80]}): {exc}") from None
    labels = ascii_host.rstrip(".").split(".")
    if len(ascii_host.rstrip(".")) > MAX_HOST_CHARS or not all(
        0 < len(label) <= MAX_LABEL_CHARS for label in labels
    ):
        raise WebhookError(
            f"not a valid host name ({host[:80]}): each dot-separated part is 1 to "
            f"{MAX_LABEL_CHARS} characters, {MAX_HOST_CHARS} in all"
        )


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


def _record(item: dict[str, Any]) -> Webhook:
    kinds = item["kinds"]
    if kinds is not None and not isinstance(kinds, list):
        raise TypeError(f"kinds of {item.get('webhook_id')!r} is neither a list nor null")
    return Webhook(
        webhook_id=str(item["webhook_id"]),
        org_id=str(item["org_id"]),
        url=str(item["url"]),
        kinds=tuple(kinds) if kinds is not None else None,
        secret=str(item["secret"]),
        created_at=str(item["created_at"]),
    )


def _store(path: Path) -> JsonStore:
    return JsonStore(
        path,
        items="webhooks",
        version=FORMAT_VERSION,
        noun="webhook registry",
        error=WebhookError,
        malformed="{path} is not a caretally webhook registry ({type}: {error})",
    )


def usable(hooks: Iterable[Webhook], path: Path) -> list[Webhook]:
    """The webhooks whose URL passes :func:`check_url`; each other one is left out with a
    warning naming its id (a hand-edited file must not stop every org's deliveries)."""
    out = []
    for hook in hooks:
        try:
            check_url(hook.url)
        except WebhookError as exc:
            log.warning(
                "webhook %s of %s is skipped, its URL is refused: %s", hook.webhook_id, path, exc
            )
            continue
        out.append(hook)
    return out


def load(path: Path) -> list[Webhook]:
    """The usable webhooks in ``path`` (see :func:`usable`; none when there is no file)."""
    return usable(load_all(path), path)


def load_all(path: Path) -> list[Webhook]:
    """Every webhook in ``path``, usable or not (what ``add`` and ``remove`` rewrite)."""
    return _store(path).read(_record)


def _write(path: Path, hooks: Iterable[Webhook]) -> None:
    items = []
    for h in hooks:
        item = asdict(h)
        item["kinds"] = list(h.kinds) if h.kinds is not None else None
        items.append(item)
    _store(path).write(items)


def add_webhook(path: Path, org_id: str, url: str, kinds: tuple[str, ...] | None) -> Webhook:
    """Register a webhook; the returned record holds its new secret (print it once)."""
    check_url(url)
    store = _store(path)
    with store.locked():
        hooks = load_all(path)
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
            created_at=utc_now(),
        )
        _write(path, [*hooks, hook])
    return hook


def remove_webhook(path: Path, webhook_id: str) -> Webhook:
    """Delete a webhook (its secret with it); its parked deliveries are then skipped."""
    with _store(path).locked():
        hooks = load_all(path)
        for hook in hooks:
            if hook.webhook_id == webhook_id:
                _write(path, [h for h in hooks if h.webhook_id != webhook_id])
                return hook
    raise WebhookError(f"no webhook with id {webhook_id!r} in {str(path)!r}")


class Registry:
    """The registry as a long-running process sees it: re-read when the file changes
    (one ``stat`` per :meth:`refresh`); a file that cannot be read, or is gone, keeps the
    last good webhooks (a half-edited or misplaced file must not stop or redirect
    deliveries: alerts read for no webhook are committed, never sent). For the same
    reason there must be a file to begin with (:class:`WebhookError` if not)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.hooks: list[Webhook] = []
        self._stamp: tuple[int, int, int] | None = None
        if self._stat() is None:
            raise WebhookError(
                f"no webhook registry at {path}: add a webhook with `caretally webhooks add` "
                "or pass --webhooks FILE"
            )
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

    def refresh(self) -> bool:
        """Re-read the file if it changed; whether it did (and was read)."""
        stamp = self._stat()
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
