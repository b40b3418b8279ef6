"""The JSON API, version 1: cases and quarantine for the desk's other tools.

Every endpoint but the OpenAPI document wants `Authorization: Bearer <token>`
(`mailbridge api-token create NAME [--read-only]`): none or an unknown one is 401, a
read-only token on a write is 403. Cases are the CLI's JSON (mailbridge/views.py);
writes go through mailbridge/http/actions.py, the staff commands' own rules.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from mailbridge.http import DeskTools
from mailbridge.http.actions import ActionError, Via, answer_case, change_case, replay_mail
from mailbridge.http.auth import Guard
from mailbridge.http.openapi import SLA_STATES, openapi_document
from mailbridge.status import quarantine_list
from mailbridge.tokens import Caller
from mailbridge.views import count_tickets, get_ticket, list_tickets, ticket_json, ticket_summary

log = logging.getLogger(__name__)

PREFIX = "/api/v1"
MAX_BODY = 1024 * 1024  # a JSON request larger than this is refused (413)
MAX_LIMIT = 500

Handler = Callable[[Request, Any, Caller], Response]


def json_response(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(body, ensure_ascii=False, default=str), status_code=status,
                    media_type="application/json", headers=headers)


def error(status: int, what: str, detail: str = "",
          headers: dict[str, str] | None = None) -> Response:
    body = {"error": what, **({"detail": detail} if detail else {})}
    return json_response(status, body, headers)


class BadRequest(Exception):
    pass


async def read_body(request: Request, limit: int = MAX_BODY) -> bytes:
    """The request body, refused past `limit` bytes without reading the rest."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise ActionError(413, "too large", f"the body is over {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ActionError(413, "too large", f"the body is over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _json_object(raw: bytes) -> dict[str, Any]:
    try:
        data = json.loads(raw) if raw.strip() else {}
    except (ValueError, UnicodeDecodeError) as exc:
        raise ActionError(400, "bad request", f"the body is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ActionError(400, "bad request", "the body must be a JSON object")
    return data


class Api:
    def __init__(self, tools: DeskTools) -> None:
        self.tools = tools
        self.guard = Guard(tools.db)

    def routes(self) -> list[BaseRoute]:
        return [
            Route(f"{PREFIX}/openapi.json", self.openapi, methods=["GET"]),
            Route(f"{PREFIX}/cases", self._endpoint(self.list_cases), methods=["GET"]),
            Route(f"{PREFIX}/cases/{{number:int}}", self._endpoint(self.get_case),
                  methods=["GET"]),
            Route(f"{PREFIX}/cases/{{number:int}}", self._endpoint(self.patch_case),
                  methods=["PATCH"]),
            Route(f"{PREFIX}/cases/{{number:int}}/replies", self._endpoint(self.post_reply),
                  methods=["POST"]),
            Route(f"{PREFIX}/quarantine", self._endpoint(self.list_quarantine),
                  methods=["GET"]),
            Route(f"{PREFIX}/quarantine/{{id:int}}/replay",
                  self._endpoint(self.replay), methods=["POST"]),
        ]

    async def openapi(self, request: Request) -> Response:
        return json_response(200, openapi_document())

    def _endpoint(self, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        """Authenticate, read a write's JSON body, run the handler in a worker thread (the
        database is synchronous), and turn refusals into JSON errors."""

        async def endpoint(request: Request) -> Response:
            try:
                body = await read_body(request) if request.method in ("POST", "PATCH") else b""
            except ActionError as exc:
                return error(exc.status, exc.error, exc.detail)
            return await run_in_threadpool(self._call, handler, request, body)

        endpoint.__name__ = handler.__name__
        return endpoint

    def _call(self, handler: Handler, request: Request, body: bytes) -> Response:
        caller = self.guard.bearer(request.headers.get("authorization"))
        if caller is None:
            return error(401, "unauthorized", "send Authorization: Bearer <token>",
                         headers={"WWW-Authenticate": 'Bearer realm="mailbridge"'})
        try:
            data = _json_object(body) if request.method in ("POST", "PATCH") else None
            return handler(request, data, caller)
        except ActionError as exc:
            return error(exc.status, exc.error, exc.detail)
        except BadRequest as exc:
            return error(400, "bad request", str(exc))

    # -- cases ----------------------------------------------------------------------

    def list_cases(self, request: Request, _data: Any, caller: Caller) -> Response:
        query = request.query_params
        filters = {
            "status": query.get("status") or None,
            "priority": query.get("priority") or None,
            "queue": query.get("queue") or None,
            "tenant_id": query.get("tenant") or None,
            "owner": query.get("owner"),
            "sla_state": query.get("sla_state") or None,
        }
        if filters["sla_state"] is not None and filters["sla_state"] not in SLA_STATES:
            raise BadRequest(f"sla_state must be one of {', '.join(SLA_STATES)}")
        limit = _int(query.get("limit"), "limit", 50, 1, MAX_LIMIT)
        offset = _int(query.get("offset"), "offset", 0, 0, 10**9)
        with self.tools.db.reader() as session:
            cases = [ticket_summary(t) for t in list_tickets(session, limit=limit, offset=offset,
                                                             **filters)]
            total = count_tickets(session, **filters)
        return json_response(200, {"cases": cases, "total": total, "limit": limit,
                                   "offset": offset})

    def get_case(self, request: Request, _data: Any, caller: Caller) -> Response:
        number = request.path_params["number"]
        with self.tools.db.reader() as session:
            ticket = get_ticket(session, number)
            if ticket is None:
                return error(404, "not found", f"no case {number}")
            return json_response(200, ticket_json(session, ticket))

    def patch_case(self, request: Request, data: dict[str, Any], caller: Caller) -> Response:
        case, messages = change_case(self.tools, request.path_params["number"], data,
                                     Via("api", caller))
        return json_response(200, {"case": case, "changes": messages})

    def post_reply(self, request: Request, data: dict[str, Any], caller: Caller) -> Response:
        unknown = sorted(set(data) - {"body", "author", "author_name"})
        if unknown:
            raise BadRequest(f"unknown field(s): {', '.join(unknown)}")
        for key in ("body", "author", "author_name"):
            if data.get(key) is not None and not isinstance(data[key], str):
                raise BadRequest(f"{key} must be a string")
        result = answer_case(self.tools, request.path_params["number"], data.get("body") or "",
                             Via("api", caller), author=data.get("author"),
                             author_name=data.get("author_name"))
        return json_response(201, result)

    # -- quarantine -----------------------------------------------------------------

    def list_quarantine(self, request: Request, _data: Any, caller: Caller) -> Response:
        limit = _int(request.query_params.get("limit"), "limit", 100, 1, MAX_LIMIT)
        with self.tools.db.reader() as session:
            return json_response(200, {"quarantine": quarantine_list(session, limit)})

    def replay(self, request: Request, _data: Any, caller: Caller) -> Response:
        return json_response(200, replay_mail(self.tools, request.path_params["id"],
                                              Via("api", caller)))


def _int(value: str | None, name: str, default: int, low: int, high: int) -> int:
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except ValueError:
        raise BadRequest(f"{name} must be a whole number") from None
    if not low <= number <= high:
        raise BadRequest(f"{name} must be between {low} and {high}")
    return number
