"""The Cliniko API proper: routing and handlers, driven by the resource registry.

:class:`Api` turns one authenticated :class:`ApiRequest` into an :class:`ApiResponse`;
authentication, rate limiting, faults and the wire live in ``server.py``. Every
resource in ``migrator.cliniko.resources`` gets the same routes (list, list routes,
single, nested lists, and its writes); only a few resources are special (users'
``/user``, settings, attachments, bookings, conflicts).

Choices where the docs are silent (besides those in ``query``, ``render``, ``writes``):

- ``GET /<resource>/<id>`` of a deleted record is 404 (deleted records are listed
  by ``/deleted``); archived patients and inactive practitioners are served.
- ``/bookings/:id`` and ``/appointments/:id`` find individual or group appointments
  (and unavailable blocks for bookings); ``/{patients,practitioners,businesses}/:id/
  appointments`` list individual appointments under the envelope key ``appointments``.
- Nested many-to-many routes (``/businesses/:id/practitioners``,
  ``/practitioners/:id/appointment_types``...) use ``<x>_ids`` arrays the generator
  put on either side; if it put none, every record qualifies (a one-site clinic).
- Malformed JSON bodies are 400; wrong methods 405; unknown routes 404.
- Attachments: the create response shows ``processing_completed: false`` with null
  ``filename``/``content_type``/``size``; processing is instant, so the next GET
  shows the finished record. ``/content`` returns the bytes (uploaded ones, or
  deterministic filler of the record's ``size`` for generated attachments).
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlencode

from migrator.cliniko.resources import RESOURCES, Resource
from migrator.sandbox.accounts import AccountSeed, KeySeed
from migrator.sandbox.faults import fingerprint
from migrator.sandbox.query import QueryError, list_condition, parse_filters, parse_paging, parse_sort
from migrator.sandbox.render import IdMode, render, render_deleted_patient
from migrator.sandbox.store import AccountStore, Table
from migrator.sandbox.writes import BOOKING_TABLES, WriteContext, WriteError, Writer, utc_now

__all__ = ["Account", "Api", "ApiRequest", "ApiResponse", "Upload"]

_JSON = b"application/json; charset=utf-8"
_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
_MAX_FILLER = 5 * 1024 * 1024
_PUBLIC_ACCOUNT = ("id", "name", "country", "time_zone", "currency_symbol", "subdomain")
_PRIVATE_BOOKINGS = ("adroll", "google_analytics")
#: (parent segment, "appointments") -> the individual-appointment column to match.
_APPOINTMENT_PARENTS = {
    "patients": "patient_id",
    "practitioners": "practitioner_id",
    "businesses": "business_id",
}
#: Nested lists that only appear in links and have no registry entry.
_EXTRA_NESTED = {("attendees", "invoices"), ("practitioners", "practitioner_reference_numbers")}


def _singulars() -> dict[str, str]:
    """Collection name -> relation name (``businesses`` -> ``business``), from the registry."""
    out: dict[str, str] = {}
    for res in RESOURCES.values():
        for rel, target in res.relations.items():
            out.setdefault(target, rel)
    return out


_SINGULAR = _singulars()


def _singular(name: str) -> str:
    return _SINGULAR.get(name) or name.removesuffix("s")


class HttpError(Exception):
    """An error answer: status and message (and 422 field errors)."""

    def __init__(self, status: int, message: str, errors: dict[str, list[str]] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.errors = errors


@dataclass
class Upload:
    """A file posted to the sandbox's stand-in for S3."""

    filename: str
    content_type: str
    data: bytes


@dataclass
class Account:
    """One served account: its seed, its store and what the API recorded for it."""

    seed: AccountSeed
    store: AccountStore
    reminders: list[dict[str, Any]] = field(default_factory=list)
    blobs: dict[int, bytes] = field(default_factory=dict)


@dataclass
class ApiRequest:
    method: str
    segments: list[str]  # the path after /<shard>/v1, split on "/"
    query: list[tuple[str, str]]
    body: bytes
    base: str  # http://host:port/<shard>/v1
    origin: str  # http://host:port
    account: Account
    key: KeySeed

    def param(self, name: str) -> str | None:
        return next((v for k, v in self.query if k == name), None)


@dataclass
class ApiResponse:
    status: int
    body: bytes = b""
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)

    @classmethod
    def json(cls, status: int, payload: Any, headers: list[tuple[bytes, bytes]] | None = None) -> ApiResponse:
        body = _encode(payload).encode()
        return cls(status, body, [(b"content-type", _JSON), *(headers or [])])


def error_response(status: int, message: str, errors: dict[str, list[str]] | None = None) -> ApiResponse:
    payload: dict[str, Any] = {"message": message}
    if errors is not None:
        payload["errors"] = errors
    return ApiResponse.json(status, payload)


class Api:
    """Routes and answers Cliniko API requests for every account of a sandbox."""

    def __init__(self, ids: IdMode = "mixed") -> None:
        self.ids: IdMode = ids
        self.uploads: dict[str, Upload] = {}
        self._upload_numbers = itertools.count(1)
        # (parent segment, child segment) -> child resource name, from the registry.
        self.nested: dict[tuple[str, str], str] = {}
        for res in RESOURCES.values():
            for template in res.nested.values():
                parts = template.strip("/").split("/")
                self.nested[(parts[0], parts[-1])] = res.name

    def handle(self, req: ApiRequest) -> ApiResponse:
        try:
            return self._route(req)
        except HttpError as exc:
            return error_response(exc.status, exc.message, exc.errors)
        except QueryError as exc:
            return error_response(exc.status, str(exc))
        except WriteError as exc:
            return error_response(exc.status, exc.message, exc.errors if exc.status == 422 else None)

    # -- routing ------------------------------------------------------------

    def _route(self, req: ApiRequest) -> ApiResponse:
        segs, method = req.segments, req.method
        store = req.account.store
        if not segs:
            raise HttpError(404, "Not found.")
        head = segs[0]
        if segs == ["user"]:
            self._allow(method, "GET")
            return self._user(req)
        if head == "settings" and len(segs) <= 2:
            self._allow(method, "GET")
            return self._settings(req, public=segs[1:] == ["public"], exact=len(segs) == 1)
        if head in ("bookings", "appointments") and len(segs) == 2:
            self._allow(method, "GET")
            return self._booking(req, head, _path_id(segs[1]))
        if len(segs) in (3, 4) and (
            (head, segs[2]) in self.nested
            or (head, segs[2]) in _EXTRA_NESTED
            or (segs[2] == "appointments" and head in _APPOINTMENT_PARENTS)
        ):
            self._allow(method, "GET")
            return self._nested(req, head, _path_id(segs[1]), segs[2], segs[3] if len(segs) == 4 else None)
        table = store.table(head)
        if table is None:
            raise HttpError(404, f"Unknown resource {head!r}.")
        res = table.resource
        if len(segs) == 1:
            if method == "POST":
                return self._create(req, res)
            self._allow(method, "GET")
            return self._list(req, table, None)
        if len(segs) == 2 and segs[1] in res.list_routes:
            self._allow(method, "GET")
            return self._list(req, table, segs[1])
        record_id = _path_id(segs[1])
        if len(segs) == 2:
            return self._single(req, res, record_id)
        action = segs[2]
        if len(segs) == 3 and action in ("cancel", "archive", "unarchive") and action in res.writes:
            return self._action(req, res, record_id, action)
        if len(segs) == 3 and action == "conflicts" and head in BOOKING_TABLES:
            self._allow(method, "GET")
            return self._conflicts(req, head, record_id)
        if len(segs) == 3 and head == "patients" and action == "attachment_presigned_post":
            self._allow(method, "GET")
            return self._presign(req, record_id)
        if len(segs) == 3 and head == "patient_attachments" and action == "content":
            self._allow(method, "GET")
            return self._content(req, record_id)
        raise HttpError(404, "Not found.")

    @staticmethod
    def _allow(method: str, *allowed: str) -> None:
        if method not in allowed:
            raise HttpError(405, f"Method {method} is not allowed here.")

    def _live(self, req: ApiRequest, name: str, record_id: int) -> dict[str, Any]:
        rec = req.account.store.get(name, record_id)
        if rec is None or rec.get("deleted_at") is not None:
            raise HttpError(404, f"No {_singular(name).replace('_', ' ')} with id {record_id}.")
        return rec

    def _render(
        self, req: ApiRequest, res: Resource, rec: dict[str, Any], self_path: str | None = None
    ) -> dict:
        return render(res, rec, req.base, self.ids, self_path)

    # -- lists --------------------------------------------------------------

    def _list(
        self,
        req: ApiRequest,
        table: Table,
        route: str | None,
        extra: tuple[list[str], list[Any]] = ([], []),
        envelope: str | None = None,
    ) -> ApiResponse:
        store = req.account.store
        filters = [v for k, v in req.query if k in ("q[]", "q")]
        conds, params = parse_filters(table, filters)
        where = " AND ".join([*list_condition(table, route), *extra[0], *conds])
        all_params = [*extra[1], *params]
        order = parse_sort(table, req.param("sort"), req.param("order"))
        page, per_page = parse_paging(req.param("page"), req.param("per_page"))
        total = store.count(table.name, where, all_params)
        records = store.select(table.name, where, all_params, order, per_page, (page - 1) * per_page)
        if table.name == "patients" and route == "deleted":
            items = [render_deleted_patient(r, req.base) for r in records]
        else:
            items = [self._render(req, table.resource, r) for r in records]
        links = {"self": self._page_link(req, page, per_page)}
        if page * per_page < total:
            links["next"] = self._page_link(req, page + 1, per_page)
        if page > 1:
            links["previous"] = self._page_link(req, page - 1, per_page)
        payload = {envelope or table.name: items, "total_entries": total, "links": links}
        return ApiResponse.json(200, payload)

    @staticmethod
    def _page_link(req: ApiRequest, page: int, per_page: int) -> str:
        kept = [(k, v) for k, v in req.query if k not in ("page", "per_page")]
        query = urlencode([*kept, ("page", page), ("per_page", per_page)])
        return f"{req.base}/{'/'.join(req.segments)}?{query}"

    def _nested(
        self, req: ApiRequest, parent: str, parent_id: int, child: str, route: str | None
    ) -> ApiResponse:
        """A list under a parent record (which must exist; a deleted parent still has its lists)."""
        store = req.account.store
        parent_rec = self._parent(req, parent, parent_id)
        if (parent, child) == ("practitioners", "practitioner_reference_numbers"):
            # linked from every practitioner, but not a resource the sandbox holds
            payload = {child: [], "total_entries": 0, "links": {"self": self._page_link(req, 1, 50)}}
            return ApiResponse.json(200, payload)
        if (parent, child) == ("attendees", "invoices"):
            # an attendee's invoices: those of its booking, for its patient
            conds = ['"appointment_id" = ?', '"patient_id" = ?']
            params = [parent_rec.get("booking_id"), parent_rec.get("patient_id")]
            return self._list(req, store.tables["invoices"], route, (conds, params))
        if child == "appointments" and parent in _APPOINTMENT_PARENTS and route is None:
            table = store.tables["individual_appointments"]
            cond = f'"{_APPOINTMENT_PARENTS[parent]}" = ?'
            return self._list(req, table, None, ([cond], [parent_id]), envelope="appointments")
        name = self.nested.get((parent, child))
        if name is None:
            raise HttpError(404, "Not found.")
        table = store.tables[name]
        if route is not None and route not in table.resource.list_routes:
            raise HttpError(404, "Not found.")
        return self._list(req, table, route, self._nested_condition(store, table, parent, parent_id))

    def _parent(self, req: ApiRequest, parent: str, parent_id: int) -> dict[str, Any]:
        tables = BOOKING_TABLES[:2] if parent == "appointments" else (parent,)
        for name in tables:
            rec = req.account.store.get(name, parent_id)
            if rec is not None:
                return rec
        raise HttpError(404, f"No {_singular(parent).replace('_', ' ')} with id {parent_id}.")

    @staticmethod
    def _nested_condition(
        store: AccountStore, table: Table, parent: str, parent_id: int
    ) -> tuple[list[str], list[Any]]:
        res = table.resource
        for rel, target in res.relations.items():
            if rel.startswith("default_"):
                continue  # a practitioner's default type is not its set of types
            if target == parent or (target == "bookings" and parent in BOOKING_TABLES):
                return [f'"{rel}_id" = ?'], [parent_id]
        # many-to-many: an <x>_ids array on the child, or on the parent
        child_field = f"{_singular(parent)}_ids"
        if store.has_members(res.name, child_field):
            sql = "id IN (SELECT id FROM _members WHERE res = ? AND field = ? AND value = ?)"
            return [sql], [res.name, child_field, parent_id]
        parent_field = f"{_singular(res.name)}_ids"
        if store.has_members(parent, parent_field):
            sql = "id IN (SELECT value FROM _members WHERE res = ? AND id = ? AND field = ?)"
            return [sql], [parent, parent_id, parent_field]
        return [], []

    # -- single records -----------------------------------------------------

    def _single(self, req: ApiRequest, res: Resource, record_id: int) -> ApiResponse:
        if req.method == "GET":
            return ApiResponse.json(200, self._render(req, res, self._live(req, res.name, record_id)))
        if req.method == "PUT" and "update" in res.writes:
            rec = self._live(req, res.name, record_id)
            rec = self._writer(req).update(res, rec, self._body(req))
            return ApiResponse.json(200, self._render(req, res, rec))
        if req.method == "DELETE" and "delete" in res.writes:
            self._writer(req).delete(res, self._live(req, res.name, record_id))
            return ApiResponse(204)
        raise HttpError(405, f"Method {req.method} is not allowed on {res.name}.")

    def _user(self, req: ApiRequest) -> ApiResponse:
        rec = self._live(req, "users", req.key.user_id)
        return ApiResponse.json(200, self._render(req, RESOURCES["users"], rec))

    def _settings(self, req: ApiRequest, *, public: bool, exact: bool) -> ApiResponse:
        if not (public or exact):
            raise HttpError(404, "Not found.")
        settings = json.loads(json.dumps(req.account.seed.settings))
        if not public:
            if not req.key.is_admin:
                raise HttpError(403, "Your user role does not allow viewing the account settings.")
            settings["links"] = {"self": f"{req.base}/settings"}
            return ApiResponse.json(200, settings)
        account = settings.get("account") or {}
        settings["account"] = {k: account[k] for k in _PUBLIC_ACCOUNT if k in account}
        bookings = settings.get("online_bookings")
        if isinstance(bookings, dict):
            for key in _PRIVATE_BOOKINGS:
                bookings.pop(key, None)
        settings["links"] = {"self": f"{req.base}/settings/public"}
        return ApiResponse.json(200, settings)

    def _find_booking(
        self, req: ApiRequest, record_id: int, tables: tuple[str, ...] = BOOKING_TABLES
    ) -> tuple[str, dict[str, Any]] | None:
        for name in tables:
            rec = req.account.store.get(name, record_id)
            if rec is not None and rec.get("deleted_at") is None:
                return name, rec
        return None

    def _booking(self, req: ApiRequest, head: str, record_id: int) -> ApiResponse:
        tables = BOOKING_TABLES if head == "bookings" else BOOKING_TABLES[:2]
        found = self._find_booking(req, record_id, tables)
        if found is None:
            raise HttpError(404, f"No {head[:-1]} with id {record_id}.")
        name, rec = found
        return ApiResponse.json(200, self._render(req, RESOURCES[name], rec, f"/{head}/{record_id}"))

    def _conflicts(self, req: ApiRequest, name: str, record_id: int) -> ApiResponse:
        """Whether another live booking of the same practitioner overlaps this one."""
        rec = self._parent(req, name, record_id)
        store = req.account.store
        exist = False
        for other in BOOKING_TABLES:
            where = 'deleted_at IS NULL AND "practitioner_id" = ? AND "starts_at" < ? AND "ends_at" > ? AND id != ?'
            if "cancelled_at" in store.tables[other].columns:
                where += " AND cancelled_at IS NULL"
            params = [rec.get("practitioner_id"), rec.get("ends_at"), rec.get("starts_at"), record_id]
            if store.count(other, where, params):
                exist = True
                break
        return ApiResponse.json(200, {"conflicts": {"exist": exist}})

    # -- writes -------------------------------------------------------------

    def _writer(self, req: ApiRequest) -> Writer:
        seed = req.account.seed
        return Writer(WriteContext(req.account.store, seed.settings, req.key.user_id))

    @staticmethod
    def _body(req: ApiRequest) -> dict[str, Any]:
        try:
            body = json.loads(req.body or b"{}")
        except ValueError:
            raise HttpError(400, "The request body is not valid JSON.") from None
        if not isinstance(body, dict):
            raise HttpError(400, "The request body must be a JSON object.")
        return body

    def _create(self, req: ApiRequest, res: Resource) -> ApiResponse:
        if "create" not in res.writes:
            raise HttpError(405, f"{res.name} cannot be created through the API.")
        body = self._body(req)
        writer = self._writer(req)
        if res.name == "patient_attachments":
            return self._create_attachment(req, res, writer, body)
        rec = writer.create(res, body)
        self._note_reminder(req, writer, res.name, rec)
        location = f"{req.base}/{res.name}/{rec['id']}".encode()
        return ApiResponse.json(201, self._render(req, res, rec), [(b"location", location)])

    def _note_reminder(self, req: ApiRequest, writer: Writer, name: str, rec: dict[str, Any]) -> None:
        """Record an appointment that would make Cliniko message its patient (§7)."""
        if name == "individual_appointments":
            starts_at = rec.get("starts_at")
        elif name == "attendees":
            found = writer.booking(rec.get("booking_id"))
            starts_at = found[1].get("starts_at") if found else None
        else:
            return
        patient = writer.live("patients", rec.get("patient_id")) or {}
        reminder_type = patient.get("reminder_type")
        if starts_at and starts_at > utc_now() and reminder_type not in (None, "None"):
            req.account.reminders.append(
                {
                    "resource": name,
                    "id": rec["id"],
                    "patient_id": rec.get("patient_id"),
                    "starts_at": starts_at,
                    "reminder_type": reminder_type,
                    "receives_confirmation_emails": patient.get("receives_confirmation_emails"),
                    "created_at": rec.get("created_at"),
                    "key": fingerprint(req.key.key),
                }
            )

    def _action(self, req: ApiRequest, res: Resource, record_id: int, action: str) -> ApiResponse:
        writer = self._writer(req)
        rec = self._live(req, res.name, record_id)
        if action == "cancel":
            self._allow(req.method, "PATCH")
            writer.cancel(res, rec, self._body(req))
            return ApiResponse(204)
        self._allow(req.method, "POST")
        writer.archive(res, rec, archived=action == "archive")
        if action == "archive":
            return ApiResponse(204)
        return ApiResponse.json(200, self._render(req, res, rec))

    # -- attachments --------------------------------------------------------

    def _presign(self, req: ApiRequest, patient_id: int) -> ApiResponse:
        self._live(req, "patients", patient_id)
        number = next(self._upload_numbers)
        key = f"sandbox/{req.account.seed.subdomain}/{number:08d}/${{filename}}"
        fields = {
            "key": key,
            "policy": "c2FuZGJveC1wb2xpY3k=",
            "x-amz-credential": "SANDBOX/20240101/ap-southeast-2/s3/aws4_request",
            "x-amz-algorithm": "AWS4-HMAC-SHA256",
            "x-amz-date": "20240101T000000Z",
            "x-amz-signature": f"{number:064x}",
            "success_action_status": "201",
            "acl": "private",
        }
        return ApiResponse.json(200, {"url": f"{req.origin}/_sandbox/uploads", "fields": fields})

    def _create_attachment(self, req: ApiRequest, res: Resource, writer: Writer, body: dict) -> ApiResponse:
        url = body.get("upload_url")
        key = ""
        if isinstance(url, str):
            _, marker, tail = url.partition("/_sandbox/uploads/")
            key = unquote(tail) if marker else ""
        upload = self.uploads.get(key)
        if upload is None:
            raise WriteError(
                422, "Validation failed: upload_url", {"upload_url": ["is not an uploaded file"]}
            )
        extra = {
            "filename": upload.filename,
            "content_type": upload.content_type,
            "size": len(upload.data),
            "processing_completed": True,
            "user_id": req.key.user_id,
        }
        rec = writer.create(res, body, extra)  # upload_url is not stored, only required
        req.account.blobs[rec["id"]] = upload.data
        del self.uploads[key]  # the temporary upload is gone once processed (§3.21)
        shown = {**rec, "filename": None, "content_type": None, "size": None, "processing_completed": False}
        location = f"{req.base}/{res.name}/{rec['id']}".encode()
        return ApiResponse.json(201, self._render(req, res, shown), [(b"location", location)])

    def _content(self, req: ApiRequest, record_id: int) -> ApiResponse:
        rec = self._live(req, "patient_attachments", record_id)
        data = req.account.blobs.get(record_id)
        if data is None:
            size = min(int(rec.get("size") or 64), _MAX_FILLER)
            pattern = f"cliniko sandbox attachment {record_id}\n".encode()
            data = (pattern * (size // len(pattern) + 1))[:size]
        content_type = (rec.get("content_type") or "application/octet-stream").encode()
        filename = (rec.get("filename") or f"attachment-{record_id}").replace('"', "")
        disposition = f'attachment; filename="{filename}"'.encode("latin-1", "replace")
        return ApiResponse(
            200, data, [(b"content-type", content_type), (b"content-disposition", disposition)]
        )


def _path_id(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or len(text) > 19 or int(text) >= 2**63:
        raise HttpError(404, "Not found.")
    return int(text)
