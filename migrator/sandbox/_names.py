"""Word lists, fixed catalogues and fixed shapes for the synthetic clinics in ``data.py``.

Small, hand-written and multi-script on purpose: the generator must be fast and
deterministic (no Faker), and the data must exercise what real clinics hold:
accents, non-Latin scripts, emoji, apostrophes and hyphens. The shapes at the end
(``settings``, treatment-note content) follow CLINIKO_API.md §3.14 and §3.28.
"""

from __future__ import annotations

from typing import Any

Record = dict[str, Any]

FIRST_NAMES = (
    "Olivia", "Noah", "Charlotte", "Oliver", "Amelia", "Jack", "Isla", "William", "Mia", "Leo",
    "Ava", "Henry", "Grace", "Lucas", "Chloe", "Thomas", "Ella", "James", "Zoe", "Ethan",
    "Sophie", "Liam", "Ruby", "Harrison", "Matilda", "Samuel", "Evie", "Archie", "Lily", "Hudson",
    "Sienna", "Max", "Harper", "Finn", "Willow", "Cooper", "Aisha", "Mateo", "Priya", "Arjun",
    "Siobhán", "Seán", "Zoë", "José", "Renée", "Chloé", "François", "Björn", "Łukasz", "Anaïs",
    "Mary-Jane", "Jean-Luc", "Ngaio", "Tāne", "Aroha", "Kai", "Mei", "Hiroshi", "Fatima", "Omar",
)  # fmt: skip

LAST_NAMES = (
    "Smith", "Jones", "Williams", "Brown", "Wilson", "Taylor", "Johnson", "White", "Martin", "Anderson",
    "Thompson", "Nguyen", "Thomas", "Walker", "Harris", "Lee", "Ryan", "Robinson", "Kelly", "King",
    "Davis", "Wright", "Evans", "Roberts", "Green", "Hall", "Wood", "Jackson", "Clarke", "Patel",
    "O'Brien", "O'Connor", "McDonald", "MacKenzie", "Van der Berg", "de la Cruz", "Fitzgerald", "Chen",
    "Núñez", "Müller", "Søren", "García", "Kowalczyk", "Dubois", "Papadopoulos", "Ngata", "Te Rangi",
    "Singh", "Kim", "Tanaka", "Rossi", "Ahmed", "Smith-Jones", "Lê", "Trần", "Ó Súilleabháin",
)  # fmt: skip

#: Whole names in other scripts: (first, last). Mixed into the population at ~6%.
NON_LATIN_NAMES = (
    ("伟", "李"), ("芳", "王"), ("Ελένη", "Παπαδοπούλου"), ("Γιώργος", "Ωμέγα"), ("Дмитрий", "Иванов"),
    ("Анна", "Смирнова"), ("فاطمة", "العلي"), ("محمد", "حسن"), ("प्रिया", "शर्मा"), ("さくら", "佐藤"),
    ("민준", "김"), ("נועה", "כהן"), ("สมชาย", "ใจดี"), ("Արամ", "Պետրոսյան"),
)  # fmt: skip

#: The first patients of every clinic: each messy case the sandbox promises, present
#: even in the tiny clinic. Keys override what the generator would pick.
SCRIPTED_PATIENTS: tuple[dict[str, object], ...] = (
    {"first": "伟", "last": "李", "preferred": "Wei", "showcase": True},
    {"first": "Ελένη", "last": "Παπαδοπούλου", "dob": None},
    {"first": "Дмитрий", "last": "Иванов", "notes": "Здравствуйте! Prefers morning appointments ☀️"},
    {"first": "فاطمة", "last": "العلي", "notes": "العربية: interpreter booked 🗣️"},
    # two different people with the same name and different dates of birth
    {"first": "Sarah", "last": "Smith", "dob": "1985-03-12"},
    {"first": "Sarah", "last": "Smith", "dob": "1992-07-30"},
    # same name and same date of birth, different contact details
    {"first": "John", "last": "Brown", "dob": "1970-01-15"},
    {"first": "John", "last": "Brown", "dob": "1970-01-15"},
    # a family sharing one email address
    {"first": "Mai", "last": "Nguyen", "email": "nguyen.family@example.com"},
    {"first": "Tuan", "last": "Nguyen", "email": "nguyen.family@example.com", "dob": None},
    # an archived duplicate, merged into the first Sarah Smith, with an emoji nickname
    {"first": "Sarah", "last": "Smith", "preferred": "Sal 🌸", "kind": "archived", "merged_into": 4},
    # deleted: the API cannot delete patients, but /patients/deleted lists those deleted in Cliniko
    {"first": "Jack", "last": "Taylor", "kind": "deleted"},
)

STREETS = (
    "Swan St", "Church St", "Bridge Rd", "Sydney Rd", "Lygon St", "Smith St", "Chapel St", "High St",
    "Nicholson St", "Victoria Pde", "Punt Rd", "Barkers Rd", "Glenferrie Rd", "Burke Rd", "Gertrude St",
)  # fmt: skip

#: (city, state, post code)
PLACES = (
    ("Richmond", "VIC", "3121"), ("Brunswick", "VIC", "3056"), ("Footscray", "VIC", "3011"),
    ("Coburg", "VIC", "3058"), ("Fitzroy", "VIC", "3065"), ("Hawthorn", "VIC", "3122"),
    ("St Kilda", "VIC", "3182"), ("Carlton", "VIC", "3053"), ("Geelong", "VIC", "3220"),
    ("Newtown", "NSW", "2042"), ("Auckland", "", "1010"),
)  # fmt: skip

OCCUPATIONS = ("Teacher", "Nurse", "Electrician", "Student", "Retired", "Software developer", "Chef", "")

MEDICAL_ALERTS = (
    "Allergic to penicillin", "Latex allergy", "Pacemaker", "Type 2 diabetes", "On anticoagulants 🩸",
    "Pregnant", "Epilepsy", "Hypertension", "Osteoporosis", "Аллергия на орехи",
)  # fmt: skip

#: Appointment notes; None is the common case.
APPOINTMENT_NOTES = (
    None, None, None, None, None, None, None, None,
    "Running 10 min late", "Parking at rear 🚗", "Bring MRI report", "需要翻译",
    "Left knee 🦵 follow-up", "Καλή ανάρρωση", "Wheelchair access", "Paid by insurer",
)  # fmt: skip
EMOJI_NOTE = 9  # index of a note with an emoji, used by the showcase patient

NOTE_ANSWERS = (
    "Lower back pain after gardening.", "Right shoulder stiffness, improving 👍",
    "Neck pain, 3 days. Desk worker.", "Post-op ACL rehab week 6", "Головная боль напряжения",
    "膝关节疼痛", "Ankle sprain playing netball 🏐", "Hip pain on stairs",
)  # fmt: skip

BLOCK_NOTES = ("Lunch", "Admin time", "Annual leave 🏖️", "Conference", "Team meeting", None)

#: (filename, content type, description, size in bytes)
ATTACHMENTS = (
    ("referral.pdf", "application/pdf", "GP referral", 183_211),
    ("mri-lumbar.jpg", "image/jpeg", "MRI report", 1_204_332),
    ("x-ray 🦴.png", "image/png", "X-ray", 824_101),
    ("скан_полиса.pdf", "application/pdf", "Insurance card", 96_555),
    ("consent form.docx", "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
     "Signed consent", 45_876),
)  # fmt: skip

COMPANIES = ("Allianz Insurance", "WorkSafe Victoria", "TAC", "Bupa", "Medibank", "")

#: Practitioners: (title, first, last, designation, destination (first, last) or None if
#: missing there). Destination names differ in case, spacing or accents on purpose.
PRACTITIONERS = (
    ("Dr", "Zoë", "Adams", "Physiotherapist", ("Zoe", "Adams")),
    ("", "Mary-Jane", "O'Brien", "Osteopath", ("mary-jane", "o'brien")),
    ("", "Tom", "Van der Berg", "Myotherapist", ("Tom", "Van  der Berg ")),
    ("", "Anh", "Trần", "Physiotherapist", None),  # left before the move: not in the destination
    ("", "Liam", "Murphy", "Exercise Physiologist", ("Liam", "Murphy")),
    ("Dr", "Priya", "Patel", "Chiropractor", ("Priya", "PATEL")),
    ("", "José", "García", "Podiatrist", ("Jose", "Garcia")),
    ("", "Hana", "Kobayashi", "Physiotherapist", ("Hana", "Kobayashi")),
)  # fmt: skip
DESIGNATIONS = ("Physiotherapist", "Osteopath", "Myotherapist", "Massage Therapist", "Dietitian")

#: Businesses: (source name, destination name).
BUSINESSES = (
    ("Harbourside Physio Richmond", "Harbourside Physio  Richmond"),
    ("Harbourside Physio Brunswick", "HARBOURSIDE PHYSIO BRUNSWICK"),
    ("Harbourside Physio Footscray", "Harbourside Physio Footscray"),
    ("Harbourside Physio Coburg", "Harbourside Physio – Coburg"),
)

#: Taxes: (name, rate).
TAXES = (("GST", "10.0"), ("GST free", "0.0"))

#: Concession types: (name, discount percent on services).
CONCESSIONS = (("Pensioner", 20), ("Student", 10), ("Healthcare card", 15))

#: Billable items: (code, name, price in cents, tax index).
BILLABLE_ITEMS = (
    ("0001", "Initial Consultation", 11_000, 1), ("0002", "Standard Consultation", 8_500, 1),
    ("0003", "Extended Consultation", 12_000, 1), ("0004", "Telehealth Review", 8_000, 1),
    ("0005", "Remedial Massage 60 min", 9_500, 0), ("0006", "Pilates Class", 3_500, 1),
    ("0007", "Hydrotherapy Group", 3_000, 1), ("0008", "Missed appointment fee", 5_000, 0),
)  # fmt: skip
DNA_FEE = 7  # the billable item charged when a patient did not arrive

#: Products: (code, name, supplier, cost cents, price cents ex tax, stock).
PRODUCTS = (
    ("P001", "Theraband – medium", "Physio Supplies Co", 450, 1_200, 40),
    ("P002", "Heat pack", "Physio Supplies Co", 900, 2_500, 18),
    ("P003", "Foam roller", "Active Gear", 1_500, 3_900, 7),
    ("P004", "Magnesium cream 100 g", "Natural Remedies", 800, 2_200, 25),
    ("P005", "Kinesiology tape 5 cm", "Active Gear", 600, 1_650, 60),
)

#: Treatment note templates: (name, deleted). Content is built by the generator.
TEMPLATES = (
    ("Initial Assessment", False),
    ("Standard Treatment Note", False),
    ("Group Session Note", False),
    ("Old SOAP Note", True),
)

#: Appointment types: (name, category, color, minutes, max attendees, billable item,
#: product or None, template, archived).
APPOINTMENT_TYPES = (
    ("Initial Consultation", "Physiotherapy", "#1F77B4", 60, 1, 0, None, 0, False),
    ("Standard Consultation", "Physiotherapy", "#2CA02C", 30, 1, 1, None, 1, False),
    ("Extended Consultation", "Physiotherapy", "#FF7F0E", 45, 1, 2, 0, 1, False),
    ("Telehealth Review", "Telehealth", "#9467BD", 30, 1, 3, None, 1, False),
    ("Remedial Massage (old)", "Massage", "#8C564B", 60, 1, 4, None, 1, True),
    ("Pilates Class", "Classes", "#E377C2", 60, 8, 5, None, 2, False),
    ("Hydrotherapy Group", "Classes", "#17BECF", 45, 6, 6, None, 2, False),
)

#: The destination's few appointment types: names close to, not equal to, the source's.
DESTINATION_APPOINTMENT_TYPES = (
    ("initial consultation", 60, 1),
    ("Standard  Consultation", 30, 1),
    ("Telehealth review", 30, 1),
    ("Pilates Class", 60, 8),
)

CANCELLATION_NOTES = (None, "Called to cancel", "SMS reply: can't make it 😔", "Rebooked next week")

INVOICE_STATUS = {10: "Open", 20: "Paid", 30: "Closed", 40: "Open (credit)"}


# -- fixed shapes: settings and treatment-note content ---------------------------------

PRINT_SETTINGS = {
    "include_patient_address": True,
    "include_patient_dob": True,
    "include_patient_medicare": False,
    "include_patient_occupation": False,
    "include_patient_reference_number": None,
    "title": None,
}


def settings(account_id: int, name: str, subdomain: str, admin: tuple[str, str, str],
             tokens: list[str], field_names: tuple[str, str, str]) -> Record:  # fmt: skip
    """The ``/settings`` object (CLINIKO_API.md §3.28)."""
    section, text_field, radio_field, opt_google, opt_friend = tokens
    return {
        "terminology": {"patient": "patient"},
        "account": {
            "id": account_id,
            "name": name,
            "country": "Australia",
            "time_zone": "Melbourne",
            "currency_symbol": "$",
            "subdomain": subdomain,
            "email_from": f"reception@{subdomain}.example.com",
            "admin": {"email": admin[0], "first_name": admin[1], "last_name": admin[2]},
        },
        "calendar": {
            "start_hour": 7,
            "end_hour": 19,
            "timeslot_height_in_pixels": 20,
            "timeslot_size_in_minutes": 15,
            "show_current_time_indicator": True,
            "multiple_appointments_gap": False,
        },
        "online_bookings": {
            "enabled": True,
            "calendar_info": None,
            "policy": "Please give 24 hours' notice of cancellation.",
            "logo_url": None,
            "max_appointments_per_day_segment": 3,
            "min_hours_advance_required_to_book": 2,
            "min_hours_notice_for_patient_cancellation": 24,
            "notify_practitioner_by_email": True,
            "notify_practitioner_by_sms": False,
            "require_patient_address": False,
            "show_appointment_duration": True,
            "show_prices": True,
            "practitioner_order": [],
            "adroll": {"advertiser_id": None, "pixel_id": None},
            "google_analytics": {"tracking_id": None},
        },
        "patient_custom_fields_definition": {
            "sections": [
                {
                    "name": field_names[0],
                    "token": section,
                    "fields": [
                        {"name": field_names[1], "type": "text", "token": text_field},
                        {
                            "name": field_names[2],
                            "type": "radiobuttons",
                            "token": radio_field,
                            "options": [
                                {"name": "Google", "token": opt_google},
                                {"name": "A friend", "token": opt_friend},
                            ],
                            "other": {"enabled": True},
                        },
                    ],
                }
            ]
        },
        "reminders": {"default_reminder_type": "SMS & Email"},
    }


def template_content(name: str) -> Record:
    """Every template's questions (a fresh object: consumers may mutate records)."""
    return {"sections": [
        {"name": "Subjective", "description": f"{name}: history and symptoms", "questions": [
            {"name": "Presenting complaint", "type": "paragraph"},
            {"name": "Pain (0-10)", "type": "radiobuttons",
             "answers": [{"value": "0-3"}, {"value": "4-6"}, {"value": "7-10"}]},
        ]},
        {"name": "Plan", "questions": [{"name": "Treatment plan", "type": "text"}]},
    ]}  # fmt: skip


def note_content(n: int) -> Record:
    """A filled-in note for the template shape above; n picks the answers."""
    pain = n % 3
    answers: list[dict[str, object]] = [{"value": v} for v in ("0-3", "4-6", "7-10")]
    answers[pain]["selected"] = True
    return {"sections": [
        {"name": "Subjective", "questions": [
            {"name": "Presenting complaint", "type": "paragraph", "answer": NOTE_ANSWERS[n % len(NOTE_ANSWERS)]},
            {"name": "Pain (0-10)", "type": "radiobuttons", "answers": answers},
        ]},
        {"name": "Plan", "questions": [{"name": "Treatment plan", "type": "text", "answer": "Review in 2 weeks"}]},
    ]}  # fmt: skip
