"""One FHIR R4 resource to the data of one wire-contract event (docs/fhir.md "Mapping").

Each mapper reads a resource already validated by its R4B model and returns a
:class:`Mapped` (or, for a ``Condition``, a :class:`ConditionPart`: a patient's
Conditions become one event together); anything it cannot map raises
:class:`~streams.fhir.refs.Unmapped`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from streams.fhir import codes
from streams.fhir.refs import (
    Identity,
    Lookup,
    Span,
    Unmapped,
    code_of,
    codings,
    day,
    extension_value,
    has_code,
    instant,
    label,
    recorded_at,
    ref_type,
    resolve,
    span,
)

PATIENT = ("Patient",)
PRACTITIONER = ("Practitioner",)
DEVICE = ("Device",)


@dataclass(frozen=True, slots=True)
class Mapped:
    """An event's type, patient and data; the envelope is added by the caller."""

    type: str
    patient_id: str
    data: dict[str, Any]
    recorded_at: datetime


@dataclass(frozen=True, slots=True)
class ConditionPart:
    """One Condition of a patient: ``code`` is its ICD-10-CM code when it belongs on the
    chronic list, None when it is left out (inactive, refuted, an encounter diagnosis)."""

    patient_id: str
    code: str | None
    recorded_at: datetime


@dataclass(frozen=True, slots=True)
class Context:
    entries: Lookup  # notes the entries a mapping consults (their versions go in the event id)
    identity: Identity


Mapper = Callable[[dict[str, Any], Context], Mapped | ConditionPart]


# -- shared readers -------------------------------------------------------------------------


def _program(*concepts: Any, cpt: bool = True) -> str | None:
    """A caretally program coding, else (``cpt``) the program a CPT time code implies."""
    program = code_of(codes.PROGRAM, *concepts)
    if program is not None:
        if program not in codes.PROGRAMS:
            raise Unmapped(
                f"program: unknown code {program!r} of {codes.PROGRAM}; one of "
                f"{', '.join(sorted(codes.PROGRAMS))}",
                "value",
            )
        return program
    if cpt:
        for coding in codings(*concepts):
            if coding.get("system") == codes.CPT and coding.get("code") in codes.CPT_PROGRAMS:
                return codes.CPT_PROGRAMS[str(coding["code"])]
    return None


def _billing(resource: dict[str, Any], ctx: Context) -> str | None:
    ref = extension_value(resource, codes.BILLING_PRACTITIONER, "valueReference")
    if ref is None:
        return None
    return resolve(ctx.entries, ref, PRACTITIONER, f"extension[{codes.BILLING_PRACTITIONER}]")


def _role(field_name: str, *concepts: Any) -> str:
    """The staff role of a caretally staff-role coding, required: FHIR cannot say whether
    a Practitioner is clinical staff, and non-clinical time never counts."""
    role = code_of(codes.STAFF_ROLE, *concepts)
    if role is None:
        raise Unmapped(
            f"staff role: not known; add a coding of {codes.STAFF_ROLE} "
            f"({', '.join(sorted(codes.STAFF_ROLES))}) to {field_name}"
        )
    if role not in codes.STAFF_ROLES:
        raise Unmapped(
            f"staff role: unknown code {role!r} of {codes.STAFF_ROLE}; one of "
            f"{', '.join(sorted(codes.STAFF_ROLES))}",
            "value",
        )
    return role


def _void(
    resource: dict[str, Any], ctx: Context, subject: str, status: str, *fallbacks: tuple[str, Any]
) -> Mapped:
    patient = resolve(ctx.entries, resource.get(subject), PATIENT, subject)
    assert patient is not None
    return Mapped(
        "activity.voided",
        patient,
        {
            "activity_id": ctx.identity.activity_id,
            "reason": f"{ctx.identity.label} is {status} in the EHR",
        },
        recorded_at(resource, *fallbacks),
    )


def _activity(
    resource: dict[str, Any],
    ctx: Context,
    *,
    subject: str,
    time: Span,
    staff: str | None,
    staff_field: str,
    role: tuple[str, Any],
    program: str | None,
    practitioner: str | None,
    activity: str,
    fallbacks: tuple[tuple[str, Any], ...],
    face_to_face: bool = False,
    interactive: tuple[Any, ...] = (),
) -> Mapped:
    """``role``: where its coding goes and the concepts that may hold it; ``interactive``:
    the concepts that may hold the :data:`~streams.fhir.codes.CONTACT` coding."""
    patient = resolve(ctx.entries, resource.get(subject), PATIENT, subject)
    assert patient is not None
    if staff is None:
        raise Unmapped(f"{staff_field}: missing (a reference to the Practitioner who did the time)")
    staff_role = _role(*role)
    if program is None:
        raise Unmapped(
            f"program: not known; add a coding of {codes.PROGRAM} (ccm, pcm, bhi, rpm, rtm, "
            "tcm) or a CPT time code (e.g. 99490)"
        )
    if practitioner is None:
        raise Unmapped(
            f"billing practitioner: not known; add the extension {codes.BILLING_PRACTITIONER} "
            "(valueReference to the Practitioner)"
        )
    data: dict[str, Any] = {
        "activity_id": ctx.identity.activity_id,
        "staff_id": staff,
        "staff_role": staff_role,
        "practitioner_id": practitioner,
        "program": program,
        "activity": activity,
        "started_at": time.start.isoformat(),
    }
    if time.end is not None:
        data["ended_at"] = time.end.isoformat()
    if time.minutes is not None:
        data["minutes"] = int(time.minutes) if time.minutes.is_integer() else time.minutes
    if face_to_face:
        data["face_to_face"] = True
    if has_code(codes.CONTACT, ("interactive",), *interactive):
        data["interactive"] = True
    return Mapped("activity.logged", patient, data, recorded_at(resource, *fallbacks))


_NOT_LABELS = (codes.PROGRAM, codes.STAFF_ROLE, codes.CONTACT)
"""Code systems whose codes say nothing of what was done."""


def _refuse_status(rtype: str, status: Any, allowed: str) -> Unmapped:
    return Unmapped(f"{rtype}.status {status!r}: not mapped; {allowed}", "not-supported")


# -- the time ------------------------------------------------------------------------------


def encounter(res: dict[str, Any], ctx: Context) -> Mapped:
    """Virtual or in-person contact -> activity.logged (entered-in-error or cancelled ->
    activity.voided); an inpatient class -> stay.recorded."""
    status = res.get("status")
    klass = res.get("class") or {}
    code = klass.get("code")
    if klass.get("system") not in (None, codes.ACT_CODE):
        raise Unmapped(f"Encounter.class: give a code of {codes.ACT_CODE}", "value")
    if code in codes.INPATIENT:
        return _stay(res, ctx, status)
    if code not in codes.VIRTUAL | codes.IN_PERSON:
        raise Unmapped(
            f"Encounter.class {code!r}: not mapped; VR (virtual), AMB, HH, FLD (in person) "
            "are care-management time, IMP, ACUTE, NONAC an inpatient stay",
            "not-supported",
        )
    if status in ("entered-in-error", "cancelled"):
        return _void(
            res, ctx, "subject", status, ("period.end", (res.get("period") or {}).get("end"))
        )
    if status != "finished":
        raise _refuse_status("Encounter", status, "finished is time, entered-in-error a void")
    episode = _episode(res, ctx)
    staff, role = None, ("Encounter.participant.type", None)
    for i, participant in enumerate(res.get("participant") or []):
        if isinstance(participant.get("individual"), dict):
            staff = resolve(
                ctx.entries,
                participant["individual"],
                PRACTITIONER,
                f"Encounter.participant[{i}].individual",
            )
            role = (f"Encounter.participant[{i}].type", participant.get("type"))
            break
    program = _program(res.get("type"), res.get("serviceType"))
    practitioner = _billing(res, ctx)
    if episode is not None:
        program = program or _program(episode.get("type"))
        if practitioner is None:
            practitioner = _billing(episode, ctx) or resolve(
                ctx.entries, episode.get("careManager"), PRACTITIONER, "careManager", required=False
            )
    return _activity(
        res,
        ctx,
        subject="subject",
        time=span(res.get("period"), "Encounter.period", res.get("length"), "Encounter.length"),
        staff=staff,
        staff_field="Encounter.participant.individual",
        role=role,
        program=program,
        practitioner=practitioner,
        activity=label(
            res.get("type"), "virtual_contact" if code == "VR" else "contact", _NOT_LABELS
        ),
        fallbacks=(("period.end", (res.get("period") or {}).get("end")),),
        face_to_face=code in codes.IN_PERSON,
        interactive=(res.get("type"), res.get("serviceType")),
    )


def _episode(res: dict[str, Any], ctx: Context) -> dict[str, Any] | None:
    """The EpisodeOfCare of this input an Encounter belongs to (its first one), if any."""
    for ref in res.get("episodeOfCare") or []:
        if isinstance(ref, dict) and isinstance(ref.get("reference"), str):
            found = ctx.entries.get(ref["reference"])
            if found is not None and found.get("resourceType") == "EpisodeOfCare":
                return found
    return None


def _stay(res: dict[str, Any], ctx: Context, status: Any) -> Mapped:
    if status != "finished":
        raise _refuse_status(
            "Encounter", status, "an inpatient stay is recorded once finished (discharged)"
        )
    patient = resolve(ctx.entries, res.get("subject"), PATIENT, "subject")
    assert patient is not None
    period = res.get("period") or {}
    data = {
        "setting": "inpatient",
        "admitted_on": day(period.get("start"), "Encounter.period.start").isoformat(),
        "discharged_on": day(period.get("end"), "Encounter.period.end").isoformat(),
    }
    return Mapped(
        "stay.recorded", patient, data, recorded_at(res, ("period.end", period.get("end")))
    )


def procedure(res: dict[str, Any], ctx: Context) -> Mapped:
    """completed -> activity.logged; entered-in-error or not-done -> activity.voided."""
    status = res.get("status")
    if status in ("entered-in-error", "not-done"):
        end = (res.get("performedPeriod") or {}).get("end")
        return _void(res, ctx, "subject", status, ("performedPeriod.end", end))
    if status != "completed":
        raise _refuse_status("Procedure", status, "completed is time, entered-in-error a void")
    if res.get("performedPeriod") is None:
        raise Unmapped(
            "Procedure.performedPeriod: missing (the time needs a start and an end; "
            "performedDateTime has no duration)"
        )
    staff, role = None, ("Procedure.performer.function", None)
    for i, performer in enumerate(res.get("performer") or []):
        staff = resolve(
            ctx.entries, performer.get("actor"), PRACTITIONER, f"Procedure.performer[{i}].actor"
        )
        role = (f"Procedure.performer[{i}].function", performer.get("function"))
        break
    return _activity(
        res,
        ctx,
        subject="subject",
        time=span(res.get("performedPeriod"), "Procedure.performedPeriod"),
        staff=staff,
        staff_field="Procedure.performer.actor",
        role=role,
        program=_program(res.get("category"), res.get("code")),
        practitioner=_billing(res, ctx),
        activity=label(res.get("code"), "procedure", _NOT_LABELS),
        fallbacks=(("performedPeriod.end", res["performedPeriod"].get("end")),),
        interactive=(res.get("category"), res.get("code")),
    )


def task(res: dict[str, Any], ctx: Context) -> Mapped:
    """completed -> activity.logged; entered-in-error or cancelled -> activity.voided. The
    billing practitioner: the extension, else the Practitioner who requested the task."""
    status = res.get("status")
    if status in ("entered-in-error", "cancelled"):
        return _void(res, ctx, "for", status, ("lastModified", res.get("lastModified")))
    if status != "completed":
        raise _refuse_status("Task", status, "completed is time, entered-in-error a void")
    staff = resolve(ctx.entries, res.get("owner"), PRACTITIONER, "Task.owner")
    practitioner = _billing(res, ctx)
    requester = res.get("requester")
    if practitioner is None and ref_type(ctx.entries, requester) == "Practitioner":
        practitioner = resolve(ctx.entries, requester, PRACTITIONER, "Task.requester")
    return _activity(
        res,
        ctx,
        subject="for",
        time=span(res.get("executionPeriod"), "Task.executionPeriod"),
        staff=staff,
        staff_field="Task.owner",
        role=("Task.performerType", res.get("performerType")),
        program=_program(res.get("code")),
        practitioner=practitioner,
        activity=label(res.get("code"), "task", _NOT_LABELS),
        interactive=(res.get("code"),),
        fallbacks=(
            ("lastModified", res.get("lastModified")),
            ("executionPeriod.end", (res.get("executionPeriod") or {}).get("end")),
        ),
    )


# -- documentation -------------------------------------------------------------------------


def condition(res: dict[str, Any], ctx: Context) -> ConditionPart:
    """One Condition of a patient's chronic list (see :class:`ConditionPart`)."""
    patient = resolve(ctx.entries, res.get("subject"), PATIENT, "subject")
    assert patient is not None
    moment = recorded_at(res, ("recordedDate", res.get("recordedDate")))
    verification = code_of(codes.CONDITION_VERIFICATION, res.get("verificationStatus"))
    if verification in ("entered-in-error", "refuted"):
        return ConditionPart(patient, None, moment)
    clinical = code_of(codes.CONDITION_CLINICAL, res.get("clinicalStatus"))
    if clinical is None:
        raise Unmapped(f"Condition.clinicalStatus: missing (a code of {codes.CONDITION_CLINICAL})")
    if clinical not in ("active", "recurrence", "relapse"):
        return ConditionPart(patient, None, moment)
    if has_code(codes.CONDITION_CATEGORY, ("encounter-diagnosis",), res.get("category")) and not (
        has_code(codes.CONDITION_CATEGORY, ("problem-list-item",), res.get("category"))
    ):
        return ConditionPart(patient, None, moment)
    icd = code_of(codes.ICD10CM, res.get("code"))
    if icd is None:
        raise Unmapped(f"Condition.code: no ICD-10-CM coding (system {codes.ICD10CM})")
    return ConditionPart(patient, icd, moment)


def consent(res: dict[str, Any], ctx: Context) -> Mapped:
    """active (``provision.type`` permit) -> consent.recorded; active with ``provision.type``
    deny (an opt-out), inactive or rejected -> consent.revoked."""
    status = res.get("status")
    if status not in ("active", "inactive", "rejected"):
        raise _refuse_status(
            "Consent", status, "active is a consent, inactive or rejected a revocation"
        )
    patient = resolve(ctx.entries, res.get("patient"), PATIENT, "Consent.patient")
    assert patient is not None
    provision = res.get("provision") or {}
    program = _program(res.get("category"), provision.get("code"), res.get("policyRule"), cpt=False)
    if program is None:
        raise Unmapped(f"program: not known; add a coding of {codes.PROGRAM} to Consent.category")
    practitioner = _billing(res, ctx)
    if practitioner is None:
        for i, actor in enumerate(provision.get("actor") or []):
            if ref_type(ctx.entries, actor.get("reference")) == "Practitioner":
                practitioner = resolve(
                    ctx.entries,
                    actor["reference"],
                    PRACTITIONER,
                    f"Consent.provision.actor[{i}].reference",
                )
                break
    if practitioner is None:
        raise Unmapped(
            "practitioner: not known; add a Consent.provision.actor referring to the "
            "billing Practitioner"
        )
    method = code_of(codes.CONSENT_METHOD, res.get("category"))
    if method is None:
        written = res.get("sourceAttachment") is not None or res.get("sourceReference") is not None
        method = "written" if written else "verbal"
    period = provision.get("period") or {}
    meta = res.get("meta") or {}
    if status == "active" and provision.get("type") != "deny":
        kind = "consent.recorded"
        given = res.get("dateTime") or period.get("start")
        on = day(given, "Consent.dateTime")
    elif status == "active":  # an opt-out in force: from its start, else its issue
        kind = "consent.revoked"
        given = period.get("start") or res.get("dateTime") or meta.get("lastUpdated")
        on = day(given, "Consent.provision.period.start (or dateTime, meta.lastUpdated)")
    else:  # withdrawn: when the consent ended, never its issue date (that is back-dating)
        kind = "consent.revoked"
        ended = period.get("end") or meta.get("lastUpdated")
        on = day(ended, "Consent.provision.period.end (or meta.lastUpdated)")
    data = {
        "program": program,
        "practitioner_id": practitioner,
        "method": method,
        "on": on.isoformat(),
    }
    if kind == "consent.recorded":
        moment = recorded_at(res, ("dateTime", res.get("dateTime")))
    else:
        moment = recorded_at(res, ("the date of the revocation", on.isoformat()))
    return Mapped(kind, patient, data, moment)


def care_plan(res: dict[str, Any], ctx: Context) -> Mapped:
    """active, on-hold or completed -> care_plan.recorded."""
    status = res.get("status")
    if status not in ("active", "on-hold", "completed"):
        raise _refuse_status("CarePlan", status, "active, on-hold or completed is a care plan")
    patient = resolve(ctx.entries, res.get("subject"), PATIENT, "subject")
    assert patient is not None
    program = _program(res.get("category"), cpt=False)
    if program is None:
        raise Unmapped(f"program: not known; add a coding of {codes.PROGRAM} to CarePlan.category")
    complexity = code_of(codes.COMPLEXITY, res.get("category")) or "low"
    if res.get("created") is not None:
        on = day(res.get("created"), "CarePlan.created")
    else:
        on = day((res.get("period") or {}).get("start"), "CarePlan.created")
    data = {"program": program, "on": on.isoformat(), "complexity": complexity}
    moment = recorded_at(res, ("created", res.get("created")))
    return Mapped("care_plan.recorded", patient, data, moment)


def episode_of_care(res: dict[str, Any], ctx: Context) -> Mapped:
    """active -> enrollment.recorded (program: type; practitioner: the extension, else
    careManager; on: period.start)."""
    status = res.get("status")
    if status != "active":
        raise _refuse_status(
            "EpisodeOfCare",
            status,
            "active is an enrollment (an ended program is a revoked Consent)",
        )
    patient = resolve(ctx.entries, res.get("patient"), PATIENT, "EpisodeOfCare.patient")
    assert patient is not None
    program = _program(res.get("type"), cpt=False)
    if program is None:
        raise Unmapped(f"program: not known; add a coding of {codes.PROGRAM} to EpisodeOfCare.type")
    practitioner = _billing(res, ctx) or resolve(
        ctx.entries, res.get("careManager"), PRACTITIONER, "EpisodeOfCare.careManager"
    )
    on = day((res.get("period") or {}).get("start"), "EpisodeOfCare.period.start")
    data: dict[str, Any] = {
        "program": program,
        "practitioner_id": practitioner,
        "on": on.isoformat(),
    }
    if extension_value(res, codes.QMB, "valueBoolean") is True:
        data["qmb"] = True
    moment = recorded_at(res, ("period.start", (res.get("period") or {}).get("start")))
    return Mapped("enrollment.recorded", patient, data, moment)


def observation(res: dict[str, Any], ctx: Context) -> Mapped:
    """A device's Observation -> device.reading (program: a caretally coding, else rpm for
    the vital-signs category)."""
    status = res.get("status")
    if status not in ("final", "amended", "corrected", "preliminary"):
        raise _refuse_status(
            "Observation", status, "final, amended, corrected or preliminary is a reading"
        )
    device = resolve(ctx.entries, res.get("device"), DEVICE, "Observation.device")
    patient = resolve(ctx.entries, res.get("subject"), PATIENT, "subject")
    assert patient is not None and device is not None
    taken = res.get("effectiveDateTime", res.get("effectiveInstant"))
    when = instant(taken, "Observation.effectiveDateTime")
    program = _program(res.get("category"), res.get("code"), cpt=False)
    if program is None and has_code(
        codes.OBSERVATION_CATEGORY, ("vital-signs",), res.get("category")
    ):
        program = "rpm"
    if program is None:
        raise Unmapped(
            f"program: not known; add a coding of {codes.PROGRAM} (rpm or rtm) to "
            "Observation.category (vital-signs readings are rpm)"
        )
    data = {"device_id": device, "program": program, "taken_at": when.isoformat()}
    moment = recorded_at(res, ("issued", res.get("issued")), ("effectiveDateTime", taken))
    return Mapped("device.reading", patient, data, moment)


MAPPERS: dict[str, Mapper] = {
    "Encounter": encounter,
    "Procedure": procedure,
    "Task": task,
    "Condition": condition,
    "Consent": consent,
    "CarePlan": care_plan,
    "EpisodeOfCare": episode_of_care,
    "Observation": observation,
}
"""The resources that become events."""
