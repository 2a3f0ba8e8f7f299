"""The benchmark's patients, their preloaded results, and the order mix (see README).

Everything is generated from a seed, so two runs send the same bytes. Results are
drawn so that every one is still inside its retention window when the benchmark runs
(the store keeps all of them: "RSS per cached result" divides by what is really
cached). A sample of patients is *tracked* — their items are remembered — so an order
can be built to hit a recognisable result on purpose, or to miss every one.

Order mix (per request):
- 60% lab orders of 1–5 LAB items; a third of them include one item the patient has a
  recognisable result for (reported at the ordering institution, inside its validity);
  the other items are ones the patient has no result for at all;
- 25% exam orders of 1–2 EXAM items, a third with a recognisable result likewise;
- 15% gene-test orders of one test, across variants: clean, consent missing, first
  oncology visit without MDT, send-out to an approved lab, to an unapproved lab, to a
  lab although the institution tests in-house, and a code off the recommended list.
Encounters: 80% outpatient, 15% inpatient, 5% emergency (recognition is then exempt).
``order_time`` is left unset (the server's clock), as an EMR would.

Apart from the mix, the all-WARN class (:func:`build_warn_orders`): every order a
WARN, so every call writes a decision-log record, the worst case of issue 12.
"""

from __future__ import annotations

import json
import random
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cds.v1 import order_check_pb2, result_feed_pb2, types_pb2

DAY_S = 86_400
LOCAL_CODES = [f"LOC-{i:04d}" for i in range(200)]  # hospital-local items off the list
GENE_VARIANTS = (
    ("clean", 0.30),
    ("consent_missing", 0.15),
    ("mdt_missing", 0.15),
    ("sendout_approved", 0.15),
    ("sendout_unapproved", 0.10),
    ("sendout_in_house", 0.10),
    ("not_in_catalogue", 0.05),
)
ENCOUNTERS = (
    (types_pb2.ENCOUNTER_TYPE_OUTPATIENT, 0.80),
    (types_pb2.ENCOUNTER_TYPE_INPATIENT, 0.15),
    (types_pb2.ENCOUNTER_TYPE_EMERGENCY, 0.05),
)


def load_catalog_json(path: str | Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text(encoding="utf-8"))


@dataclass
class CatalogView:
    """The parts of a catalogue JSON the workload draws codes from."""

    labs: list[tuple[str, int]]  # (code, validity_days)
    exams: list[tuple[str, int]]
    gene_tests: list[dict[str, Any]]
    institutions: list[str]
    sendout_labs: list[dict[str, Any]]
    max_window_days: int  # retention of codes without a window of their own

    @classmethod
    def of(cls, cat: dict[str, Any]) -> CatalogView:
        labs = [
            (r["code"], int(r["validity_days"]))
            for r in cat["recognition_items"]
            if r.get("category") == "LAB"
        ]
        exams = [
            (r["code"], int(r["validity_days"]))
            for r in cat["recognition_items"]
            if r.get("category") == "EXAM"
        ]
        # What the store keeps a code for (Snapshot.retention_us): a recognition item its
        # validity, a gene test its repeat interval, anything else the longest validity.
        windows = [d for _, d in labs + exams] or [
            int(g["repeat_interval_days"])
            for g in cat["gene_tests"]
            if g.get("repeat_interval_days")
        ]
        return cls(
            labs=labs,
            exams=exams,
            gene_tests=list(cat["gene_tests"]),
            institutions=[i["id"] for i in cat["institutions"]],
            sendout_labs=list(cat.get("sendout_labs", [])),
            max_window_days=max(windows, default=30),
        )


@dataclass
class Population:
    """Preload batches (serialized PutResultsRequest) and what the tracked patients hold."""

    n_results: int
    n_patients: int
    batches: list[bytes]
    # patient id -> [(item_code, institution_id, reported_at_s, mark)] for tracked patients
    tracked: dict[str, list[tuple[str, str, int, bool]]] = field(default_factory=dict)


def patient_id(i: int) -> str:
    return f"P{i:08d}"


def build_population(
    view: CatalogView,
    n_results: int,
    n_patients: int,
    *,
    batch_size: int = 5000,
    tracked_patients: int = 20_000,
    seed: int = 1,
    now_s: int | None = None,
) -> Population:
    """Every patient gets at least one result; the rest land uniformly at random.

    Item mix of the feed: 55% recognisable LAB items, 20% EXAM items, 5% gene tests
    and 20% hospital-local codes the catalogue does not list (a real LIS sends those
    too). 80% carry the recognition mark. Each is reported somewhere in the first 90%
    of its retention window before now, so it is still cached during the run.
    """
    now_s = int(time.time()) - 60 if now_s is None else now_s
    rng = np.random.default_rng(seed)
    n_patients = min(n_patients, n_results)
    pats = np.concatenate(
        [np.arange(n_patients), rng.integers(0, n_patients, n_results - n_patients)]
    )
    kind = rng.random(n_results)
    pick = rng.random(n_results)
    age = rng.random(n_results) * 0.9
    insts = rng.integers(0, len(view.institutions), n_results)
    marks = rng.random(n_results) < 0.8
    gene_codes = [(g["code"], int(g.get("repeat_interval_days") or 0)) for g in view.gene_tests]
    pools: list[tuple[float, list[tuple[str, int]]]] = [
        (0.55, view.labs),
        (0.75, view.exams),
        (0.80, gene_codes),
        (1.01, [(c, 0) for c in LOCAL_CODES]),
    ]
    track_every = max(1, n_patients // max(1, tracked_patients))
    tracked: dict[str, list[tuple[str, str, int, bool]]] = {}
    batches: list[bytes] = []
    inst_ids = view.institutions
    pats_l, kind_l, pick_l = pats.tolist(), kind.tolist(), pick.tolist()
    age_l, insts_l, marks_l = age.tolist(), insts.tolist(), marks.tolist()
    req = result_feed_pb2.PutResultsRequest()
    add = req.results.add
    for j in range(n_results):
        k = kind_l[j]
        for bound, pool in pools:
            if k < bound and pool:
                break
        code, window_days = pool[int(pick_l[j] * len(pool))]
        window_s = (window_days or view.max_window_days) * DAY_S
        reported = now_s - int(age_l[j] * window_s)
        p = pats_l[j]
        pid = patient_id(p)
        inst = inst_ids[insts_l[j]]
        mark = marks_l[j]
        r = add(
            result_id=f"R{j:09d}",
            patient_id=pid,
            item_code=code,
            institution_id=inst,
            recognition_mark=mark,
        )
        r.reported_at.seconds = reported
        if p % track_every == 0:
            tracked.setdefault(pid, []).append((code, inst, reported, mark))
        if len(req.results) >= batch_size:
            batches.append(req.SerializeToString())
            req = result_feed_pb2.PutResultsRequest()
            add = req.results.add
    if len(req.results):
        batches.append(req.SerializeToString())
    return Population(n_results, n_patients, batches, tracked)


def _weighted(rng: random.Random, table: tuple[tuple[Any, float], ...]) -> Any:
    x = rng.random() * sum(w for _, w in table)
    for value, w in table:
        x -= w
        if x < 0:
            return value
    return table[-1][0]


@dataclass
class Order:
    """One generated request with the class it was drawn as (for per-class figures)."""

    kind: str  # lab_hit | lab_miss | exam_hit | exam_miss | gene_<variant> | all_warn
    body: bytes
    n_items: int


def build_orders(view: CatalogView, pop: Population, n: int, *, seed: int = 2) -> list[Order]:
    rng = random.Random(seed)
    tracked = sorted(pop.tracked)
    lab_codes = {c for c, _ in view.labs}
    exam_codes = {c for c, _ in view.exams}
    hits: dict[str, list[tuple[str, str, str]]] = {"LAB": [], "EXAM": []}
    for pid in tracked:
        for code, inst, _reported, _mark in pop.tracked[pid]:
            if code in lab_codes:
                hits["LAB"].append((pid, code, inst))
            elif code in exam_codes:
                hits["EXAM"].append((pid, code, inst))
    orders = []
    for k in range(n):
        req = order_check_pb2.CheckRequest(
            request_id=f"bench-{seed}-{k:07d}",
            department_id=f"D{rng.randrange(40):03d}",
            clinician_id=f"C{rng.randrange(2000):05d}",
            encounter_type=_weighted(rng, ENCOUNTERS),
        )
        x = rng.random()
        if x < 0.60:
            kind = _recognition_order(req, rng, view, pop, tracked, hits, "LAB", rng.randint(1, 5))
        elif x < 0.85:
            kind = _recognition_order(req, rng, view, pop, tracked, hits, "EXAM", rng.randint(1, 2))
        else:
            kind = _gene_order(req, rng, view, tracked)
        orders.append(Order(kind, req.SerializeToString(), len(req.items)))
    return orders


def _recognition_order(
    req: order_check_pb2.CheckRequest,
    rng: random.Random,
    view: CatalogView,
    pop: Population,
    tracked: list[str],
    hits: dict[str, list[tuple[str, str, str]]],
    category: str,
    n_items: int,
) -> str:
    pool = [c for c, _ in (view.labs if category == "LAB" else view.exams)]
    cat_enum = types_pb2.ITEM_CATEGORY_LAB if category == "LAB" else types_pb2.ITEM_CATEGORY_EXAM
    hit = rng.random() < 1 / 3 and hits[category]
    codes: list[str] = []
    if hit:
        pid, code, inst = rng.choice(hits[category])
        codes.append(code)
        free = _free_codes(pool, pop, pid, codes)
    else:
        # A miss needs a patient holding none of the ordered codes; with a small
        # catalogue some patients hold them all, so look a few times.
        inst = rng.choice(view.institutions)
        for _ in range(50):
            pid = rng.choice(tracked) if tracked else patient_id(0)
            free = _free_codes(pool, pop, pid, codes)
            if free:
                break
    rng.shuffle(free)
    codes.extend(free[: max(0, n_items - len(codes))])
    rng.shuffle(codes)
    req.institution_id = inst
    req.patient.patient_id = pid
    req.patient.diagnosis_codes.append(rng.choice(("E11.9", "I10", "J18.9", "K29.7", "N18.3")))
    for n, code in enumerate(codes, start=1):
        req.items.add(line_id=str(n), item_code=code, category=cat_enum)
    return f"{category.lower()}_{'hit' if hit else 'miss'}"


def _free_codes(pool: list[str], pop: Population, pid: str, taken: list[str]) -> list[str]:
    held = {c for c, *_ in pop.tracked.get(pid, ())}
    return [c for c in pool if c not in held and c not in taken]


def _gene_order(
    req: order_check_pb2.CheckRequest,
    rng: random.Random,
    view: CatalogView,
    tracked: list[str],
) -> str:
    """One gene test; the variant decides institution, test and lab so that exactly the
    intended rule is at stake (priced tests only, the indication matched)."""
    variant = _weighted(rng, GENE_VARIANTS)
    test, inst, lab = _gene_setting(rng, view, variant)
    req.institution_id = inst
    req.patient.patient_id = rng.choice(tracked) if tracked else patient_id(0)
    indications = (test or {}).get("indications") or ["C80"]
    req.patient.diagnosis_codes.append(f"{rng.choice(indications)}.{rng.randrange(10)}")
    req.patient.first_oncology_visit = rng.random() < 0.4 or variant == "mdt_missing"
    if req.patient.first_oncology_visit and variant != "mdt_missing":
        req.patient.mdt_record_id = f"MDT-{rng.randrange(10**6):06d}"
    req.items.add(
        line_id="1",
        item_code=test["code"] if test and variant != "not_in_catalogue" else "GT-UNLISTED",
        category=types_pb2.ITEM_CATEGORY_GENE_TEST,
        consent_signed=variant != "consent_missing",
        sendout_lab_id=lab,
    )
    return f"gene_{variant}"


def _gene_setting(
    rng: random.Random, view: CatalogView, variant: str
) -> tuple[dict[str, Any] | None, str, str]:
    """(test, institution, send-out lab or "") for a variant, from the catalogue's own
    approvals and in-house lists; falls back to any test when the catalogue has no fit."""
    priced = [g for g in view.gene_tests if g.get("price_item_code")] or view.gene_tests
    by_code = {g["code"]: g for g in priced}
    today = time.strftime("%Y-%m-%d")
    if variant == "sendout_approved":
        triples = [
            (by_code[code], a["institution_id"], lab["id"])
            for lab in view.sendout_labs
            if lab.get("qualification_valid_until", "") >= today
            for a in lab.get("approved", ())
            for code in a.get("gene_tests", ())
            if code in by_code
            and a["institution_id"] not in by_code[code].get("in_house_institutions", ())
        ]
        if triples:
            return rng.choice(triples)
    if variant == "sendout_in_house":
        pairs = [(g, i) for g in priced for i in g.get("in_house_institutions", ())]
        if pairs:
            test, inst = rng.choice(pairs)
            return test, inst, _approved_lab(rng, view, inst, test["code"])
    test = rng.choice(priced) if priced else None
    in_house = set((test or {}).get("in_house_institutions", ()))
    insts = [i for i in view.institutions if i not in in_house] or view.institutions
    inst = rng.choice(insts)
    if variant == "sendout_unapproved":
        return test, inst, "LAB-NOT-APPROVED"
    if variant.startswith("sendout"):
        labs = [lab["id"] for lab in view.sendout_labs]
        return test, inst, rng.choice(labs) if labs else "LAB-NOT-APPROVED"
    return test, inst, ""


def _approved_lab(rng: random.Random, view: CatalogView, inst: str, code: str) -> str:
    approving = [
        lab["id"]
        for lab in view.sendout_labs
        if any(
            a["institution_id"] == inst and code in a.get("gene_tests", ())
            for a in lab.get("approved", ())
        )
    ]
    if approving:
        return rng.choice(approving)
    labs = [lab["id"] for lab in view.sendout_labs]
    return rng.choice(labs) if labs else "LAB-NOT-APPROVED"


WARN_CLASS = "all_warn"


def build_warn_orders(view: CatalogView, pop: Population, n: int, *, seed: int = 3) -> list[Order]:
    """The worst case of issue 12: 3-line outpatient orders that all answer WARN.

    Line 1 is a LAB item the patient has a recognisable result of (reported at the
    ordering institution, inside its validity): RECOGNIZABLE_RESULT_EXISTS, a WARN. Line 2
    is a gene test that passes every gene-test rule (priced, indication in the
    diagnoses, consent signed, no MDT due, no send-out, none held in its repeat window).
    Line 3 is a LAB item the patient has no result for. Overall WARN, so with the
    decision log on (the default) every call writes a record. The run checks this by
    sending the class through a real stub and finding each decision in the log."""
    rng = random.Random(seed)
    lab_codes = {c for c, _ in view.labs}
    pool = [c for c, _ in view.labs]
    hits = [
        (pid, code, inst)
        for pid in sorted(pop.tracked)
        for code, inst, _reported, _mark in pop.tracked[pid]
        if code in lab_codes
    ]
    genes = [g for g in view.gene_tests if g.get("price_item_code") and g.get("indications")]
    if not hits or not genes or len(pool) < 2:
        return []
    orders = []
    for k in range(n):
        pid, code, inst = rng.choice(hits)
        held = {c for c, *_ in pop.tracked.get(pid, ())}
        test = rng.choice([g for g in genes if g["code"] not in held] or genes)
        plain = rng.choice([c for c in pool if c not in held and c != code] or pool)
        req = order_check_pb2.CheckRequest(
            request_id=f"bench-warn-{seed}-{k:07d}",
            institution_id=inst,
            department_id=f"D{rng.randrange(40):03d}",
            clinician_id=f"C{rng.randrange(2000):05d}",
            encounter_type=types_pb2.ENCOUNTER_TYPE_OUTPATIENT,
        )
        req.patient.patient_id = pid
        req.patient.diagnosis_codes.append(f"{rng.choice(test['indications'])}.{rng.randrange(10)}")
        req.patient.diagnosis_codes.append("E11.9")
        req.items.add(line_id="1", item_code=code, category=types_pb2.ITEM_CATEGORY_LAB)
        req.items.add(
            line_id="2",
            item_code=test["code"],
            category=types_pb2.ITEM_CATEGORY_GENE_TEST,
            consent_signed=True,
        )
        req.items.add(line_id="3", item_code=plain, category=types_pb2.ITEM_CATEGORY_LAB)
        orders.append(Order(WARN_CLASS, req.SerializeToString(), 3))
    return orders


def representative_orders(orders: list[Order]) -> list[tuple[str, bytes, float]]:
    """One body per order family with its share of the mix, for a driver (h2load) that
    sends a single body per run: the mix's throughput is then the weighted harmonic mean."""
    shares = {"lab_hit": 0.20, "lab_miss": 0.40, "exam_hit": 0.25 / 3, "exam_miss": 0.5 / 3}
    shares["gene_clean"] = 0.15
    typical_items = {"lab_hit": 3, "lab_miss": 3, "exam_hit": 1, "exam_miss": 1, "gene_clean": 1}
    out = []
    for family, share in shares.items():
        for o in orders:
            if o.kind == family and o.n_items == typical_items[family]:
                out.append((family, o.body, share))
                break
    return out


def grpc_frame(body: bytes) -> bytes:
    """gRPC's length-prefixed message: flag byte 0 (uncompressed), 4-byte big-endian size."""
    return b"\x00" + struct.pack(">I", len(body)) + body
