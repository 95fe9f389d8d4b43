"""What happens in the synthetic source clinic, decided before anything is rendered.

``data.py`` turns these decisions into Cliniko records; this module only decides.
Everything is a pure function of (seed, purpose, index): a patient's history is the
same whichever pass asks for it, so passes regenerate it instead of storing it, and
counting what each list serves (``Plan.count_activity``) needs no records at all.

- The *roster* (one small tuple per patient: name, lifecycle, first day, email) is the
  only per-patient state kept in memory: ~20,000 entries for the large clinic.
- A patient's *history* is their individual appointments (with whether each has a
  treatment note and an invoice), notes with no booking and over-the-counter invoices.
- Group classes, unavailable blocks, medical alerts and attachments are decided the
  same way, by index.
- Patient 0 and group classes 0-2 are hand-built *showcases*, so every state, invoice
  status and deletion exists in even the tiny clinic.
"""

from __future__ import annotations

import calendar
import unicodedata
from bisect import bisect_right
from random import Random
from typing import Any, NamedTuple

from migrator.cliniko.resources import RESOURCES
from migrator.sandbox import _names as N

Record = dict[str, Any]

DAY = 86_400
#: The sandbox's "now": fixed so that every build of a seed is identical.
NOW = calendar.timegm((2026, 11, 1, 0, 0, 0))
NOW_DAY = NOW // DAY
START_DAY = NOW_DAY - 3 * 365  # appointments go back three years ...
END_DAY = NOW_DAY + 61  # ... and are booked two months ahead
# The clinic opens at 08:00 Melbourne time, UTC+10 (daylight saving ignored).
OPEN = (8 - 10) * 3600

# Appointment and attendee states.
ARRIVED, BOOKED, DNA, CANCELLED, DELETED = range(5)
# Patient lifecycles.
LIVE, ARCHIVED, GONE = range(3)
# RNG purposes: each (purpose, index) gets its own stream, so passes are independent.
RNG_ROSTER, RNG_PATIENT, RNG_HISTORY, RNG_ALERTS, RNG_FILES, RNG_GROUP, RNG_BLOCK, RNG_CONTACT, RNG_PRAC = (
    range(9)
)

# Visits per patient over a full year or more of history (mean ~16).
_VISIT_COUNTS = (0, 1, 2, 3, 5, 6, 8, 10, 12, 15, 18, 22, 27, 33, 42, 56)
_INDIVIDUAL_TYPES = (1, 1, 1, 1, 1, 2, 2, 3, 3, 4)  # weights for repeat visits
_ARCHIVED_TYPE = next(k for k, t in enumerate(N.APPOINTMENT_TYPES) if t[8])
ARCHIVED_TYPE_DAY = NOW_DAY - 500  # the archived type is used before this day only
_GROUP_TYPES = tuple(k for k, t in enumerate(N.APPOINTMENT_TYPES) if t[4] > 1)

# Outcome tables: (cumulative probabilities, outcomes).
_PAST_STATES = ((0.83, 0.88, 0.96, 0.99), (ARRIVED, DNA, CANCELLED, DELETED, BOOKED))
_FUTURE_STATES = ((0.9, 0.97), (BOOKED, CANCELLED, DELETED))
_PAST_ATTENDANCE = ((0.8, 0.9, 0.97), (ARRIVED, DNA, CANCELLED, DELETED))
_FUTURE_ATTENDANCE = ((0.93, 0.98), (BOOKED, CANCELLED, DELETED))
_INVOICE_STATUSES = ((0.88, 0.92, 0.97), (20, 10, 30, 40))  # Paid, Open, Closed, Open (credit)


class Person(NamedTuple):
    """A patient's roster entry: what other passes need without regenerating the patient."""

    first: str
    last: str
    kind: int  # LIVE, ARCHIVED or GONE (deleted)
    since: int  # day they became a patient
    end: int  # last day they can have a visit booked
    email: str
    concession: int  # index into N.CONCESSIONS or -1
    merged_into: int  # patient index or -1
    spec: dict[str, object]


class Prac(NamedTuple):
    title: str
    first: str
    last: str
    designation: str
    dest_name: tuple[str, str] | None  # None: not set up in the destination
    active: bool
    leave_day: int  # works before this day
    businesses: tuple[int, ...]
    user: int  # user ordinal


class Invoice(NamedTuple):
    t: int  # issued at
    status: int
    deleted: bool
    lines: tuple[tuple[bool, int, int], ...]  # (is product, item index, quantity)
    prac: int  # practitioner index or -1
    biz: int


class Visit(NamedTuple):
    start: int
    minutes: int
    prac: int
    biz: int
    atype: int
    state: int
    note: int  # 0 none, 1 a note, 2 a deleted note
    invoice: Invoice | None
    detail: int  # random bits for cosmetic choices (notes, reasons, reminders)


class History(NamedTuple):
    visits: list[Visit]
    invoices: list[Invoice]  # not tied to an appointment (product sales)
    notes: list[tuple[int, int]]  # (time, practitioner) of notes with no booking


class Attendee(NamedTuple):
    patient: int
    state: int
    note: int
    detail: int


class Group(NamedTuple):
    start: int
    minutes: int
    prac: int
    biz: int
    atype: int
    deleted: bool
    attendees: list[Attendee]


def _choose(x: float, table: tuple[tuple[float, ...], tuple[int, ...]]) -> int:
    """The outcome whose cumulative probability first exceeds x."""
    return table[1][bisect_right(table[0], x)]


def slug(text: str) -> str:
    """Lower-case ASCII letters and digits only: for email addresses made from names."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return "".join(c for c in ascii_text.lower() if c.isalnum())


def between(a: int, b: int, bits: int) -> int:
    """A point between a and b chosen by 8 random bits (no RNG needed at render time)."""
    return a + max(0, b - a) * (bits & 255) // 256


class Totals(dict[str, int]):
    """Counts per list route, by the rules the server serves lists with."""

    def add(self, res: str, *, deleted: bool = False, archived: bool = False, inactive: bool = False,
            cancelled: bool = False) -> None:  # fmt: skip
        if deleted:
            key = f"{res}/deleted"
        elif archived:
            key = f"{res}/archived"
        elif inactive:
            key = f"{res}/inactive"
        else:
            key = res
            if cancelled:
                self[f"{res}/cancelled"] = self.get(f"{res}/cancelled", 0) + 1
        self[key] = self.get(key, 0) + 1

    def tally(self, res: str, rec: Record) -> None:
        self.add(
            res,
            deleted=bool(rec.get("deleted_at")),
            archived=bool(rec.get("archived_at")),
            inactive=res == "practitioners" and not rec["active"],
            cancelled=bool(rec.get("cancelled_at")),
        )

    @classmethod
    def empty(cls, resources: list[str]) -> Totals:
        out = cls()
        for res in resources:
            out[res] = 0
            for route in RESOURCES[res].list_routes:
                out[f"{res}/{route}"] = 0
        return out


class Plan:
    """The decisions of one populated clinic, by (seed, purpose, index)."""

    def __init__(self, seed: int, n_patients: int) -> None:
        self.seed = seed
        self.n = n_patients
        self.n_businesses = 2 + (n_patients >= 100) + (n_patients >= 5_000)
        self.pracs = self._practitioners()
        self.active = [k for k, p in enumerate(self.pracs) if p.active]
        self.n_contacts = max(3, n_patients // 25)
        self.doctors = [j for j in range(self.n_contacts) if j % 3 != 1]  # contact 1 is Standard
        self.roster = self._roster()
        self.live = [i for i, p in enumerate(self.roster) if p.kind == LIVE]
        self.n_groups = max(3, n_patients // 8)
        self.n_blocks = max(4, n_patients // 10)
        self.showcase = self._showcase_history()

    def rng(self, purpose: int, index: int) -> Random:
        return Random((self.seed * 16 + purpose) * 2**32 + index)

    def _practitioners(self) -> list[Prac]:
        count = min(30, 5 + self.n // 100)
        inactive = 1 + count // 8  # the last ones are former practitioners
        out = []
        for k in range(count):
            if k < len(N.PRACTITIONERS):
                title, first, last, designation, dest = N.PRACTITIONERS[k]
            else:
                r = self.rng(RNG_PRAC, k)
                title, first, last = "", r.choice(N.FIRST_NAMES), r.choice(N.LAST_NAMES)
                designation, dest = r.choice(N.DESIGNATIONS), (first, last)
            active = k < count - inactive
            leave = END_DAY + 1 if active else START_DAY + 200 + 150 * (count - k)
            nb = self.n_businesses
            businesses = tuple(range(nb)) if k == 0 else tuple(sorted({k % nb, (k * 7 + 1) % nb}))
            out.append(Prac(title, first, last, designation, dest if active else None, active, leave,
                             businesses, 0 if k == 0 else k + 1))  # fmt: skip
        return out

    def _roster(self) -> list[Person]:
        r = self.rng(RNG_ROSTER, 0)
        out: list[Person] = []
        for i in range(self.n):
            spec = N.SCRIPTED_PATIENTS[i] if i < len(N.SCRIPTED_PATIENTS) else {}
            if "first" in spec:
                first, last = str(spec["first"]), str(spec["last"])
            elif r.random() < 0.06:
                first, last = r.choice(N.NON_LATIN_NAMES)
            else:
                first, last = r.choice(N.FIRST_NAMES), r.choice(N.LAST_NAMES)
            local = f"{slug(first)}.{slug(last)}" if slug(first) and slug(last) else "patient"
            email = str(spec.get("email", f"{local}{i}@example.com"))
            if not spec and out and r.random() < 0.03:  # a family member: same surname and email
                last, email = out[-1].last, out[-1].email or email
            elif not spec and r.random() < 0.05:
                email = ""
            x = r.random()
            kind = {"archived": ARCHIVED, "deleted": GONE}.get(str(spec.get("kind")), LIVE)
            if not spec:
                kind = GONE if x < 0.01 else ARCHIVED if x < 0.03 else LIVE
            since = START_DAY - 30 if spec.get("showcase") else r.randrange(START_DAY - 400, NOW_DAY - 3)
            end = {LIVE: END_DAY, ARCHIVED: r.randrange(since + 1, NOW_DAY), GONE: since}[kind]
            concession = r.randrange(len(N.CONCESSIONS)) if r.random() < 0.12 else -1
            merged = int(spec.get("merged_into", -1))  # type: ignore[call-overload]
            if kind == ARCHIVED and merged < 0 and i and r.random() < 0.3:
                j = r.randrange(i)  # merged into an earlier patient, if that one is still live
                merged = j if out[j].kind == LIVE else -1
            out.append(Person(first, last, kind, since, end, email, concession, merged, spec))
        return out

    def _works(self, k: int, day: int, fallback: int) -> int:
        """Practitioner k if they still worked there on day, else the fallback (active)."""
        return k if day < self.pracs[k].leave_day else fallback

    @staticmethod
    def created(p: Person) -> int:
        """When the patient record was created: the morning before their first day."""
        return p.since * DAY - DAY + 9 * 3600

    # -- skeletons: the decisions that change counts --------------------------------
    # History is regenerated by four passes of the large stream, so its hot path draws
    # cheap random bits (getrandbits, random) rather than randrange/choice.

    def _invoice_plan(self, r: Random, t: int, prac: int, biz: int, first: tuple[bool, int, int]) -> Invoice:
        still_open = t >= NOW - 30 * DAY and r.random() < 0.4  # recent invoices are often unpaid
        status = 10 if still_open else _choose(r.random(), _INVOICE_STATUSES)
        lines = [first]
        y = r.random()
        if y < 0.3:  # a product bought at the same time, one or two of it
            lines.append((True, int(y * 100) % len(N.PRODUCTS), 1 + (y < 0.1)))
        if y < 0.07:
            lines.append((False, 4, 1))  # a massage add-on, which carries GST
        return Invoice(t, status, r.random() < 0.02, tuple(lines), prac, biz)

    def _visit(self, r: Random, start: int, k: int, biz: int, atype: int, detail: int) -> Visit:
        rand = r.random
        # A few past appointments were never marked either way: they stay BOOKED.
        state = _choose(rand(), _FUTURE_STATES if start >= NOW else _PAST_STATES)
        minutes = N.APPOINTMENT_TYPES[atype][3]
        note, invoice = 0, None
        if state == ARRIVED and rand() < 0.7:
            note = 2 if rand() < 0.03 else 1
        if (state == ARRIVED and rand() < 0.85) or (state == DNA and rand() < 0.4):
            item = N.APPOINTMENT_TYPES[atype][5] if state == ARRIVED else N.DNA_FEE
            t = min(start + minutes * 60 + 300, NOW - 60)
            invoice = self._invoice_plan(r, t, k, biz, (False, item, 1))
        return Visit(start, minutes, k, biz, atype, state, note, invoice, detail)

    def history(self, i: int) -> History:
        """Patient i's appointments, notes without a booking and invoices, as skeletons."""
        p = self.roster[i]
        if p.spec.get("showcase"):
            return self.showcase
        if p.kind == GONE:
            return History([], [], [])
        r = self.rng(RNG_HISTORY, i)
        first = max(p.since, START_DAY)
        span = max(0, p.end - first)
        n = r.choice(_VISIT_COUNTS)
        if span < 365:  # newer patients have had less time to come
            n = round(n * span / 365)
        main, alt = r.randrange(len(self.pracs)), r.choice(self.active)
        visits = []
        rand = r.random
        for j, day in enumerate(sorted([first + int(rand() * span) for _ in range(n)])):
            bits = r.getrandbits(64)  # type, time, business; the top half for cosmetics
            k = main if day < self.pracs[main].leave_day else alt
            atype = 0 if j == 0 else _INDIVIDUAL_TYPES[bits % 10]
            if atype == _ARCHIVED_TYPE and day >= ARCHIVED_TYPE_DAY:
                atype = 1
            start = day * DAY + OPEN + (bits >> 4) % 36 * 900  # 15-minute slots, 08:00 to 17:00
            businesses = self.pracs[k].businesses
            visits.append(
                self._visit(r, start, k, businesses[(bits >> 10) % len(businesses)], atype, bits >> 32)
            )
        invoices, notes = [], []
        last = min(p.end, NOW_DAY)
        if first < last and r.random() < 0.08:  # a product bought over the counter
            t = r.randrange(first, last) * DAY + OPEN + 5 * 3600
            prac = alt if r.random() < 0.5 else -1
            line = (True, r.randrange(len(N.PRODUCTS)), 1)
            invoices.append(self._invoice_plan(r, t, prac, self.pracs[alt].businesses[0], line))
        if first < last and r.random() < 0.08:  # a note written outside any appointment
            notes.append((r.randrange(first, last) * DAY + OPEN + 6 * 3600, alt))
        return History(visits, invoices, notes)

    def _showcase_history(self) -> History:
        """Patient 0's hand-built history: one of every state, invoice status and deletion."""
        r = self.rng(RNG_HISTORY, 0)
        former = next(k for k, p in enumerate(self.pracs) if not p.active)
        alt = self.active[0]
        plan = (  # (day, practitioner, type, state, note, invoice status, invoice deleted)
            (START_DAY + 10, former, 0, ARRIVED, 1, 20, False),
            (START_DAY + 17, former, 1, DNA, 0, 10, False),
            (START_DAY + 24, former, 1, CANCELLED, 0, 0, False),
            (START_DAY + 31, former, 1, DELETED, 0, 0, False),
            (START_DAY + 38, former, _ARCHIVED_TYPE, ARRIVED, 2, 30, False),
            (START_DAY + 45, former, 2, ARRIVED, 1, 40, False),
            (START_DAY + 52, former, 1, ARRIVED, 1, 20, True),
            (NOW_DAY - 5, alt, 3, ARRIVED, 1, 10, False),
            (NOW_DAY + 10, alt, 1, BOOKED, 0, 0, False),
            (NOW_DAY + 20, alt, 1, CANCELLED, 0, 0, False),
        )
        visits = []
        for j, (day, k, atype, state, note, status, deleted) in enumerate(plan):
            start = day * DAY + OPEN + 4 * 900
            minutes, biz = N.APPOINTMENT_TYPES[atype][3], self.pracs[k].businesses[0]
            invoice = None
            if status:
                item = N.DNA_FEE if state == DNA else N.APPOINTMENT_TYPES[atype][5]
                lines = ((False, item, 1), (True, 0, 2)) if j == 4 else ((False, item, 1),)
                invoice = Invoice(min(start + minutes * 60 + 300, NOW - 60), status, deleted, lines, k, biz)
            detail = N.EMOJI_NOTE << 5 if j == 0 else r.getrandbits(32)
            visits.append(Visit(start, minutes, k, biz, atype, state, note, invoice, detail))
        product_sale = Invoice((NOW_DAY - 60) * DAY + OPEN + 5 * 3600, 20, False, ((True, 1, 1),), -1, 0)
        return History(visits, [product_sale], [((NOW_DAY - 90) * DAY + OPEN + 6 * 3600, alt)])

    def group(self, g: int) -> Group:
        """Group class g; the first three are a showcase (past, future, deleted)."""
        r = self.rng(RNG_GROUP, g)
        showcase = g < 3
        day = (NOW_DAY - 2, NOW_DAY + 14, NOW_DAY - 40)[g] if showcase else r.randrange(START_DAY, END_DAY)
        atype = r.choice(_GROUP_TYPES)
        spec = N.APPOINTMENT_TYPES[atype]
        k = self._works(r.randrange(len(self.pracs)), day, r.choice(self.active))
        start = day * DAY + OPEN + r.choice((0, 4, 36, 40)) * 900
        deleted = g == 2 or (not showcase and r.random() < 0.03)
        size = 4 if showcase else r.randint(1, spec[4])
        pool = r.sample(self.live, min(len(self.live), 2 * size))
        attendees = []
        for a, i in enumerate([i for i in pool if self.roster[i].since < day][:size]):
            if deleted:
                state = DELETED  # deleting a class deletes its attendees
            elif g == 0:
                state = (ARRIVED, CANCELLED, DELETED, DNA)[a]
            else:
                state = _choose(r.random(), _PAST_ATTENDANCE if start < NOW else _FUTURE_ATTENDANCE)
            note = 0
            if state == ARRIVED and (r.random() < 0.5 or (g == 0 and a == 0)):
                note = 2 if r.random() < 0.03 else 1
            attendees.append(Attendee(i, state, note, r.getrandbits(32)))
        return Group(start, spec[3], k, r.choice(self.pracs[k].businesses), atype, deleted, attendees)

    def block(self, j: int) -> tuple[int, int, int, int, int, bool]:
        """Unavailable block j: (start, minutes, practitioner, business, note, deleted)."""
        r = self.rng(RNG_BLOCK, j)
        day = r.randrange(START_DAY, END_DAY)
        k = self._works(r.randrange(len(self.pracs)), day, r.choice(self.active))
        note = r.randrange(len(N.BLOCK_NOTES))
        full_day = note in (2, 3)  # leave and conferences take the whole day
        start = day * DAY + OPEN + (0 if full_day else 16 * 900)
        biz = r.choice(self.pracs[k].businesses)
        return start, 600 if full_day else 60, k, biz, note, j == 1 or r.random() < 0.05

    def alerts(self, i: int) -> list[tuple[int, bool, int]]:
        """Patient i's medical alerts: (name, deleted, created)."""
        p = self.roster[i]
        if p.kind == GONE:
            return []
        r = self.rng(RNG_ALERTS, i)
        x = r.random()
        n = 2 if i == 0 else 0 if x < 0.65 else 1 if x < 0.9 else 2
        created = self.created(p)
        return [
            (r.randrange(len(N.MEDICAL_ALERTS)), (i == 0 and a == 1) or r.random() < 0.08,
             min(created + r.randrange(1, 400) * 3600, NOW - 60))
            for a in range(n)
        ]  # fmt: skip

    def files(self, i: int) -> list[tuple[int, int, int, bool]]:
        """Patient i's attachments: (catalogue entry, uploader user, created, still processing)."""
        p = self.roster[i]
        if p.kind == GONE:
            return []
        r = self.rng(RNG_FILES, i)
        x = r.random()
        n = 1 if i == 0 else 0 if x < 0.5 else 1 if x < 0.85 else 2
        created = self.created(p)
        return [
            (r.randrange(len(N.ATTACHMENTS)), r.choice((0, 1)),
             min(created + r.randrange(1, 2000) * 3600, NOW - 60), r.random() < 0.02)
            for _ in range(n)
        ]  # fmt: skip

    def count_activity(self, tot: Totals) -> None:
        """Add what patients, their histories, classes and blocks put in each list route."""
        for i, p in enumerate(self.roster):
            tot.add("patients", deleted=p.kind == GONE, archived=p.kind == ARCHIVED)
            for _, deleted, _ in self.alerts(i):
                tot.add("medical_alerts", deleted=deleted)
            for _ in self.files(i):
                tot.add("patient_attachments")
            history = self.history(i)
            for v in history.visits:
                tot.add("individual_appointments", deleted=v.state == DELETED, cancelled=v.state == CANCELLED)
                if v.note:
                    tot.add("treatment_notes", deleted=v.note == 2)
            for _ in history.notes:
                tot.add("treatment_notes")
            for plan in [v.invoice for v in history.visits if v.invoice] + history.invoices:
                tot.add("invoices", deleted=plan.deleted)
                for _ in plan.lines:
                    tot.add("invoice_items", deleted=plan.deleted)
        for g in range(self.n_groups):
            group = self.group(g)
            tot.add("group_appointments", deleted=group.deleted)
            for a in group.attendees:
                tot.add("attendees", deleted=a.state == DELETED, cancelled=a.state == CANCELLED)
                if a.note:
                    tot.add("treatment_notes", deleted=a.note == 2)
        for j in range(self.n_blocks):
            tot.add("unavailable_blocks", deleted=self.block(j)[5])
