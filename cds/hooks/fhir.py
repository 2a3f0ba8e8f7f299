"""A CDS Hooks call (order-select, order-sign) -> the domain :class:`~cds.domain.Order`.

What is read (everything else in the request is ignored, so any client's extra
resources, codings and fields pass through harmlessly):

* ``context.patientId`` -> the patient (required: 412 without it);
* ``context.draftOrders`` (a FHIR Bundle, required: 412 without it): every
  ``ServiceRequest`` entry whose ``code.coding`` has a coding of the catalogue's
  ``code_system`` (default ``urn:cds:item``) is one order line, ``item_code`` that
  coding's ``code``, ``line_id`` the resource's ``id`` (``entry-<i>`` without one).
  Other resource types, other codings and ServiceRequests without our coding are
  ignored. The whole unsigned session is one order, so duplicates across it are caught;
  ``context.selections`` is not needed for that and not read;
* per line: ``category`` coding of system ``urn:cds:item-category`` (``LAB``, ``EXAM``,
  ``GENE_TEST``); ``extension`` ``urn:cds:price-item`` (valueString/valueCode) the price
  item; a ``performer`` whose ``identifier.system`` is ``urn:cds:sendout-lab`` the
  send-out lab; a ``supportingInfo`` reference to a ``Consent`` = consent signed;
* ``context.userId`` -> ``clinician_id`` (e.g. ``Practitioner/123``), ``hookInstance`` ->
  ``request_id``; the institution is the caller's JWT ``tenant``, else
  ``--hooks-institution`` (412 when neither names one);
* ``prefetch`` (the keys our discovery asks for, or any other): active ``Condition``
  resources, alone or in Bundles, give their ICD-10 codings as ``diagnosis_codes``; the
  ``Encounter`` (the one ``context.encounterId`` names, else the only one) gives the
  encounter type from its ``class`` (v3 ActCode ``EMER`` emergency, ``AMB`` outpatient,
  ``IMP``/``ACUTE``/``NONAC`` inpatient). A ``null`` prefetch value is "no data";
* the request's ``extension`` object: ``urn:cds:first-oncology-visit`` (boolean),
  ``urn:cds:mdt-record-id`` and ``urn:cds:department-id`` (strings).

``authoredOn`` is not the order time (a draft's date is whatever the client defaulted):
orders are checked at the server's clock, as a gRPC Check without ``order_time``.

The limits are the gRPC door's (:mod:`cds.orders.validation`); refusals name the JSON
path the caller sent (``context.patientId: longer than 128 characters``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple

from cds.domain import EncounterType, ItemCategory, Order, OrderItem
from cds.orders.validation import (
    DIAGNOSES,
    DIAGNOSIS,
    ITEMS,
    LINE,
    ORDER,
)

CATEGORY_SYSTEM = "urn:cds:item-category"
PRICE_ITEM_EXTENSION = "urn:cds:price-item"
SENDOUT_LAB_SYSTEM = "urn:cds:sendout-lab"
FIRST_ONCOLOGY_VISIT = "urn:cds:first-oncology-visit"
MDT_RECORD_ID = "urn:cds:mdt-record-id"
DEPARTMENT_ID = "urn:cds:department-id"
ACT_CODE_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-ActCode"

_ENCOUNTER_CLASS = {
    "EMER": EncounterType.EMERGENCY,
    "AMB": EncounterType.OUTPATIENT,
    "IMP": EncounterType.INPATIENT,
    "ACUTE": EncounterType.INPATIENT,
    "NONAC": EncounterType.INPATIENT,
}
_INACTIVE = frozenset({"inactive", "resolved", "remission"})
_NOT_TRUE = frozenset({"refuted", "entered-in-error"})

# The gRPC field names of cds.orders.validation -> where a CDS Hooks caller put them.
_ORDER_FIELDS = {
    "patient.patient_id": "context.patientId",
    "institution_id": "the institution (JWT tenant or --hooks-institution)",
    "request_id": "hookInstance",
    "department_id": f"extension.{DEPARTMENT_ID}",
    "clinician_id": "context.userId",
    "patient.mdt_record_id": f"extension.{MDT_RECORD_ID}",
}
_LINE_FIELDS = {
    "line_id": "resource.id",
    "item_code": "resource.code.coding.code",
    "price_item_code": f"resource.extension({PRICE_ITEM_EXTENSION})",
    "sendout_lab_id": f"resource.performer.identifier({SENDOUT_LAB_SYSTEM})",
}


class HookError(Exception):
    """Refuse the request: an HTTP status and ``"<JSON path>: <problem>"``."""

    def __init__(self, status: int, message: str, code: str = "invalid") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code  # the OperationOutcome issue code

    @property
    def expression(self) -> str:
        return self.message.partition(": ")[0]


def malformed(message: str) -> HookError:
    return HookError(400, message)


def translated(error: str, names: Mapping[str, str], prefix: str = "") -> str:
    """A limit's wording from cds.orders.validation, with the field named as sent."""
    field, sep, problem = error.partition(": ")
    head, _, tail = field.partition(".")
    if field in names:
        field = names[field]
    elif tail in names and head.startswith("items["):
        field = names[tail]
    return f"{prefix}{field}{sep}{problem}"


class Draft(NamedTuple):
    """The draft order behind one line: where it is and what a card may refer to it by."""

    entry_index: int
    resource_id: str  # "" when the ServiceRequest has no id (no delete suggestion then)


class HookCall(NamedTuple):
    order: Order | None  # None: no ServiceRequest names an item of ours
    drafts: tuple[Draft, ...]  # one per order line, in order


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise malformed(f"{where}: expected a JSON object")
    return value


def _list(value: Any, where: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise malformed(f"{where}: expected an array")
    return value


def _string(value: Any, where: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise malformed(f"{where}: expected a string")
    return value


def _codings(concept: Any) -> Iterator[tuple[str, str]]:
    """(system, code) of a CodeableConcept's codings (or a lone Coding, as R4
    Encounter.class is), skipping whatever is not shaped like one."""
    if not isinstance(concept, dict):
        return
    codings = concept.get("coding") if "coding" in concept else [concept]
    for c in codings if isinstance(codings, list) else ():
        if isinstance(c, dict) and isinstance(c.get("code"), str) and c["code"]:
            system = c.get("system")
            yield (system if isinstance(system, str) else ""), c["code"]


def _resources(value: Any) -> Iterator[dict[str, Any]]:
    """A prefetch value's resources: itself, or a Bundle's entries."""
    if not isinstance(value, dict):
        return
    if value.get("resourceType") == "Bundle":
        entries = value.get("entry")
        for entry in entries if isinstance(entries, list) else ():
            if isinstance(entry, dict) and isinstance(entry.get("resource"), dict):
                yield entry["resource"]
    else:
        yield value


def _status(value: Any) -> str:
    """A Condition status: a code (STU3) or a CodeableConcept (R4)."""
    if isinstance(value, str):
        return value
    return next((code for _, code in _codings(value)), "")


def _diagnoses(prefetch: dict[str, Any]) -> tuple[str, ...]:
    codes: dict[str, None] = {}
    for value in prefetch.values():
        for resource in _resources(value):
            if resource.get("resourceType") != "Condition":
                continue
            if _status(resource.get("clinicalStatus")) in _INACTIVE:
                continue
            if _status(resource.get("verificationStatus")) in _NOT_TRUE:
                continue
            for system, code in _codings(resource.get("code")):
                if "icd-10" in system.lower() or "icd10" in system.lower():
                    codes.setdefault(code, None)
    return tuple(codes)


def _encounter_type(prefetch: dict[str, Any], encounter_id: str) -> EncounterType:
    encounters = [
        r
        for value in prefetch.values()
        for r in _resources(value)
        if r.get("resourceType") == "Encounter"
    ]
    chosen = next((e for e in encounters if encounter_id and e.get("id") == encounter_id), None)
    if chosen is None and len(encounters) == 1:
        chosen = encounters[0]
    if chosen is None:
        return EncounterType.UNSPECIFIED
    classes = chosen.get("class")
    for concept in classes if isinstance(classes, list) else [classes]:  # R5: a list
        for system, code in _codings(concept):
            if system in ("", ACT_CODE_SYSTEM) and code in _ENCOUNTER_CLASS:
                return _ENCOUNTER_CLASS[code]
    return EncounterType.UNSPECIFIED


def _line(resource: dict[str, Any], code_system: str, where: str) -> tuple[str, ...] | None:
    """(item_code, category, price_item_code, sendout_lab_id, consent) or None."""
    item_code = next(
        (code for system, code in _codings(resource.get("code")) if system == code_system), None
    )
    if item_code is None:
        return None
    category = ""
    for concept in _list(resource.get("category"), f"{where}.category"):
        category = next(
            (code for system, code in _codings(concept) if system == CATEGORY_SYSTEM), category
        )
    price = ""
    for ext in _list(resource.get("extension"), f"{where}.extension"):
        if isinstance(ext, dict) and ext.get("url") == PRICE_ITEM_EXTENSION:
            value = ext.get("valueString", ext.get("valueCode"))
            price = _string(value, f"{where}.extension({PRICE_ITEM_EXTENSION}).valueString")
    lab = ""
    for performer in _list(resource.get("performer"), f"{where}.performer"):
        identifier = performer.get("identifier") if isinstance(performer, dict) else None
        if isinstance(identifier, dict) and identifier.get("system") == SENDOUT_LAB_SYSTEM:
            lab = _string(identifier.get("value"), f"{where}.performer.identifier.value")
    consent = any(
        isinstance(info, dict)
        and (
            info.get("type") == "Consent"
            or (isinstance(info.get("reference"), str) and info["reference"].startswith("Consent/"))
        )
        for info in _list(resource.get("supportingInfo"), f"{where}.supportingInfo")
    )
    return item_code, category, price, lab, "1" if consent else ""


def read_call(
    body: Any, hook: str, code_system: str, institution: str | None, now_us: int
) -> HookCall:
    """The order a CDS Hooks request describes, or HookError (400 malformed, 412 missing)."""
    request = _object(body, "$")
    if request.get("hook") != hook:
        raise malformed(f"hook: expected {hook!r} for this service")
    request_id = _string(request.get("hookInstance"), "hookInstance")
    context = _object(request.get("context"), "context")
    patient_id = _string(context.get("patientId"), "context.patientId")
    if not patient_id:
        raise HookError(412, "context.patientId: required", "required")
    if "draftOrders" not in context or context["draftOrders"] is None:
        raise HookError(412, "context.draftOrders: required", "required")
    bundle = _object(context["draftOrders"], "context.draftOrders")
    if bundle.get("resourceType") != "Bundle":
        raise malformed("context.draftOrders: expected a FHIR Bundle")
    clinician_id = _string(context.get("userId"), "context.userId")
    encounter_id = _string(context.get("encounterId"), "context.encounterId")
    prefetch = request.get("prefetch")
    prefetch = _object(prefetch, "prefetch") if prefetch is not None else {}
    extension = request.get("extension")
    extension = _object(extension, "extension") if extension is not None else {}
    first_visit = extension.get(FIRST_ONCOLOGY_VISIT, False)
    if not isinstance(first_visit, bool):
        raise malformed(f"extension.{FIRST_ONCOLOGY_VISIT}: expected true or false")
    mdt_record_id = _string(extension.get(MDT_RECORD_ID), f"extension.{MDT_RECORD_ID}")
    department_id = _string(extension.get(DEPARTMENT_ID), f"extension.{DEPARTMENT_ID}")

    items: list[OrderItem] = []
    drafts: list[Draft] = []
    first_line: dict[str, int] = {}
    entries = _list(bundle.get("entry"), "context.draftOrders.entry")
    for i, entry in enumerate(entries):
        where = f"context.draftOrders.entry[{i}]"
        resource = _object(entry, where).get("resource")
        if not isinstance(resource, dict) or resource.get("resourceType") != "ServiceRequest":
            continue
        line = _line(resource, code_system, f"{where}.resource")
        if line is None:
            continue
        resource_id = _string(resource.get("id"), f"{where}.resource.id")
        line_id = resource_id or f"entry-{i}"
        item_code, category, price, lab, consent = line
        error = LINE.error((line_id, item_code, price, lab))
        if error is not None:
            raise malformed(translated(error, _LINE_FIELDS, f"{where}."))
        if line_id in first_line:
            first = first_line[line_id]
            raise malformed(f"{where}.resource.id: repeats context.draftOrders.entry[{first}]")
        first_line[line_id] = i
        kind = ItemCategory.__members__.get(category, ItemCategory.UNSPECIFIED)
        items.append(OrderItem(line_id, item_code, kind, price, lab, bool(consent)))
        drafts.append(Draft(i, resource_id))
    if not items:
        return HookCall(None, ())
    if len(items) > ITEMS.most:
        raise malformed(
            f"context.draftOrders: at most {ITEMS.most} ServiceRequests with an item code "
            f"({code_system}), got {len(items)}"
        )
    if institution is None:
        raise HookError(
            412,
            "institution: the JWT has no tenant and the server no --hooks-institution",
            "required",
        )
    strings = (patient_id, institution, request_id, department_id, clinician_id, mdt_record_id)
    error = ORDER.error(strings)
    if error is not None:
        raise malformed(translated(error, _ORDER_FIELDS))
    diagnoses = _diagnoses(prefetch)
    if len(diagnoses) > DIAGNOSES.most:
        raise malformed(
            f"prefetch: at most {DIAGNOSES.most} ICD-10 codes of active Conditions, "
            f"got {len(diagnoses)}"
        )
    if any(len(code) > DIAGNOSIS.max_chars for code in diagnoses):
        raise malformed(f"prefetch: an ICD-10 code longer than {DIAGNOSIS.max_chars} characters")
    order = Order(
        request_id,
        institution,
        department_id,
        clinician_id,
        _encounter_type(prefetch, encounter_id),
        patient_id,
        diagnoses,
        first_visit,
        mdt_record_id,
        tuple(items),
        now_us,
    )
    return HookCall(order, tuple(drafts))
