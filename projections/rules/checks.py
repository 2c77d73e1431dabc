"""What ties a book's values together, and books into a catalog (the checks
``caretally rules check`` runs and every load enforces).

Each check returns :class:`~projections.rules.problems.Problem` s instead of raising, so
an author sees every problem of a draft at once. The names of the tracks the engine asks
for (``ENGINE_TRACKS``) are spelled here because :mod:`projections.billing` reads them by
name; a book without them could not be evaluated.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import timedelta
from itertools import pairwise

from projections.rules.book import RuleBook
from projections.rules.model import FAMILIES, PRICED_STATUSES, BookFile, CodeRule
from projections.rules.problems import Loc, Problem, line_of

ENGINE_TRACKS: dict[str, tuple[str, ...]] = {
    "ccm": ("complex", "physician", "staff"),  # billing._ccm, §6.2 step 7
    "pcm": ("physician", "staff"),  # billing._pcm, §6.2 step 9
}
"""Track names :mod:`projections.billing` looks up, per family (other families try their
tracks in book order)."""
REQUIREMENT_READ_ON = ("ccm", "complex")
"""The one track whose ``requires`` the engine reads (G12: the complex CCM track)."""


class _Report:
    def __init__(self, file: str, lines: dict[Loc, int]) -> None:
        self.file = file
        self.lines = lines
        self.problems: list[Problem] = []

    def __call__(self, loc: Loc, message: str) -> None:
        self.problems.append(Problem(self.file, loc, message, line_of(self.lines, loc)))


def check_book(doc: BookFile, file: str, lines: dict[Loc, int] | None = None) -> list[Problem]:
    """Everything wrong with one parsed book, in file order (empty: the book is usable)."""
    report = _Report(file, lines or {})
    codes = _codes(doc, report)
    _header(doc, file, report)
    for i, rule in enumerate(doc.codes):
        _code(rule, ("codes", i), codes, report)
    _levels(doc, report)
    _tracks(doc, codes, report)
    _exclusives(doc, codes, report)
    _gates(doc, report)
    _flag_order(doc, codes, report)
    _policy(doc, codes, report)
    _sources(doc, report)
    return report.problems


def check_catalog(books: Sequence[RuleBook]) -> list[Problem]:
    """Books in order of ``effective_from`` must follow one another day after day: no gap
    (a month no book covers) and no overlap (two books for one month), one book a year."""
    out: list[Problem] = []
    years: dict[int, RuleBook] = {}
    for book in books:
        if book.year in years:
            out.append(
                Problem(
                    book.source,
                    ("book", "year"),
                    f"{book.year} is also the year of {years[book.year].source}",
                )
            )
        years.setdefault(book.year, book)
    for prev, nxt in pairwise(books):
        want = prev.effective_to + timedelta(days=1)
        if nxt.effective_from == want:
            continue
        what = "a gap" if nxt.effective_from > want else "an overlap"
        out.append(
            Problem(
                nxt.source,
                ("book", "effective_from"),
                f"{nxt.effective_from} leaves {what} after {prev.source} "
                f"(effective_to {prev.effective_to}): it should be {want}",
            )
        )
    return out


# -- one book --------------------------------------------------------------------------------


def _codes(doc: BookFile, report: _Report) -> dict[str, CodeRule]:
    codes: dict[str, CodeRule] = {}
    for i, rule in enumerate(doc.codes):
        if rule.code in codes:
            report(("codes", i, "code"), f"{rule.code} is defined twice")
        codes.setdefault(rule.code, rule)
    return codes


def _header(doc: BookFile, file: str, report: _Report) -> None:
    book = doc.book
    start, end = book.effective_from, book.effective_to
    if start.day != 1:
        report(("book", "effective_from"), f"{start} is not the first day of a month")
    if (end + timedelta(days=1)).day != 1:
        report(("book", "effective_to"), f"{end} is not the last day of a month")
    if end < start:
        report(("book", "effective_to"), f"{end} is before effective_from {start}")
    if start.year != book.year:
        report(("book", "year"), f"{book.year} but effective_from is in {start.year}")
    stem = file.rsplit("/", 1)[-1].removesuffix(".toml")
    if stem.isdigit() and int(stem) != book.year:
        report(("book", "year"), f"{book.year} in a file named {stem}.toml")
    if book.provisional and not book.provisional_reason.strip():
        report(
            ("book", "provisional_reason"), "missing: a provisional book says why it is not final"
        )
    if not book.provisional and book.provisional_reason:
        report(("book", "provisional_reason"), "only a provisional book gives a reason")
    employed = doc.proposals.rpm_rtm_employed_staff
    if employed is not None and employed.enabled:
        report(
            ("proposals", "rpm_rtm_employed_staff", "enabled"),
            "cannot be enforced: wire contract v1 does not say whether staff are employed "
            "by the billing practice",
        )


def _code(rule: CodeRule, loc: Loc, codes: dict[str, CodeRule], report: _Report) -> None:
    name = f"({rule.code})"
    if rule.role == "addon":
        if rule.base is None:
            report((*loc, "base"), f"missing: add-on {rule.code} names no base code")
        elif rule.base not in codes:
            report((*loc, "base"), f"{rule.base} is not a code of this book {name}")
        else:
            base = codes[rule.base]
            if base.role != "base" or base.family != rule.family:
                report(
                    (*loc, "base"),
                    f"{rule.base} is not a base code of family {rule.family} {name}",
                )
        if rule.step_minutes <= 0:
            report((*loc, "step_minutes"), f"an add-on needs a step of at least 1 minute {name}")
    else:
        if rule.base is not None:
            report((*loc, "base"), f"only an add-on names a base {name}")
        if rule.step_minutes:
            report((*loc, "step_minutes"), f"only an add-on has a step {name}")
        if rule.cap is not None or rule.flag_above is not None:
            report((*loc, "cap"), f"caps and payer-edit flags apply to add-ons only {name}")
    if rule.kind == "time" and rule.role == "base" and rule.threshold_minutes <= 0:
        report((*loc, "threshold_minutes"), f"a time base code needs a threshold {name}")
    if rule.band_max_minutes is not None and rule.band_max_minutes < rule.threshold_minutes:
        report((*loc, "band_max_minutes"), f"below threshold_minutes {name}")
    if rule.kind in ("device", "setup"):
        if rule.min_days <= 0:
            report((*loc, "min_days"), f"a {rule.kind} code needs min_days of at least 1 {name}")
        if rule.max_days is not None and rule.max_days < rule.min_days:
            report((*loc, "max_days"), f"below min_days {name}")
    elif rule.min_days or rule.max_days is not None:
        report((*loc, "min_days"), f"only device and set-up codes count days {name}")
    if (rule.kind == "monthly") != (rule.level is not None):
        report((*loc, "level"), f"a monthly code, and only one, names its level {name}")
    if rule.requires_interactive and rule.kind != "time":
        report((*loc, "requires_interactive"), f"only time codes require it {name}")
    if rule.status in PRICED_STATUSES and rule.rvu_nf is None:
        report((*loc, "rvu_nf"), f"missing: status {rule.status} has a national amount {name}")
    if rule.status is not None and rule.status not in PRICED_STATUSES:
        for key in ("rvu_nf", "rvu_fac"):
            if getattr(rule, key) is not None:
                report(
                    (*loc, key),
                    f"status {rule.status} has no national amount: leave the code unpriced {name}",
                )
        if not rule.note.strip():
            report((*loc, "note"), f"missing: say why status {rule.status} is unpriced {name}")


def _levels(doc: BookFile, report: _Report) -> None:
    """Monthly codes of a family split every (chronic conditions, QMB) case between them:
    exactly one code for each."""
    for family in FAMILIES:
        monthly = [(i, r) for i, r in enumerate(doc.codes) if r.family == family and r.level]
        if not monthly:
            continue
        top = max(
            max(r.level.min_conditions, r.level.max_conditions or 0)
            for _, r in monthly
            if r.level is not None
        )
        for conditions in range(top + 2):
            for qmb in (False, True):
                fits = [
                    r.code
                    for _, r in monthly
                    if r.level is not None and r.level.matches(conditions, qmb)
                ]
                if len(fits) == 1:
                    continue
                case = f"{conditions} chronic condition(s), qmb = {str(qmb).lower()}"
                what = "no code" if not fits else f"{' and '.join(fits)} all"
                report(("codes", monthly[0][0], "level"), f"{family}: {what} fit {case}")
                return


def _tracks(doc: BookFile, codes: dict[str, CodeRule], report: _Report) -> None:
    seen: set[tuple[str, str]] = set()
    on_track: set[str] = set()
    for i, track in enumerate(doc.tracks):
        loc: Loc = ("tracks", i)
        label = f"({track.family}/{track.name})"
        if (track.family, track.name) in seen:
            report((*loc, "name"), f"{track.name} twice in family {track.family}")
        seen.add((track.family, track.name))
        base = codes.get(track.base)
        if base is None:
            report((*loc, "base"), f"{track.base} is not a code of this book {label}")
        elif base.role != "base" or base.kind != "time" or base.family != track.family:
            report((*loc, "base"), f"{track.base} is not a {track.family} time base code {label}")
        if track.addon is not None:
            addon = codes.get(track.addon)
            if addon is None:
                report((*loc, "addon"), f"{track.addon} is not a code of this book {label}")
            elif addon.role != "addon" or addon.base != track.base:
                report((*loc, "addon"), f"{track.addon} is not an add-on of {track.base} {label}")
        if track.requires is not None and (track.family, track.name) != REQUIREMENT_READ_ON:
            report(
                (*loc, "requires"),
                f"the engine reads a requirement on {'/'.join(REQUIREMENT_READ_ON)} only {label}",
            )
        on_track.update(c for c in (track.base, track.addon) if c is not None)
    families = {r.family for r in doc.codes}
    for family, names in ENGINE_TRACKS.items():
        if family in families:
            for name in names:
                if (family, name) not in seen:
                    report(("tracks",), f"the engine needs a {family} track named {name!r}")
    for i, rule in enumerate(doc.codes):
        if rule.kind == "time" and rule.code not in on_track:
            report(("codes", i, "code"), f"time code {rule.code} is on no track: never billed")


def _exclusives(doc: BookFile, codes: dict[str, CodeRule], report: _Report) -> None:
    for i, pair in enumerate(doc.exclusive):
        loc: Loc = ("exclusive", i)
        label = f"({pair.a}+{pair.b})"
        missing = [c for c in (pair.a, pair.b) if c not in codes]
        for c in missing:
            report((*loc, "a" if c == pair.a else "b"), f"{c} is not a code of this book {label}")
        if missing:
            continue
        if pair.a == pair.b:
            report((*loc, "b"), f"a code cannot exclude itself {label}")
        fa, fb = codes[pair.a].family, codes[pair.b].family
        if pair.resolution == "track_order" and fa != fb:
            report(
                (*loc, "resolution"),
                f"track_order settles codes of one family; {fa} and {fb} need "
                f"program_of_record or allow_flagged {label}",
            )
        if pair.resolution != "track_order" and fa == fb:
            report(
                (*loc, "resolution"),
                f"both codes are {fa}: only track_order applies inside a family {label}",
            )


def _gates(doc: BookFile, report: _Report) -> None:
    families = {r.family for r in doc.codes}
    gated = {fam for fam, gate in doc.gates if gate is not None}
    for family in FAMILIES:
        if family in families and family not in gated:
            report(("gates",), f"family {family} has codes but no [gates.{family}]")
        if family in gated and family not in families:
            report(("gates", family), f"no code of family {family} in this book")


def _flag_order(doc: BookFile, codes: dict[str, CodeRule], report: _Report) -> None:
    loc: Loc = ("flag_order", "exclusive_conflict")
    order = doc.flag_order.exclusive_conflict
    seen: set[str] = set()
    for code in order:
        if code in seen:
            report(loc, f"{code} is listed twice")
        elif code not in codes:
            report(loc, f"{code} is not a code of this book")
        seen.add(code)
    missing = [r.code for r in doc.codes if r.role == "base" and r.code not in seen]
    if missing:
        report(loc, f"base code(s) missing from the order: {', '.join(missing)}")


def _policy(doc: BookFile, codes: dict[str, CodeRule], report: _Report) -> None:
    policy = doc.policy
    for key in ("rtm_device_code", "rtm_device_code_low_days"):
        code = getattr(policy, key)
        if code is None:
            continue
        rule = codes.get(code)
        if rule is None or rule.family != "rtm" or rule.kind != "device":
            report(("policy", key), f"{code} is not an rtm device code of this book")
    start, end = policy.g0511_transition_from, policy.g0511_transition_to
    if (start is None) != (end is None):
        report(("policy", "g0511_transition_to"), "give both ends of the window, or neither")
    elif start is not None and end is not None and end < start:
        report(("policy", "g0511_transition_to"), f"{end} is before {start}")


def _sources(doc: BookFile, report: _Report) -> None:
    listed = set(doc.book.source_ids)
    cited: list[tuple[Loc, Iterable[str]]] = [
        (("book", "conversion_factor_source"), (doc.book.conversion_factor_source,))
    ]
    cited += [(("codes", i, "sources"), r.sources) for i, r in enumerate(doc.codes)]
    cited += [(("tracks", i, "sources"), t.sources) for i, t in enumerate(doc.tracks)]
    cited += [(("exclusive", i, "sources"), e.sources) for i, e in enumerate(doc.exclusive)]
    cited += [(("gates", f, "sources"), g.sources) for f, g in doc.gates if g is not None]
    cited += [(("proposals", n, "sources"), p.sources) for n, p in doc.proposals if p is not None]
    for loc, sources in cited:
        unlisted = sorted(set(sources) - listed)
        if unlisted:
            report(loc, f"{', '.join(unlisted)} not in [book] source_ids")
