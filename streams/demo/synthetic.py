"""Deterministic synthetic EHR traffic in the wire contract v1 (docs/design.md).

Everything here is a pure function of a seed: the same arguments give the same events,
byte for byte. Events are plain dicts (no pydantic on the hot path) and every one of them
validates with :func:`schemas.parse_event`.

The traffic imitates what care-management practices really send: a practice set-up event,
per-patient chronic conditions, enrollments, consents (a few late, a few missing), care plans,
visits and hospital stays; CCM/complex CCM/PCM/BHI/RPM/RTM/TCM activities by clinical staff and
by the practitioner; daily device readings (the bulk of the volume); and the awkward cases the
engine must handle: amendments (a re-logged ``activity_id``), voids, exact re-sends, re-sends
under a new ``event_id``, overlapping entries of one staff member (within and across programs),
face-to-face and non-clinical time, activities across local midnight at month end, revoked
consents, late documentation after ``month.closed``.

Events are generated month by month and yielded in non-decreasing ``recorded_at`` order; at
most one month of traffic (plus late stragglers) is held in memory.
"""

from __future__ import annotations

import gc
import random
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from itertools import accumulate
from operator import itemgetter
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import orjson

__all__ = ["generate_events", "generate_practice_log", "write_ndjson"]

SOURCE = "ehr-main"
EVENTS_MONTHS: tuple[str, ...] = (
    *(f"2025-{m:02d}" for m in range(1, 13)),
    "2026-01",
    "2026-02",
)

_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
_MS = [f"{m:02d}:{s:02d}" for m in range(60) for s in range(60)]  # second of hour -> MM:SS
_REC = itemgetter("recorded_at")
_HEX_RNG = random.Random(0)
_HEX = [f"{_HEX_RNG.getrandbits(256):064x}" for _ in range(4099)]  # note digests (a fixed pool)


class _DayStrings(dict[int, str]):
    """Day number since 1970-01-01 -> ``YYYY-MM-DD`` (filled on demand)."""

    def __missing__(self, day: int) -> str:
        text = date.fromordinal(day + _EPOCH_ORDINAL).isoformat()
        self[day] = text
        return text


class _HourStrings(dict[int, str]):
    """Hour number since 1970-01-01T00 (of a wall clock) -> ``YYYY-MM-DDTHH:``."""

    def __missing__(self, hour: int) -> str:
        text = f"{_DAY[hour // 24]}T{hour % 24:02d}:"
        self[hour] = text
        return text


class _OffsetStrings(dict[int, str]):
    """UTC offset in seconds -> ``±HH:MM``."""

    def __missing__(self, off: int) -> str:
        sign = "-" if off < 0 else "+"
        hours, minutes = divmod(abs(off) // 60, 60)
        text = f"{sign}{hours:02d}:{minutes:02d}"
        self[off] = text
        return text


_DAY = _DayStrings()
_HOUR = _HourStrings()
_OFF = _OffsetStrings()


def _utc(t: int) -> str:
    """Epoch seconds -> ``YYYY-MM-DDTHH:MM:SSZ``."""
    return _HOUR[t // 3600] + _MS[t % 3600] + "Z"


def _parse_month(month: str) -> tuple[int, int]:
    year, mon = int(month[:4]), int(month[5:7])
    if not 1 <= mon <= 12 or len(month) != 7 or month[4] != "-":
        raise ValueError(f"month must be YYYY-MM, got {month!r}")
    return year, mon


def _utc_month_start(year: int, month: int) -> int:
    return (date(year, month, 1).toordinal() - _EPOCH_ORDINAL) * 86400


class _Clock:
    """One practice-month: local day starts and hour-by-hour UTC offsets around it."""

    __slots__ = ("base", "day0", "ndays", "offs", "starts", "weekend")

    def __init__(self, tz: ZoneInfo, year: int, month: int) -> None:
        first = date(year, month, 1)
        nxt = date(year + (month == 12), 1 if month == 12 else month + 1, 1)
        self.ndays = (nxt - first).days
        self.day0 = first.toordinal() - _EPOCH_ORDINAL
        self.base = (self.day0 - 3) * 86400
        hours = (self.ndays + 12) * 24
        self.offs = [
            int(datetime.fromtimestamp(self.base + h * 3600, tz).utcoffset().total_seconds())  # type: ignore[union-attr]
            for h in range(hours)
        ]
        self.starts = [
            int(datetime.combine(first + timedelta(days=d), datetime.min.time(), tz).timestamp())
            for d in range(self.ndays + 8)
        ]
        self.weekend = [(self.day0 + d + 3) % 7 >= 5 for d in range(self.ndays + 8)]

    def local(self, t: int) -> str:
        """Epoch seconds -> local ISO time with its UTC offset."""
        off = self.offs[(t - self.base) // 3600]
        lt = t + off
        return _HOUR[lt // 3600] + _MS[lt % 3600] + _OFF[off]

    def day(self, d: int) -> str:
        """Local day index (0 = the 1st; may be negative or past the month) -> date string."""
        return _DAY[self.day0 + d]


# --- reference data ------------------------------------------------------------------------

_CHRONIC = (
    "E11.9",
    "E11.65",
    "E78.5",
    "I10",
    "I25.10",
    "I48.91",
    "I50.9",
    "J44.9",
    "J45.909",
    "N18.3",
    "N18.4",
    "M17.11",
    "K21.9",
    "E03.9",
    "G20",
    "E66.9",
    "M81.0",
    "G47.33",
)
_BEHAVIORAL = ("F32.9", "F41.1", "F33.1", "F43.10")
_CCM_LABELS = (
    "medication_review",
    "care_coordination",
    "care_plan_review",
    "phone_outreach",
    "lab_result_review",
    "referral_coordination",
    "patient_education",
    "pharmacy_coordination",
)
_PCM_LABELS = ("condition_monitoring", "medication_titration", "care_plan_review", "phone_outreach")
_BHI_LABELS = ("behavioral_check_in", "phq9_review", "psychiatric_consult_coordination")
_RPM_LABELS = ("reading_review", "device_troubleshooting", "treatment_adjustment")
_RTM_LABELS = ("therapy_adherence_review", "exercise_plan_update")
_MD_LABELS = ("care_plan_revision", "medication_management", "specialist_discussion")
_NONCLIN_LABELS = ("appointment_scheduling", "records_request", "insurance_verification")
_VOID_REASONS = ("entered_in_error", "wrong_patient", "duplicate_entry", "not_performed")
_LABELS = {
    "ccm": _CCM_LABELS,
    "pcm": _PCM_LABELS,
    "bhi": _BHI_LABELS,
    "rpm": _RPM_LABELS,
    "rtm": _RTM_LABELS,
    "tcm": ("post_discharge_call",),
}
_STAFF_PREFIXES = ("RN", "MA", "CM", "LPN", "RN", "MA", "CM", "RN")

# (weight, programs, complex ccm, apcm)
_PROFILES: tuple[tuple[int, tuple[str, ...], bool, bool], ...] = (
    (36, ("ccm",), False, False),
    (10, ("ccm",), True, False),
    (8, ("pcm",), False, False),
    (18, ("ccm", "rpm"), False, False),
    (10, ("rpm",), False, False),
    (2, ("pcm", "rpm"), False, False),
    (3, ("rtm",), False, False),
    (2, ("ccm", "rtm"), False, False),
    (5, ("ccm", "bhi"), False, False),
    (2, ("bhi",), False, False),
    (2, (), False, True),
    (2, ("ccm",), False, True),
    (1, ("rpm",), False, True),
)
_PROFILE_CUM: list[int] = list(accumulate(w for w, *_ in _PROFILES))

# Awkward cases, chosen per practice-month: (name, share of the eligible patients).
_CASES: tuple[tuple[str, float], ...] = (
    ("amend", 0.15),
    ("void", 0.05),
    ("dup", 0.02),
    ("resend", 0.02),
    ("overlap", 0.03),
    ("xoverlap", 0.10),
    ("f2f", 0.05),
    ("nonclin", 0.03),
    ("midnight", 0.01),
    ("otherdoc", 0.01),
    ("stay", 0.015),
    ("visit", 0.05),
    ("conds", 0.03),
    ("revoke", 0.004),
)


_ON_AN_ACTIVITY = frozenset({"amend", "void", "dup", "resend", "overlap", "xoverlap"})


@dataclass(slots=True)
class _Patient:
    pid: str
    programs: list[str]
    complex: bool
    apcm: bool
    qmb: bool
    practitioner: str
    manager: str
    conditions: list[str]
    consent: str  # "ok" | "late" | "never"
    care_plan: bool
    ccm_scale: float
    md_time: bool  # the practitioner logs personal CCM time in some months
    adherence: float
    interactive: bool
    device: str
    visit: bool
    start: int
    end: int
    revoked: set[str] = field(default_factory=set)


class _Practice:
    """One practice's roster and its month-by-month traffic."""

    clock: _Clock  # the month being generated
    floor: int  # earliest recorded_at of that month's batch

    def __init__(
        self,
        rng: random.Random,
        *,
        org_id: str,
        timezone: str,
        facility_type: str,
        staff: int,
        practitioners: int,
        spans: Iterable[tuple[int, int]] = (),
    ) -> None:
        self.rng = rng
        self.org = org_id
        self.tzname = timezone
        self.tz = ZoneInfo(timezone)
        self.facility = facility_type
        self.prefix = f"{org_id}-"
        self.act_prefix = f"{org_id}-A"
        self.n = 10**9  # event number; ids use its last 9 digits
        self.acts = 10**8  # activity number; ids use its last 8 digits
        self.staff = [
            f"{_STAFF_PREFIXES[i % len(_STAFF_PREFIXES)]}-{i + 1}" for i in range(max(1, staff))
        ]
        self.doctors = [f"DR-{i + 1}" for i in range(max(1, practitioners))]
        self.qhp = "NP-1"
        self.front_desk = "FD-1"
        self.patients: list[_Patient] = []
        # A roster given up front has every profile, and a late and a missing consent, at
        # least once (when it is big enough); the rest is drawn at random.
        spans = list(spans)
        n = len(spans)
        profiles: list[int | None] = list(range(len(_PROFILES))) if n >= len(_PROFILES) else []
        profiles += [None] * (n - len(profiles))
        rng.shuffle(profiles)
        consents: list[str | None] = [None] * n
        with_time = [i for i, k in enumerate(profiles) if k is not None and _PROFILES[k][1]]
        if n >= 10 and len(with_time) >= 2:
            late, never = rng.sample(with_time, 2)
            consents[late], consents[never] = "late", "never"
        for (start, end), profile, consent in zip(spans, profiles, consents, strict=True):
            self.add_patient(start, end, profile, consent)

    # -- roster --------------------------------------------------------------------------

    def add_patient(
        self, start: int, end: int, profile: int | None = None, consent: str | None = None
    ) -> _Patient:
        """Add a patient active from month index ``start`` through ``end``.

        ``profile`` indexes ``_PROFILES`` and ``consent`` is "ok", "late" or "never"; by
        default both are drawn at random.
        """
        patient = self._new_patient(len(self.patients) + 1, start, end, profile, consent)
        self.patients.append(patient)
        return patient

    def _new_patient(
        self, number: int, start: int, end: int, profile: int | None, consent: str | None
    ) -> _Patient:
        rng = self.rng
        if profile is None:
            pick = rng.random() * _PROFILE_CUM[-1]
            profile = min(bisect_left(_PROFILE_CUM, pick), len(_PROFILES) - 1)
        _, programs, complex_, apcm = _PROFILES[profile]
        progs = list(programs)
        if "pcm" in progs and "ccm" not in progs:
            conditions = rng.sample(_CHRONIC, 1 if rng.random() < 0.7 else 2)
        elif complex_:
            conditions = rng.sample(_CHRONIC, rng.randint(3, 6))
        elif "ccm" in progs and rng.random() < 0.05:
            conditions = rng.sample(_CHRONIC, 1)  # insufficient for CCM
        else:
            conditions = rng.sample(_CHRONIC, rng.randint(2, 4))
        if "bhi" in progs or rng.random() < 0.08:
            conditions.append(rng.choice(_BEHAVIORAL))
        if consent is None:
            r = rng.random()
            consent = "late" if r < 0.06 else "never" if r < 0.09 else "ok"
        device_kind = "MSK" if "rtm" in progs else rng.choice(("BP", "BP", "GLU", "SCALE", "SPO2"))
        a = rng.random()
        adherence = (
            rng.uniform(0.0, 0.15)
            if a < 0.08
            else rng.uniform(0.3, 0.55)
            if a < 0.3
            else rng.uniform(0.55, 1.0)
        )
        return _Patient(
            pid=f"P-{number:06d}",
            programs=progs,
            complex=complex_,
            apcm=apcm,
            qmb=apcm and rng.random() < 0.3,
            practitioner=rng.choice(self.doctors),
            manager=rng.choice(self.staff),
            conditions=conditions,
            consent=consent,
            care_plan=rng.random() >= 0.03,
            ccm_scale=rng.triangular(40, 150, 75) if complex_ else rng.triangular(5, 100, 22),
            md_time=rng.random() < 0.3,
            adherence=adherence,
            interactive=rng.random() < 0.8,
            device=f"{device_kind}-{rng.getrandbits(40):010x}",
            visit=rng.random() < 0.85,
            start=start,
            end=end,
        )

    # -- event builders --------------------------------------------------------------------

    def _ev(self, etype: str, pid: str | None, rec: int, data: dict[str, Any]) -> dict[str, Any]:
        self.n += 1
        ev: dict[str, Any] = {
            "event_id": self.prefix + str(self.n)[1:],
            "type": etype,
            "schema_version": 1,
            "org_id": self.org,
        }
        if pid is not None:
            ev["patient_id"] = pid
        ev["recorded_at"] = _utc(rec if rec > self.floor else self.floor)
        ev["source"] = SOURCE
        ev["data"] = data
        return ev

    def _activity(
        self,
        out: list[dict[str, Any]],
        p: _Patient,
        program: str,
        staff_id: str,
        role: str,
        label: str,
        t0: int,
        secs: int,
        *,
        practitioner: str | None = None,
        f2f: bool = False,
        interactive: bool = False,
    ) -> dict[str, Any]:
        clock = self.clock
        off = clock.offs[(t0 - clock.base) // 3600]
        lt = t0 + off
        self.acts = acts = self.acts + 1
        data: dict[str, Any] = {
            "activity_id": self.act_prefix + str(acts)[1:],
            "staff_id": staff_id,
            "staff_role": role,
            "practitioner_id": practitioner or p.practitioner,
            "program": program,
            "activity": label,
            "started_at": _HOUR[lt // 3600] + _MS[lt % 3600] + _OFF[off],
        }
        # one draw decides the duration's form, the note digest and the recording delay
        u = self.rng.random()
        r = u * 64 % 1.0
        if r < 0.68:
            data["minutes"] = (secs + 30) // 60
        elif r < 0.78:
            data["minutes"] = round(secs / 60, 2)
        else:
            data["ended_at"] = clock.local(t0 + secs)
            if r >= 0.95:
                data["minutes"] = (secs + 30) // 60
        if f2f:
            data["face_to_face"] = True
        if interactive:
            data["interactive"] = True
        r = u * 4096 % 1.0
        if r < 0.3:
            data["note_digest"] = "sha256:" + _HEX[int(r * 13_663)]
        # recorded minutes to days later; a few are documented late, past the month's close
        r = u * 262_144 % 1.0
        if r < 0.6:
            lag = 60 + int(r * 5900)
        elif r < 0.9:
            lag = 3600 + int((r - 0.6) * 275_000)
        elif r < 0.997:
            lag = 86400 + int((r - 0.9) * 1_780_000)
        else:
            lag = 8 * 86400 + int((r - 0.997) * 3e8)
        rec = t0 + secs + lag
        if rec < self.floor:
            rec = self.floor
        self.n = n = self.n + 1
        ev = {
            "event_id": self.prefix + str(n)[1:],
            "type": "activity.logged",
            "schema_version": 1,
            "org_id": self.org,
            "patient_id": p.pid,
            "recorded_at": _HOUR[rec // 3600] + _MS[rec % 3600] + "Z",
            "source": SOURCE,
            "data": data,
        }
        out.append(ev)
        return ev

    def _slot(self, d0: int, last: int) -> int:
        """A start instant on a (mostly week-) day in [d0, last], office hours, local."""
        rnd = self.rng.random
        clock = self.clock
        u = rnd()
        span = last - d0 + 1
        d = d0 + int(u * span)
        if clock.weekend[d] and u * 1024 % 1.0 < 0.8:  # weekend: usually another day
            d = d0 + int(rnd() * span)
        sec = 28800 + int(u * 1_048_576 % 1.0 * 34200)
        if sec & 3:  # three in four on the whole minute
            sec -= sec % 60
        return clock.starts[d] + sec

    # -- one month ----------------------------------------------------------------------------

    def month(
        self, mi: int, year: int, month: int, floor: int, first: bool
    ) -> list[dict[str, Any]]:
        """All events of patient-months (mi) plus practice-level events, unsorted."""
        self.clock = _Clock(self.tz, year, month)
        self.floor = floor
        rng = self.rng
        out: list[dict[str, Any]] = []
        if first:
            out.append(
                self._ev(
                    "practice.configured",
                    None,
                    floor,
                    {"timezone": self.tzname, "facility_type": self.facility},
                )
            )
        else:
            # close the previous month around the 6th-10th, mid-afternoon
            d = 5 + int(rng.random() * 5)
            py, pm = (year - 1, 12) if month == 1 else (year, month - 1)
            out.append(
                self._ev(
                    "month.closed",
                    None,
                    self.clock.starts[d] + 15 * 3600 + int(rng.random() * 7200),
                    {"month": f"{py:04d}-{pm:02d}"},
                )
            )
        active = [p for p in self.patients if p.start <= mi <= p.end]
        cases = self._cases(active, guarantee=first)
        for idx, p in enumerate(active):
            self._patient_month(out, p, mi, cases.get(idx, []))
        return out

    def _cases(self, active: list[_Patient], guarantee: bool) -> dict[int, list[str]]:
        """Pick the patients who get each awkward case this month (index -> case names).

        Each case goes to ``share`` of its eligible patients (randomly rounded); with
        ``guarantee`` (a log's first month) every case occurs at least once if anyone is eligible.
        """
        rng = self.rng
        chosen: dict[int, list[str]] = {}
        with_time = [i for i, p in enumerate(active) if p.programs]
        ccm = [i for i, p in enumerate(active) if "ccm" in p.programs]
        multi = [i for i, p in enumerate(active) if len(p.programs) >= 2]
        everyone = list(range(len(active)))
        pools = {"midnight": ccm or with_time, "otherdoc": ccm, "xoverlap": multi}
        for name, share in _CASES:
            pool = pools.get(name, everyone if name in ("stay", "visit", "conds") else with_time)
            if not pool:
                continue
            k = min(len(pool), max(guarantee, int(share * len(pool) + rng.random())))
            for i in rng.sample(pool, k):
                chosen.setdefault(i, []).append(name)
        return chosen

    def _patient_month(
        self, out: list[dict[str, Any]], p: _Patient, mi: int, cases: list[str]
    ) -> None:
        rng = self.rng
        clock = self.clock
        ndays = clock.ndays
        last = ndays - 1
        d0 = 0
        if mi == p.start:
            d0 = self._onboard(out, p, mi == 0)
        if p.complex and p.care_plan and "ccm" in p.programs and "ccm" not in p.revoked:
            d = min(last, d0 + int(rng.random() * 18))
            out.append(
                self._ev(
                    "care_plan.recorded",
                    p.pid,
                    clock.starts[d] + 10 * 3600 + int(rng.random() * 25000),
                    {
                        "program": "ccm",
                        "on": clock.day(d),
                        "complexity": "high" if rng.random() < 0.4 else "moderate",
                    },
                )
            )
        acts: list[dict[str, Any]] = []
        progs = [prog for prog in p.programs if prog not in p.revoked]
        for prog in progs:
            if prog == "ccm":
                self._ccm(acts, p, d0, last)
            elif prog in ("pcm", "bhi"):
                self._simple(acts, p, prog, d0, last)
            else:
                self._readings(out, p, prog, d0)
                self._monitoring(acts, p, prog, d0, last)
        for case in cases:
            self._case(out, acts, p, progs, case, d0, last)
        out.extend(acts)

    def _onboard(self, out: list[dict[str, Any]], p: _Patient, established: bool) -> int:
        """Conditions, enrollments, consents, care plan, visit; returns the first active day."""
        rng = self.rng
        clock = self.clock
        pid = p.pid
        if established:
            d0 = 0
            on = -int(rng.random() * 120) - 1
            rec = self.floor + int(rng.random() * 3 * 3600)
        else:
            d0 = int(rng.random() * min(20, clock.ndays - 2))
            on = d0
            rec = clock.starts[d0] + 9 * 3600 + int(rng.random() * 3 * 3600)
        ev = self._ev
        out.append(ev("conditions.recorded", pid, rec, {"chronic": list(p.conditions)}))
        doctor = p.practitioner
        if p.visit and ({"rpm", "rtm"} & set(p.programs) or rng.random() < 0.5):
            vday = on - int(rng.random() * 60) if established else on
            out.append(
                ev(
                    "visit.recorded",
                    pid,
                    rec + 5,
                    {"practitioner_id": doctor, "on": clock.day(vday), "kind": "e_m"},
                )
            )
        programs = [*p.programs, "apcm"] if p.apcm else list(p.programs)
        for prog in programs:
            enroll: dict[str, Any] = {
                "program": prog,
                "practitioner_id": doctor,
                "on": clock.day(on),
            }
            if prog == "apcm" and p.qmb:
                enroll["qmb"] = True
            out.append(ev("enrollment.recorded", pid, rec + 10, enroll))
        if p.consent != "never":
            method = "written" if rng.random() < 0.35 else "verbal"
            if p.consent == "late":
                cday = min(clock.ndays - 1, d0 + 7 + int(rng.random() * 13))
                crec = clock.starts[cday] + 11 * 3600 + int(rng.random() * 18000)
            else:
                cday, crec = on, rec + 20
            for prog in programs:
                out.append(
                    ev(
                        "consent.recorded",
                        pid,
                        crec,
                        {
                            "program": prog,
                            "practitioner_id": doctor,
                            "method": method,
                            "on": clock.day(cday),
                        },
                    )
                )
        if p.care_plan:
            pday = on + int(rng.random() * 5) if not established else on
            for prog in p.programs:
                if prog in ("ccm", "pcm", "bhi"):
                    cx = "high" if p.complex else "moderate" if rng.random() < 0.4 else "low"
                    out.append(
                        ev(
                            "care_plan.recorded",
                            pid,
                            (clock.starts[pday] + 14 * 3600) if pday > on else rec + 30,
                            {"program": prog, "on": clock.day(pday), "complexity": cx},
                        )
                    )
        return d0

    def _split(self, total: float, k: int) -> list[int]:
        """Split ``total`` minutes into ``k`` positive parts, in seconds."""
        rnd = self.rng.random
        weights = [0.3 + rnd() for _ in range(k)]
        scale = total * 60 / sum(weights)
        return [max(60, int(w * scale)) for w in weights]

    def _ccm(self, acts: list[dict[str, Any]], p: _Patient, d0: int, last: int) -> None:
        rng = self.rng
        rnd = rng.random
        total = max(3.0, p.ccm_scale * (0.6 + 0.8 * rnd()))
        k = min(8, max(2, int(total / 12) + int(rnd() * 3)))
        staff, nstaff = self.staff, len(self.staff)
        activity, slot = self._activity, self._slot
        for secs in self._split(total, k):
            r = rnd()
            sid = p.manager if r < 0.7 else staff[int(rnd() * nstaff)]
            if r > 0.3 and secs > 60:  # most entries in whole minutes
                secs -= secs % 60
            label = _CCM_LABELS[int(rnd() * 8)]
            activity(acts, p, "ccm", sid, "clinical_staff", label, slot(d0, last), secs)
        if p.md_time and rng.random() < 0.6:
            md_total = rng.triangular(5, 60, 20)
            for secs in self._split(md_total, 1 + int(rng.random() * 2)):
                self._activity(
                    acts,
                    p,
                    "ccm",
                    p.practitioner,
                    "physician",
                    rng.choice(_MD_LABELS),
                    self._slot(d0, last),
                    max(60, secs - secs % 60),
                )

    def _simple(
        self, acts: list[dict[str, Any]], p: _Patient, prog: str, d0: int, last: int
    ) -> None:
        """PCM or BHI time: staff, sometimes the practitioner (PCM) or a QHP (BHI)."""
        rnd = self.rng.random
        total = 10 + 80 * rnd() ** 1.4 if prog == "pcm" else 5 + 55 * rnd() ** 1.3
        labels = _LABELS[prog]
        staff = self.staff
        for secs in self._split(total, 1 + int(rnd() * 4)):
            r = rnd()
            if prog == "pcm" and r < 0.15:
                sid, role = p.practitioner, "physician"
            elif prog == "bhi" and r < 0.25:
                sid, role = self.qhp, "qhp"
            else:
                sid = p.manager if r < 0.75 else staff[int(r * 1024 % 1.0 * len(staff))]
                role = "clinical_staff"
            label = labels[int(r * 65_536 % 1.0 * len(labels))]
            self._activity(acts, p, prog, sid, role, label, self._slot(d0, last), secs - secs % 60)

    def _monitoring(
        self, acts: list[dict[str, Any]], p: _Patient, prog: str, d0: int, last: int
    ) -> None:
        """RPM/RTM treatment-management time; the first entry is the interactive call."""
        rnd = self.rng.random
        total = 60 * rnd() ** 1.2 if prog == "rpm" else 40 * rnd() ** 1.2
        if total < 2:
            return
        labels = _LABELS[prog]
        staff = self.staff
        for j, secs in enumerate(self._split(total, 1 + int(rnd() * 4))):
            r = rnd()
            call = p.interactive and j == 0
            label = "patient_call" if call else labels[int(r * 65_536 % 1.0 * len(labels))]
            sid = p.manager if r < 0.8 else staff[int(r * 1024 % 1.0 * len(staff))]
            self._activity(
                acts,
                p,
                prog,
                sid,
                "clinical_staff",
                label,
                self._slot(d0, last),
                secs - secs % 60,
                interactive=call,
            )

    def _readings(self, out: list[dict[str, Any]], p: _Patient, prog: str, d0: int) -> None:
        """Daily device readings: the bulk of the traffic (hot path, hand-inlined)."""
        rnd = self.rng.random
        clock = self.clock
        starts, offs, base = clock.starts, clock.offs, clock.base
        floor = self.floor
        adherence = p.adherence
        twice = 0.35 if prog == "rpm" else 0.0  # many BP protocols: morning and evening
        prefix, n = self.prefix, self.n
        org, pid, dev = self.org, p.pid, p.device
        hour, ms, offstr = _HOUR, _MS, _OFF
        append = out.append
        for d in range(d0, clock.ndays):
            if rnd() >= adherence:
                continue
            for _ in range(2 if rnd() < twice else 1):
                u = int(rnd() * 34_560_000)  # one draw: time of day (6-22 h) and upload delay
                t = starts[d] + 21600 + u // 600
                off = offs[(t - base) // 3600]
                lt = t + off
                rec = t + 20 + u % 600
                if rec < floor:
                    rec = floor
                n += 1
                append(
                    {
                        "event_id": prefix + str(n)[1:],
                        "type": "device.reading",
                        "schema_version": 1,
                        "org_id": org,
                        "patient_id": pid,
                        "recorded_at": hour[rec // 3600] + ms[rec % 3600] + "Z",
                        "source": SOURCE,
                        "data": {
                            "device_id": dev,
                            "program": prog,
                            "taken_at": hour[lt // 3600] + ms[lt % 3600] + offstr[off],
                        },
                    }
                )
        self.n = n

    # -- the awkward cases ------------------------------------------------------------------

    def _case(
        self,
        out: list[dict[str, Any]],
        acts: list[dict[str, Any]],
        p: _Patient,
        progs: list[str],
        case: str,
        d0: int,
        last: int,
    ) -> None:
        rng = self.rng
        clock = self.clock
        logged = [a for a in acts if a["type"] == "activity.logged"]
        if not logged and progs and case in _ON_AN_ACTIVITY:
            prog = progs[0]  # nothing logged this month yet: the case needs an entry to work on
            logged.append(
                self._activity(acts, p, prog, p.manager, "clinical_staff", _LABELS[prog][0],
                               self._slot(d0, last), 60 * (5 + int(rng.random() * 15)))
            )  # fmt: skip
        if case == "amend" and logged:
            orig = rng.choice(logged)
            data = dict(orig["data"])
            old = data.pop("minutes", None)
            ended = data.pop("ended_at", None)
            if old is None:
                old = (_epoch(ended) - _epoch(data["started_at"])) / 60
            data["minutes"] = max(1, round(old) + rng.choice((-10, -5, -3, 2, 5, 8, 15)))
            acts.append(self._ev("activity.logged", p.pid, self._after(orig), data))
        elif case == "void" and logged:
            orig = rng.choice(logged)
            acts.append(
                self._ev(
                    "activity.voided",
                    p.pid,
                    self._after(orig),
                    {
                        "activity_id": orig["data"]["activity_id"],
                        "reason": rng.choice(_VOID_REASONS),
                    },
                )
            )
        elif case == "dup" and logged:
            orig = rng.choice(logged)
            acts.append({**orig, "data": dict(orig["data"])})
        elif case == "resend" and logged:
            orig = rng.choice(logged)
            self.acts += 1
            data = {**orig["data"], "activity_id": self.act_prefix + str(self.acts)[1:]}
            rec = _REC(orig)
            acts.append(
                self._ev(
                    "activity.logged", p.pid, _epoch(rec) + 60 + int(rng.random() * 1800), data
                )
            )
        elif case == "overlap" and logged:
            orig = rng.choice(logged)
            od = orig["data"]
            self._activity(
                acts,
                p,
                od["program"],
                od["staff_id"],
                od["staff_role"],
                rng.choice(_LABELS[od["program"]]),
                self._inside(od),
                60 * (5 + int(rng.random() * 15)),
            )
        elif case == "xoverlap" and len(progs) >= 2 and logged:
            orig = rng.choice(logged)
            od = orig["data"]
            other = rng.choice([x for x in progs if x != od["program"]])
            self._activity(
                acts,
                p,
                other,
                od["staff_id"],
                od["staff_role"],
                rng.choice(_LABELS[other]),
                self._inside(od),
                60 * (5 + int(rng.random() * 12)),
            )
        elif case == "f2f" and progs:
            prog = progs[0]
            self._activity(
                acts,
                p,
                prog,
                p.manager,
                "clinical_staff",
                "in_office_education",
                self._slot(d0, last),
                60 * (10 + int(rng.random() * 20)),
                f2f=True,
            )
        elif case == "nonclin" and progs:
            self._activity(
                acts,
                p,
                progs[0],
                self.front_desk,
                "non_clinical",
                rng.choice(_NONCLIN_LABELS),
                self._slot(d0, last),
                60 * (5 + int(rng.random() * 15)),
            )
        elif case == "midnight" and progs:
            prog = "ccm" if "ccm" in progs else progs[0]
            before = 60 * (5 + int(rng.random() * 21))  # starts 23:35-23:55 local
            t0 = clock.starts[last + 1] - before
            self._activity(
                acts,
                p,
                prog,
                p.manager,
                "clinical_staff",
                rng.choice(_LABELS[prog]),
                t0,
                before + 60 * (5 + int(rng.random() * 26)),  # ends 00:05-00:30 next month
            )
        elif case == "otherdoc" and "ccm" in progs and len(self.doctors) > 1:
            doc = rng.choice([d for d in self.doctors if d != p.practitioner])
            self._activity(
                acts,
                p,
                "ccm",
                doc,
                "physician",
                rng.choice(_MD_LABELS),
                self._slot(d0, last),
                60 * (10 + int(rng.random() * 30)),
                practitioner=doc,
            )
        elif case == "stay":
            a = d0 + int(rng.random() * max(1, last - d0 - 1))
            dis = a + 1 + int(rng.random() * 6)
            setting = "inpatient" if rng.random() < 0.85 else "snf"
            out.append(
                self._ev(
                    "stay.recorded",
                    p.pid,
                    clock.starts[dis + 1] + 9 * 3600 + int(rng.random() * 20000),
                    {
                        "setting": setting,
                        "admitted_on": clock.day(a),
                        "discharged_on": clock.day(dis),
                    },
                )
            )
            if setting == "inpatient" and dis + 2 <= last and rng.random() < 0.6:
                self._activity(
                    acts,
                    p,
                    "tcm",
                    p.manager,
                    "clinical_staff",
                    "post_discharge_call",
                    clock.starts[dis + 1] + 10 * 3600 + int(rng.random() * 20000),
                    60 * (15 + int(rng.random() * 20)),
                    interactive=True,
                )
                vday = dis + 7 + int(rng.random() * 7)
                out.append(
                    self._ev(
                        "visit.recorded",
                        p.pid,
                        clock.starts[min(vday, last + 7)] + 17 * 3600,
                        {"practitioner_id": p.practitioner, "on": clock.day(vday), "kind": "tcm"},
                    )
                )
        elif case == "visit":
            d = d0 + int(rng.random() * (last - d0 + 1))
            kind = "awv" if rng.random() < 0.3 else "e_m"
            out.append(
                self._ev(
                    "visit.recorded",
                    p.pid,
                    clock.starts[d] + 16 * 3600 + int(rng.random() * 10000),
                    {"practitioner_id": p.practitioner, "on": clock.day(d), "kind": kind},
                )
            )
        elif case == "conds":
            extra = [c for c in _CHRONIC if c not in p.conditions]
            if extra:
                p.conditions.append(rng.choice(extra))
            d = d0 + int(rng.random() * (last - d0 + 1))
            out.append(
                self._ev(
                    "conditions.recorded",
                    p.pid,
                    clock.starts[d] + 13 * 3600 + int(rng.random() * 10000),
                    {"chronic": list(p.conditions)},
                )
            )
        elif case == "revoke" and progs:
            prog = rng.choice(progs)
            d = d0 + int(rng.random() * (last - d0 + 1))
            p.revoked.add(prog)  # ends with this month
            out.append(
                self._ev(
                    "consent.revoked",
                    p.pid,
                    clock.starts[d] + 12 * 3600 + int(rng.random() * 10000),
                    {
                        "program": prog,
                        "practitioner_id": p.practitioner,
                        "method": "verbal",
                        "on": clock.day(d),
                    },
                )
            )

    def _inside(self, data: dict[str, Any]) -> int:
        """An instant strictly inside the logged activity ``data`` (not its start)."""
        start = _epoch(data["started_at"])
        if "minutes" in data:
            secs = round(data["minutes"] * 60)
        else:
            secs = _epoch(data["ended_at"]) - start
        offset = max(30, int(secs * (0.2 + 0.5 * self.rng.random())))
        if offset > 60:
            offset -= offset % 60
        return start + offset

    def _after(self, orig: dict[str, Any]) -> int:
        """A recording instant an hour to two days after ``orig`` was recorded."""
        return _epoch(_REC(orig)) + 3600 + int(self.rng.random() * 170_000)


def _epoch(text: str) -> int:
    return int(datetime.fromisoformat(text).timestamp())


# --- streams -------------------------------------------------------------------------------


def _stream(
    practices: list[_Practice],
    months: tuple[str, ...],
    start: int | None,
    limit: int | None = None,
) -> Iterator[dict[str, Any]]:
    """Generate month by month, yielding in ``recorded_at`` order.

    Everything generated for month ``m`` is recorded at or after ``floor(m)`` (the later of
    the UTC start of ``m`` and ``start``), so events of an earlier month recorded after
    ``floor(m + 1)`` are carried into the next batch and merged there. Stops after
    ``limit`` events.
    """
    parsed = [_parse_month(m) for m in months]
    floors = [_utc_month_start(y, m) for y, m in parsed]
    if start is not None:
        floors = [max(f, start) for f in floors]
    floors = [max(floors[: i + 1]) for i in range(len(floors))]
    carry: list[dict[str, Any]] = []
    for mi, (year, month) in enumerate(parsed):
        batch = carry
        # The batch is acyclic (dicts of strings and numbers): pause the cyclic GC while
        # building it, which otherwise re-scans every retained event several times.
        collecting = gc.isenabled()
        gc.disable()
        try:
            for practice in practices:
                batch.extend(practice.month(mi, year, month, floors[mi], mi == 0))
            batch.sort(key=_REC)
        finally:
            if collecting:
                gc.enable()
        if mi + 1 < len(parsed):
            cut = bisect_left(batch, _utc(floors[mi + 1]), key=_REC)
            carry = batch[cut:]
            del batch[cut:]
        else:
            carry = []
        if limit is not None:
            if len(batch) >= limit:
                yield from batch[:limit]
                return
            limit -= len(batch)
        yield from batch


def generate_practice_log(
    *,
    seed: int = 7,
    patients: int = 60,
    months: tuple[str, ...] = ("2025-03",),
    org_id: str = "practice-17",
    timezone: str = "America/New_York",
    staff: int = 6,
    practitioners: int = 3,
    start_recorded_at: datetime | None = None,
    facility_type: str = "office",
) -> Iterator[dict[str, Any]]:
    """Yield wire-contract v1 event dicts of one practice in log order (recorded_at non-decreasing).

    All ``patients`` are established at the start of the first month and stay through the
    last one (unless a consent is revoked). ``start_recorded_at`` (aware) is the earliest
    ``recorded_at``; by default the UTC start of the first month.
    """
    if not months:
        return iter(())
    rng = random.Random(seed)
    span = [(0, len(months) - 1)] * patients
    practice = _Practice(
        rng,
        org_id=org_id,
        timezone=timezone,
        facility_type=facility_type,
        staff=staff,
        practitioners=practitioners,
        spans=span,
    )
    start = None
    if start_recorded_at is not None:
        start = int(start_recorded_at.astimezone(UTC).timestamp())
    return _stream([practice], tuple(months), start)


# Roster sizing for generate_events.
_CALIBRATION = 0.95  # observed / _expected_events (measured at 100k-1M events)
_MARGIN = 1.0  # the estimate is within ~1-2 %; a log that overshoots is cut at the target
_TIMEZONES = ("America/New_York", "America/Chicago", "America/Los_Angeles", "America/Denver")
_FACILITIES = ("office", "fqhc", "office", "rhc")
_ORG_WEIGHTS = (1.0, 0.7, 0.5, 0.8, 0.6)


def _span(rng: random.Random, months: int) -> tuple[int, int]:
    last_2025 = min(11, months - 1)
    start = 0 if rng.random() < 0.6 else rng.randint(1, last_2025)
    r = rng.random()
    if r < 0.1:
        end = rng.randint(start, last_2025)
    elif r < 0.55:
        end = last_2025
    else:
        end = months - 1
    return start, end


def _expected_events(p: _Patient) -> float:
    """Roughly how many events a patient will produce over their span (for roster sizing)."""
    per_month = 0.5  # awkward cases, visits, stays, condition updates
    for prog in p.programs:
        if prog == "ccm":
            per_month += min(8.0, max(2.0, p.ccm_scale / 12 + 1.0)) + (0.9 if p.md_time else 0)
            per_month += 1.0 if p.complex and p.care_plan else 0.0
        elif prog in ("pcm", "bhi"):
            per_month += 2.5
        else:
            per_month += 30.4 * p.adherence * (1.35 if prog == "rpm" else 1.0) + 2.4
    enrolled = len(p.programs) + p.apcm
    onboarding = 2 + enrolled * (1 + (p.consent != "never")) + len(p.programs) * p.care_plan
    return per_month * (p.end - p.start + 1) + onboarding


def _practices(target_events: int, seed: int, orgs: int, margin: float) -> list[_Practice]:
    """Practices whose rosters are expected to yield about ``target_events * margin`` events.

    Patients are added one at a time (to the practice furthest below its share) until their
    expected traffic covers the budget, which keeps the total close to the target.
    """
    rng = random.Random(seed)
    weights = [_ORG_WEIGHTS[i % len(_ORG_WEIGHTS)] for i in range(orgs)]
    share = [w / sum(weights) for w in weights]
    guess = target_events / 150  # patients, only to size the staff
    practices = [
        _Practice(
            random.Random(rng.getrandbits(64)),
            org_id=f"practice-{i + 1:02d}",
            timezone=_TIMEZONES[i % len(_TIMEZONES)],
            facility_type=_FACILITIES[i % len(_FACILITIES)],
            staff=max(4, round(guess * share[i] / 90)),
            practitioners=max(2, round(guess * share[i] / 350)),
        )
        for i in range(orgs)
    ]
    budget = target_events * margin / _CALIBRATION - orgs * len(EVENTS_MONTHS)
    expected = 0.0
    while expected < budget:
        i = min(range(orgs), key=lambda k: len(practices[k].patients) / share[k])
        practice = practices[i]
        patient = practice.add_patient(*_span(practice.rng, len(EVENTS_MONTHS)))
        expected += _expected_events(patient)
    return practices


def generate_events(
    target_events: int, *, seed: int = 7, orgs: int = 3
) -> Iterator[dict[str, Any]]:
    """A realistic multi-practice log of ``target_events`` events (fewer only if it runs short).

    Spans 2025-01..2025-12 plus 2026-01..2026-02 (about half the patients carry on into
    2026); patients join through 2025. Rosters are sized from each patient's expected
    traffic (typically within 1-2 % of the target) and the log is cut at ``target_events``.
    Memory stays at about one month of traffic.
    """
    if target_events <= 0:
        return iter(())
    practices = _practices(target_events, seed, max(1, orgs), _MARGIN)
    return _stream(practices, EVENTS_MONTHS, None, target_events)


def write_ndjson(events: Iterable[dict[str, Any]], path: str | Path) -> int:
    """Write ``events`` as NDJSON (orjson, one event per line); return how many were written."""
    dumps = orjson.dumps
    opt = orjson.OPT_APPEND_NEWLINE
    count = 0
    with open(path, "wb", buffering=1 << 20) as fh:
        write = fh.write
        for ev in events:
            write(dumps(ev, option=opt))
            count += 1
    return count
