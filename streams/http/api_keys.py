"""Organisation API keys for ``caretally serve``, kept hashed in a JSON file.

A key is ``ct_<org-slug>_<32 url-safe random characters>``: about 192 bits of secret, so a
plain SHA-256 of it is as good as a slow hash (no dictionary to attack) and cheap to check
on every request. Only the digest is stored, with the org it belongs to, a short key id
(what ``keys list`` and ``keys revoke`` use) and a display prefix. The plaintext is shown
once, by :func:`create_key`.

The file (``--keys``, else ``$CARETALLY_API_KEYS``, else ``.caretally/api-keys.json``) is
rewritten atomically with mode 0600, under an advisory lock so two ``keys`` commands cannot
lose each other's change. A running server re-reads it when it changes, so a revocation
takes effect within about a second, without a restart.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from streams.files.json_store import JsonStore, utc_now

ENV = "CARETALLY_API_KEYS"
DEFAULT_PATH = Path(".caretally/api-keys.json")
FORMAT_VERSION = 1
_SECRET_BYTES = 24  # 24 random bytes are 32 url-safe base64 characters


class ApiKeyError(Exception):
    """The key file cannot be read or written, or a key id is unknown."""


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """One key as stored: never the plaintext, only its SHA-256."""

    key_id: str
    org_id: str
    prefix: str
    sha256: str
    created_at: str
    revoked_at: str | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


def resolve_path(option: str | os.PathLike[str] | None) -> Path:
    """The key file: ``--keys``, else ``$CARETALLY_API_KEYS``, else the default."""
    if option:
        return Path(option)
    env = os.environ.get(ENV, "").strip()
    return Path(env) if env else DEFAULT_PATH


def org_slug(org_id: str) -> str:
    """A readable, key-safe fragment of the org id (cosmetic: the file says the real org)."""
    slug = re.sub(r"[^a-z0-9]+", "-", org_id.lower()).strip("-")[:24].strip("-")
    return slug or "org"


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _store(path: Path) -> JsonStore:
    return JsonStore(
        path,
        items="keys",
        version=FORMAT_VERSION,
        noun="key file",
        error=ApiKeyError,
        malformed="key file {path} is not a caretally key file ({error})",
    )


def load_records(path: Path) -> list[KeyRecord]:
    """The records in ``path`` (none when the file does not exist)."""
    return _store(path).read(lambda item: KeyRecord(**item))


def _write_records(path: Path, records: list[KeyRecord]) -> None:
    """Replace the file atomically (temp file in the same folder, fsync, rename), mode 0600."""
    _store(path).write([asdict(r) for r in records])


def create_key(path: Path, org_id: str) -> tuple[KeyRecord, str]:
    """Add a key for ``org_id``; returns its record and the plaintext (shown once, never kept)."""
    if not org_id or len(org_id) > 128:
        raise ApiKeyError("org id must be 1 to 128 characters")
    secret = secrets.token_urlsafe(_SECRET_BYTES)
    key = f"ct_{org_slug(org_id)}_{secret}"
    with _store(path).locked():
        records = load_records(path)
        taken = {r.key_id for r in records}
        key_id = secrets.token_hex(4)
        while key_id in taken:
            key_id = secrets.token_hex(4)
        record = KeyRecord(
            key_id=key_id,
            org_id=org_id,
            prefix=key[: len(key) - len(secret) + 4],
            sha256=digest(key),
            created_at=utc_now(),
        )
        _write_records(path, [*records, record])
    return record, key


def revoke_key(path: Path, key_id: str) -> KeyRecord:
    """Mark a key revoked (the record stays, for audit); revoking twice is harmless."""
    with _store(path).locked():
        records = load_records(path)
        for i, r in enumerate(records):
            if r.key_id == key_id:
                if r.active:
                    records[i] = r = KeyRecord(**{**asdict(r), "revoked_at": utc_now()})
                    _write_records(path, records)
                return r
    raise ApiKeyError(f"no key with id {key_id!r} in {str(path)!r}")


def list_keys(path: Path) -> list[KeyRecord]:
    return load_records(path)


class ApiKeyStore:
    """Resolves a presented key to its org; re-reads the file when it changes.

    Every active key's digest is compared with :func:`hmac.compare_digest`, without stopping
    at the first match, so the time taken says nothing about which digest (or prefix) came
    close. The file is checked for changes at most every ``recheck_s`` seconds.
    """

    def __init__(self, path: Path, recheck_s: float = 1.0) -> None:
        self.path = path
        self.recheck_s = recheck_s
        self._records: list[tuple[bytes, str]] = []
        self._stamp: tuple[int, int, int] | None = None
        self._checked = 0.0
        self.reload()

    def reload(self) -> None:
        """Load the file now (a file that vanished means no keys: fail closed)."""
        try:
            st = self.path.stat()
            stamp: tuple[int, int, int] | None = (st.st_mtime_ns, st.st_size, st.st_ino)
        except FileNotFoundError:
            stamp = None
        records = load_records(self.path) if stamp is not None else []
        self._records = [(bytes.fromhex(r.sha256), r.org_id) for r in records if r.active]
        self._stamp = stamp
        self._checked = time.monotonic()

    def _maybe_reload(self, fresh: bool = False) -> None:
        now = time.monotonic()
        if not fresh and now - self._checked < self.recheck_s:
            return
        self._checked = now
        try:
            st = self.path.stat()
            stamp: tuple[int, int, int] | None = (st.st_mtime_ns, st.st_size, st.st_ino)
        except FileNotFoundError:
            stamp = None
        if stamp != self._stamp:
            try:
                self.reload()
            except ApiKeyError:
                # keep serving with the last good keys; a half-edited file must not lock
                # everyone out, nor let anyone in
                self._stamp = stamp

    def __len__(self) -> int:
        return len(self._records)

    def resolve(self, key: str | None, *, fresh: bool = False) -> str | None:
        """The org of an active key, else None.

        ``fresh`` checks the file for a change now (one ``stat``; the file is re-read only
        when it changed) instead of at most every ``recheck_s``: what a long-lived stream
        uses before each write, so nothing is sent after a revocation reached the file.
        """
        if not key or not key.isascii():
            return None
        self._maybe_reload(fresh)
        presented = hashlib.sha256(key.encode()).digest()
        found: str | None = None
        for stored, org_id in self._records:
            if hmac.compare_digest(stored, presented) and found is None:
                found = org_id
        return found
