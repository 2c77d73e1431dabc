"""Output formats of ``caretally audit``: a rich table, one JSON document, CSV, one HTML page.

The table and the HTML page show the same sections (:func:`sections`); JSON and CSV are
for machines.

JSON (:func:`report_dict`): one object whose keys are the fields of
:class:`projections.audit.AuditReport`, in this order, plus ``report`` (the format's
name and version, ``caretally.audit/1``) and ``input`` first::

    report, input, org_id, patient_id, month, timezone, facility_type,
    qualifying_apm_participant, fee_schedule (non_facility | facility),
    as_of (null: everything in the input), latest_recorded_at,
    month_start, month_end (exclusive), month_closed,
    events {applied, duplicates, rejected},
    activities [{activity_id, version, versions, status (current|superseded|voided),
        event_id, recorded_at, staff_id, role, program, practitioner_id, label, start, end,
        seconds, face_to_face, interactive, in_month, counted,
        excluded [{reason, seconds, detail, minutes}],
        amended_from [{version, event_id, recorded_at, changes [{field, before, after}]}],
        superseded_by, void {event_id, recorded_at, reason} | null,
        minutes, minutes_in_month, minutes_counted}],
    programs [{program, practitioner_id, counted, concurrent, total, personal, staff,
        minutes_total}],
    documentation {consents, care_plans, conditions, enrollments, visits, stays,
        devices [{program, days, periods [{start, end, index, days}]}],
        conditions_in_effect, complex_month, established_patient},
    billing {rule_year, conversion_factor (the one used), in_replay, minutes, billable, blocked
        [{code, units, practitioner_id, family, descriptor, fee, amount, reasons,
        sources}], flags, estimated_payment, rules [{kind, name, sources}], source_ids},
    rejected [{event_id, type, recorded_at, reason}],
    unmatched_voids [{activity_id, event_id, recorded_at, reason}]

Plain time fields are whole seconds; ``minutes*`` fields are minutes rounded to 2
decimals (as in the billing view). Instants are ISO-8601: activity ``start``/``end`` and
the month bounds in the practice's zone, ``recorded_at`` as sent.

CSV (:data:`CSV_COLUMNS`): one row per activity version in the month; time columns
in minutes; one ``excluded_*`` column per reason a minute is not counted
(``excluded_other``: a reason this version of caretally does not know yet);
``exclusion_details``: ``reason: why`` joined with `` | ``.
"""

from __future__ import annotations

import csv
import dataclasses
import html
import os
import sys
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any, TextIO

import orjson

from projections.audit import (
    AMENDED,
    VOIDED,
    ActivityRow,
    AuditReport,
    Exclusion,
    ProgramTime,
    to_minutes,
)

FORMAT = "caretally.audit/1"

# core exclusion reason (docs/rules.md §6.3 names, plus voided/amended) -> CSV column
EXCLUSION_COLUMNS: dict[str, str] = {
    "duplicate_event": "excluded_duplicate_event",
    "face_to_face_excluded": "excluded_face_to_face",
    "non_clinical_staff_excluded": "excluded_non_clinical_staff",
    "consent_after_activity": "excluded_before_consent",
    "inpatient_time_excluded": "excluded_inpatient",
    "overlap": "excluded_overlap",
    "double_count": "excluded_double_count",  # double_count:<a>+<b>
    VOIDED: "excluded_voided",
    AMENDED: "excluded_amended",
}
CSV_COLUMNS = [
    "org_id",
    "patient_id",
    "month",
    "as_of",
    "activity_id",
    "version",
    "status",
    "event_id",
    "recorded_at",
    "staff_id",
    "staff_role",
    "program",
    "practitioner_id",
    "activity",
    "start",
    "end",
    "minutes",
    "face_to_face",
    "interactive",
    "minutes_in_month",
    "minutes_counted",
    *EXCLUSION_COLUMNS.values(),
    "excluded_other",
    "exclusion_details",
    "void_reason",
    "amended_from",
]

# how people read the reasons (table and HTML)
REASON_LABELS: dict[str, str] = {
    "duplicate_event": "duplicate event",
    "face_to_face_excluded": "face-to-face",
    "non_clinical_staff_excluded": "non-clinical staff",
    "consent_after_activity": "before consent",
    "inpatient_time_excluded": "inpatient stay",
    "overlap": "overlap",
    VOIDED: "voided",
    AMENDED: "amended",
}


def reason_label(reason: str) -> str:
    if reason.startswith("double_count:"):
        return f"double count ({reason.split(':', 1)[1]})"
    return REASON_LABELS.get(reason, reason)


def _column_of(reason: str) -> str:
    return EXCLUSION_COLUMNS.get(reason.split(":", 1)[0], "excluded_other")


# -- JSON -------------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    """Dataclasses to dicts (field order), instants and dates to ISO text, tuples to lists."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out = {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, ActivityRow):
            out["minutes"] = to_minutes(value.seconds)
            out["minutes_in_month"] = to_minutes(value.in_month)
            out["minutes_counted"] = to_minutes(value.counted)
        elif isinstance(value, Exclusion):
            out["minutes"] = to_minutes(value.seconds)
        elif isinstance(value, ProgramTime):
            out["minutes_total"] = to_minutes(value.total)
        return out
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def report_dict(report: AuditReport, source: str | None = None) -> dict[str, Any]:
    """The report as one JSON-ready object (see the module doc for its keys)."""
    return {"report": FORMAT, "input": source, **_plain(report)}


def write_json(report: AuditReport, out: TextIO, source: str | None = None) -> None:
    out.write(orjson.dumps(report_dict(report, source), option=orjson.OPT_INDENT_2).decode())
    out.write("\n")


# -- CSV --------------------------------------------------------------------------------


def _amended_text(row: ActivityRow) -> str:
    parts = []
    for p in row.amended_from:
        what = "; ".join(f"{c.field} {c.before} -> {c.after}" for c in p.changes) or "no change"
        parts.append(f"v{p.version} {p.event_id} ({p.recorded_at.isoformat()}): {what}")
    return " | ".join(parts)


def csv_rows(report: AuditReport) -> list[list[str]]:
    """One row per activity version, in :data:`CSV_COLUMNS` order."""
    rows = []
    as_of = report.as_of.isoformat() if report.as_of else ""
    for r in report.activities:
        excluded = dict.fromkeys([*EXCLUSION_COLUMNS.values(), "excluded_other"], 0)
        for e in r.excluded:
            excluded[_column_of(e.reason)] += e.seconds
        rows.append(
            [
                report.org_id,
                report.patient_id,
                report.month,
                as_of,
                r.activity_id,
                str(r.version),
                r.status,
                r.event_id,
                r.recorded_at.isoformat(),
                r.staff_id,
                r.role,
                r.program,
                r.practitioner_id,
                r.label,
                r.start.isoformat(),
                r.end.isoformat(),
                f"{to_minutes(r.seconds):g}",
                str(r.face_to_face).lower(),
                str(r.interactive).lower(),
                f"{to_minutes(r.in_month):g}",
                f"{to_minutes(r.counted):g}",
                *(f"{to_minutes(s):g}" for s in excluded.values()),
                " | ".join(f"{e.reason}: {e.detail}" for e in r.excluded),
                r.void.reason if r.void else "",
                _amended_text(r),
            ]
        )
    return rows


def write_csv(report: AuditReport, out: TextIO) -> int:
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    rows = csv_rows(report)
    writer.writerows(rows)
    return len(rows)


# -- sections shared by the table and the HTML page -----------------------------------


@dataclass(slots=True)
class Section:
    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    note: str = ""
    numeric: frozenset[int] = frozenset()  # right-aligned columns


def _when(ts: datetime) -> str:
    return ts.strftime("%Y-%m-%d %H:%M:%S" if ts.second else "%Y-%m-%d %H:%M")


def _utc(ts: datetime) -> str:
    """An instant in UTC, short: 2025-03-03 16:00Z."""
    return _when(ts.astimezone(UTC)) + "Z"


def _m(seconds: int) -> str:
    return f"{to_minutes(seconds):g}"


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def _pricing(report: AuditReport) -> str:
    """How the fees are priced: the amounts and the conversion factor used (with the
    payment setting that chose each, ``practice.configured``)."""
    amounts = "facility" if report.fee_schedule == "facility" else "non-facility"
    who = "qualifying" if report.qualifying_apm_participant else "non-qualifying"
    return (
        f"{amounts} amounts, conversion factor {report.billing.conversion_factor} "
        f"({who} APM participant)"
    )


def header(report: AuditReport, source: str | None = None) -> list[tuple[str, str]]:
    """(label, value) lines of the report's header."""
    ev = report.events
    if report.as_of is not None:
        as_of = f"{report.as_of.isoformat()} (events recorded at or before it)"
    else:
        latest = report.latest_recorded_at
        as_of = "everything in the input" + (
            f" (latest recorded_at {latest.isoformat()})" if latest else ""
        )
    lines = [
        ("org", report.org_id),
        ("patient", report.patient_id),
        (
            "month",
            f"{report.month} ({report.timezone}; {_when(report.month_start)} to "
            f"{_when(report.month_end)})" + (", closed" if report.month_closed else ""),
        ),
        ("as of", as_of),
        (
            "events",
            f"{ev.applied} applied, {ev.duplicates} duplicate, {ev.rejected} rejected",
        ),
        ("rule year", f"{report.billing.rule_year} (facility: {report.facility_type})"),
        ("fees", _pricing(report)),
    ]
    if source:
        lines.insert(0, ("input", source))
    if not report.billing.in_replay:
        lines.append(("note", "`caretally replay` prints no line for this month"))
    return lines


def _activity_section(report: AuditReport) -> Section:
    s = Section(
        "Activities",
        [
            "activity",
            "status",
            "who",
            "program",
            "practitioner",
            "start",
            "end",
            "min in month",
            "min counted",
            "not counted (min: why)",
            "history",
        ],
        numeric=frozenset({7, 8}),
    )
    for r in report.activities:
        why = "\n".join(
            f"{reason_label(e.reason)} {_m(e.seconds)} min: {e.detail}" for e in r.excluded
        )
        history = [f"logged {_utc(r.recorded_at)} ({r.event_id})"]
        for p in r.amended_from:
            what = "; ".join(f"{c.field} {c.before} -> {c.after}" for c in p.changes)
            history.append(f"amended from v{p.version} ({p.event_id}): {what or 'no change'}")
        if r.void is not None:
            history.append(f"voided {_utc(r.void.recorded_at)} ({r.void.event_id})")
        marks = [
            x for x, on in (("face-to-face", r.face_to_face), ("interactive", r.interactive)) if on
        ]
        s.rows.append(
            [
                f"{r.activity_id} v{r.version}/{r.versions}\n{r.label}",
                r.status,
                f"{r.staff_id}\n{r.role}",
                "\n".join([r.program, *marks]),
                r.practitioner_id,
                _when(r.start),
                _when(r.end),
                _m(r.in_month),
                _m(r.counted),
                why,
                "\n".join(history),
            ]
        )
    counted = sum(r.counted for r in report.activities)
    s.note = f"{len(report.activities)} version(s); {_m(counted)} minute(s) counted"
    return s


def sections(report: AuditReport) -> list[Section]:
    """The report as titled tables of text (what the table and HTML formats print)."""
    out = [_activity_section(report)]
    time = Section(
        "Time by program and billing practitioner (docs/rules.md §6.2 step 5)",
        ["program", "practitioner", "counted", "concurrent staff (once)", "total", "personal"],
        numeric=frozenset({2, 3, 4, 5}),
        note="minutes; total = counted - concurrent, the minutes the codes are earned on",
    )
    for p in report.programs:
        time.rows.append(
            [
                p.program,
                p.practitioner_id,
                _m(p.counted),
                _m(p.concurrent),
                _m(p.total),
                _m(p.personal),
            ]
        )
    out.append(time)
    d = report.documentation
    out.append(
        Section(
            "Consents",
            ["program", "practitioner", "method", "on", "revoked", "event"],
            [
                [c.program, c.practitioner_id, c.method, str(c.on), _yes(c.revoked), c.event_id]
                for c in d.consents
            ],
        )
    )
    out.append(
        Section(
            "Care plans",
            ["program", "on", "complexity", "event"],
            [[c.program, str(c.on), c.complexity, c.event_id] for c in d.care_plans],
            note=f"complex CCM month: {_yes(d.complex_month)}",
        )
    )
    out.append(
        Section(
            "Chronic-condition lists",
            ["conditions", "recorded at", "event"],
            [[str(c.count), c.recorded_at.isoformat(), c.event_id] for c in d.conditions],
            note=f"in effect for the month: {d.conditions_in_effect}",
            numeric=frozenset({0}),
        )
    )
    out.append(
        Section(
            "Enrollments",
            ["program", "practitioner", "on", "QMB", "event"],
            [
                [e.program, e.practitioner_id, str(e.on), _yes(e.qmb), e.event_id]
                for e in d.enrollments
            ],
        )
    )
    out.append(
        Section(
            "Visits",
            ["practitioner", "on", "kind", "event"],
            [[v.practitioner_id, str(v.on), v.kind, v.event_id] for v in d.visits],
            note=f"established patient (RPM): {_yes(d.established_patient)}",
        )
    )
    out.append(
        Section(
            "Stays",
            ["setting", "admitted", "discharged", "event"],
            [[s.setting, str(s.admitted_on), str(s.discharged_on), s.event_id] for s in d.stays],
        )
    )
    out.append(
        Section(
            "Device reading days",
            ["program", "days in the month", "30-day periods ending in the month"],
            [
                [
                    dev.program,
                    f"{len(dev.days)}: " + ", ".join(f"{x.day:02d}" for x in dev.days),
                    "; ".join(
                        f"{p.start}..{p.end}: {p.days} day(s)"
                        + (" (first of episode)" if p.index == 0 else "")
                        for p in dev.periods
                    ),
                ]
                for dev in d.devices
            ],
        )
    )
    b = report.billing
    out.append(
        Section(
            "Codes billed",
            ["code", "units", "practitioner", "descriptor", "fee", "amount", "sources"],
            [
                [
                    ln.code,
                    str(ln.units),
                    ln.practitioner_id or "-",
                    ln.descriptor,
                    "-" if ln.fee is None else f"{ln.fee:.2f}",
                    "-" if ln.amount is None else f"{ln.amount:.2f}",
                    ", ".join(ln.sources),
                ]
                for ln in b.billable
            ],
            note=f"estimated payment ${b.estimated_payment:,.2f} (national, {_pricing(report)})",
            numeric=frozenset({1, 4, 5}),
        )
    )
    out.append(
        Section(
            "Codes blocked",
            ["code", "units", "practitioner", "reasons", "sources"],
            [
                [
                    ln.code,
                    str(ln.units),
                    ln.practitioner_id or "-",
                    ", ".join(ln.reasons),
                    ", ".join(ln.sources),
                ]
                for ln in b.blocked
            ],
            numeric=frozenset({1}),
        )
    )
    out.append(
        Section(
            f"Rules applied (rule year {b.rule_year})",
            ["kind", "rule", "sources"],
            [[r.kind, r.name, ", ".join(r.sources)] for r in b.rules],
            note=f"source ids (docs/rules.md §1): {', '.join(b.source_ids) or 'none'}",
        )
    )
    out.append(Section("Flags (docs/rules.md §6.3)", ["flag"], [[f] for f in b.flags]))
    if report.rejected:
        out.append(
            Section(
                "Rejected events",
                ["event", "type", "recorded at", "reason"],
                [
                    [x.event_id, x.type, x.recorded_at.isoformat(), x.reason]
                    for x in report.rejected
                ],
            )
        )
    if report.unmatched_voids:
        out.append(
            Section(
                "Voids of activities not on record (no effect)",
                ["activity", "event", "recorded at", "reason"],
                [
                    [x.activity_id, x.event_id, x.recorded_at.isoformat(), x.reason]
                    for x in report.unmatched_voids
                ],
            )
        )
    return out


# -- rich table -------------------------------------------------------------------------


def write_table(report: AuditReport, out: TextIO | None = None, source: str | None = None) -> None:
    from rich.console import Console  # imported here: json and csv output do not need it
    from rich.table import Table

    stream = out or sys.stdout
    # a terminal (or $COLUMNS) sets the width; a file or pipe gets a wide table
    wide = stream.isatty() or os.environ.get("COLUMNS", "").isdigit()
    console = Console(file=stream, width=None if wide else 200)
    console.print(f"[bold]caretally audit[/]: {report.org_id} {report.month}")
    for label, value in header(report, source):
        console.print(f"  [dim]{label}:[/] {value}", highlight=False, markup=True)
    for s in sections(report):
        console.print()
        if not s.rows:
            console.print(f"[italic]{s.title}[/]: none" + (f" ({s.note})" if s.note else ""))
            continue
        lines = any("\n" in cell for row in s.rows for cell in row)
        table = Table(title=s.title, title_justify="left", show_lines=lines)
        for i, col in enumerate(s.columns):
            table.add_column(col, justify="right" if i in s.numeric else "left", overflow="fold")
        for row in s.rows:
            table.add_row(*row)
        if s.note:
            table.caption = s.note
            table.caption_justify = "left"
        console.print(table)


# -- HTML -------------------------------------------------------------------------------

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
       margin: 2rem; color: #1b1b1b; font-size: 14px; }
h1 { font-size: 1.4rem; margin: 0 0 .5rem; }
h2 { font-size: 1.1rem; margin: 1.6rem 0 .4rem; border-bottom: 1px solid #bbb; }
dl.header { display: grid; grid-template-columns: max-content auto; gap: .2rem 1rem; }
dl.header dt { font-weight: 600; }
dl.header dd { margin: 0; }
table { border-collapse: collapse; width: 100%; }
th, td { border: 1px solid #ccc; padding: .25rem .45rem; vertical-align: top;
         text-align: left; white-space: pre-line; }
th { background: #f0f0f0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.voided td, tr.superseded td { color: #666; background: #fafafa; }
p.note { margin: .3rem 0; color: #444; }
p.none { color: #777; font-style: italic; }
@media print {
  body { margin: 0; font-size: 9pt; }
  h2 { break-after: avoid; }
  thead { display: table-header-group; }
  tr { break-inside: avoid; }
  th { background: none; }
  @page { size: landscape; margin: 1cm; }
}
"""


def _cell(text: str, numeric: bool) -> str:
    cls = ' class="num"' if numeric else ""
    return f"<td{cls}>{html.escape(text)}</td>"


def render_html(report: AuditReport, source: str | None = None) -> str:
    """A single self-contained page (inline CSS, no scripts, no external assets)."""
    e = html.escape
    title = f"caretally audit: {report.org_id} {report.patient_id} {report.month}"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        f"<title>{e(title)}</title>",
        f"<style>{_CSS}</style>",
        "</head>",
        "<body>",
        f"<h1>{e(title)}</h1>",
        '<dl class="header">',
    ]
    for label, value in header(report, source):
        parts.append(f"<dt>{e(label)}</dt><dd>{e(value)}</dd>")
    parts.append("</dl>")
    statuses = [r.status for r in report.activities]
    for index, s in enumerate(sections(report)):
        parts.append(f"<section><h2>{e(s.title)}</h2>")
        if s.rows:
            parts.append("<table><thead><tr>")
            parts.extend(f"<th>{e(c)}</th>" for c in s.columns)
            parts.append("</tr></thead><tbody>")
            for n, row in enumerate(s.rows):
                cls = f' class="{statuses[n]}"' if index == 0 else ""
                cells = "".join(_cell(v, i in s.numeric) for i, v in enumerate(row))
                parts.append(f"<tr{cls}>{cells}</tr>")
            parts.append("</tbody></table>")
        else:
            parts.append('<p class="none">none</p>')
        if s.note:
            parts.append(f'<p class="note">{e(s.note)}</p>')
        parts.append("</section>")
    parts += ["</body>", "</html>", ""]
    return "\n".join(parts)


def write_html(report: AuditReport, out: TextIO, source: str | None = None) -> None:
    out.write(render_html(report, source))
