"""The attacker's view of a claim line id (issue #9, item 13): what someone who sees the id
but not the org's log could learn by trying a handful of plausible patient ids."""

from __future__ import annotations

import hashlib

TARGET = "P-000123"
# what an attacker holding a claim line id might try: a handful of plausible patient ids
CANDIDATES = ["P-000121", "P-000122", TARGET, "P-000124", "P-000125"]


def unkeyed(org: str, patient: str, month: str, code: str, practitioner: str) -> str:
    """The claim line id formula of the unkeyed design (all its inputs guessable)."""
    parts = "\x1f".join([org, patient, month, code, practitioner])
    return hashlib.blake2b(parts.encode(), digest_size=12).hexdigest()


def guesses(line_id: str, org: str, month: str, code: str, practitioner: str) -> list[str]:
    """The candidates whose unkeyed id matches ``line_id`` (what the attacker learns)."""
    return [p for p in CANDIDATES if unkeyed(org, p, month, code, practitioner) == line_id]
