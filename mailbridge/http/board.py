"""The board at `/`: the desk's queues with their open cases and SLA clocks, a case's page
with its thread, the quarantine, and a chart of intake and acknowledgement latency.

Server-rendered Jinja2 (templates/board/, Spanish), no script. Login with an API token
(`mailbridge api-token create NAME`; a read-only one sees, never writes): the browser
gets a session cookie (HttpOnly, SameSite=Strict, Secure over HTTPS) whose value is kept
hashed (mailbridge/tokens.py). Every form that writes carries a CSRF token derived from
the session; the login form a double-submit one. Writes are the API's (actions.py).
"""

from __future__ import annotations

import hmac
import logging
import secrets
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from mailbridge.db import utcnow
from mailbridge.http import DeskTools
from mailbridge.http.actions import ActionError, Via, answer_case, change_case, replay_mail
from mailbridge.http.api import read_body
from mailbridge.http.auth import SESSION_COOKIE, Guard
from mailbridge.http.chart import draw, figures
from mailbridge.pipeline.changes import SETTABLE_STATUSES
from mailbridge.resources import data_dir
from mailbridge.service_levels.clocks import STATUS_LABELS_ES
from mailbridge.status import quarantine_list
from mailbridge.tickets.models import OPEN_STATUSES, Ticket
from mailbridge.tokens import (
    Caller,
    close_board_session,
    csrf_token,
    find_token,
    open_board_session,
)
from mailbridge.views import get_ticket, ticket_json, ticket_summary

log = logging.getLogger(__name__)

TEMPLATES = data_dir("templates", "ack.txt.j2") / "board"
LOGIN_COOKIE = "mb_login"
MAX_FORM = 256 * 1024
OPEN_CASES_SHOWN = 500
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
    "img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
}
STATUS_CHOICES = sorted({*SETTABLE_STATUSES.values()})


class Board:
    def __init__(self, tools: DeskTools) -> None:
        self.tools = tools
        self.guard = Guard(tools.db)
        self.env = Environment(
            loader=FileSystemLoader(str(TEMPLATES)), autoescape=select_autoescape(["j2"]),
            undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True,
        )

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/", self.queues, methods=["GET"]),
            Route("/casos/{number:int}", self.case, methods=["GET", "POST"]),
            Route("/cuarentena", self.quarantine, methods=["GET"]),
            Route("/cuarentena/{id:int}/reprocesar", self.replay, methods=["POST"]),
            Route("/entrar", self.login, methods=["GET", "POST"]),
            Route("/salir", self.logout, methods=["POST"]),
        ]

    # -- plumbing ---------------------------------------------------------------------

    def _page(self, template: str, status: int = 200, **context: Any) -> HTMLResponse:
        html = self.env.get_template(template).render(**context)
        return HTMLResponse(html, status_code=status, headers=HEADERS)

    async def _who(self, request: Request) -> Caller | None:
        return await run_in_threadpool(self.guard.board, request.cookies.get(SESSION_COOKIE))

    async def _form(self, request: Request, caller: Caller | None) -> dict[str, str]:
        """The POSTed form, after its CSRF token matched the session's."""
        try:
            raw = await read_body(request, MAX_FORM)
        except ActionError as exc:
            raise _Refused(413, "El formulario es demasiado grande.") from exc
        form = {k: v[-1] for k, v in parse_qs(raw.decode("utf-8", "replace"),
                                             keep_blank_values=True).items()}
        cookie = request.cookies.get(SESSION_COOKIE, "")
        if caller is None or not hmac.compare_digest(form.get("csrf", ""), csrf_token(cookie)):
            raise _Refused(403, "El formulario caducó o no viene de este tablero: "
                           "vuelva a cargar la página e inténtelo de nuevo.")
        return form

    def _base(self, request: Request, caller: Caller) -> dict[str, Any]:
        return {"caller": caller, "csrf": csrf_token(request.cookies.get(SESSION_COOKIE, "")),
                "labels": STATUS_LABELS_ES}

    def _refused(self, request: Request, caller: Caller | None, refusal: _Refused) -> Response:
        return self._page("error.html.j2", refusal.status, message=refusal.message,
                          caller=caller, csrf=csrf_token(request.cookies.get(SESSION_COOKIE, "")))

    # -- pages ------------------------------------------------------------------------

    async def queues(self, request: Request) -> Response:
        caller = await self._who(request)
        if caller is None:
            return _to_login()
        context = await run_in_threadpool(self._queues_context)
        return self._page("queues.html.j2", **self._base(request, caller), **context)

    def _queues_context(self) -> dict[str, Any]:
        rules = self.tools.rules()
        now = utcnow()
        with self.tools.db.reader() as session:
            tickets = session.scalars(
                select(Ticket).where(Ticket.status.in_(OPEN_STATUSES))
                .order_by(Ticket.response_due_at.is_(None), Ticket.response_due_at,
                          Ticket.number)
                .limit(OPEN_CASES_SHOWN)
            ).all()
            cases = [{**ticket_summary(t), "due_at": t.response_due_at} for t in tickets]
            chart = draw(figures(session, now), rules.desk.zone)
        queues = [{"key": key, "label": q.label or key, "cases": []}
                  for key, q in rules.queues.items()]
        by_key = {q["key"]: q for q in queues}
        other: dict[str, Any] = {"key": None, "label": "Sin cola", "cases": []}
        for case in cases:
            case["due_es"] = (f"{case['due_at'].astimezone(rules.desk.zone):%d/%m %H:%M}"
                              if case["due_at"] is not None else "")
            by_key.get(case["queue"] or "", other)["cases"].append(case)
        if other["cases"]:
            queues.append(other)
        return {"queues": queues, "chart": chart, "shown": len(cases),
                "capped": len(cases) >= OPEN_CASES_SHOWN, "zone": rules.desk.timezone}

    async def case(self, request: Request) -> Response:
        caller = await self._who(request)
        if caller is None:
            return _to_login()
        number = request.path_params["number"]
        notice = None
        if request.method == "POST":
            try:
                form = await self._form(request, caller)
                notice = await run_in_threadpool(self._case_action, number, form, caller)
            except _Refused as refusal:
                return self._refused(request, caller, refusal)
            # Post/redirect/get: a reload does not send the form again.
            return RedirectResponse(f"/casos/{number}?hecho={_quote(notice)}", 303)
        notice = request.query_params.get("hecho")
        data = await run_in_threadpool(self._case_data, number)
        if data is None:
            return self._page("error.html.j2", 404, message=f"No hay un caso {number}.",
                              **self._base(request, caller))
        return self._page("case.html.j2", **self._base(request, caller), case=data,
                          notice=notice, statuses=STATUS_CHOICES,
                          priorities=list(self.tools.rules().priorities))

    def _case_data(self, number: int) -> dict[str, Any] | None:
        with self.tools.db.reader() as session:
            ticket = get_ticket(session, number)
            return ticket_json(session, ticket) if ticket is not None else None

    def _case_action(self, number: int, form: dict[str, str], caller: Caller) -> str:
        via = Via("board", caller)
        try:
            if form.get("action") == "responder":
                result = answer_case(self.tools, number, form.get("body", ""), via,
                                     author=form.get("author") or None,
                                     author_name=form.get("author_name") or None)
                return ("Respuesta enviada al cliente." if result["queued"] else
                        "Respuesta guardada; nadie pudo recibirla por correo.")
            wanted = {k: form[k].strip() for k in ("status", "priority", "owner")
                      if form.get(k, "").strip()}
            case = None
            with self.tools.db.reader() as session:
                ticket = get_ticket(session, number)
                case = ticket_summary(ticket) if ticket is not None else None
            if case is not None:  # only what the form changes: the rest is as shown
                wanted = {k: v for k, v in wanted.items() if (case.get(k) or "") != v}
            if not wanted:
                return "Nada que cambiar."
            _case, messages = change_case(self.tools, number, wanted, via)
            done = "; ".join(messages)
            return done[:1].upper() + done[1:] + "."
        except ActionError as exc:
            raise _Refused(exc.status if exc.status != 422 else 400,
                           _spanish(exc)) from exc

    async def quarantine(self, request: Request) -> Response:
        caller = await self._who(request)
        if caller is None:
            return _to_login()

        def entries() -> list[dict[str, Any]]:
            with self.tools.db.reader() as session:
                return quarantine_list(session)

        return self._page("quarantine.html.j2", **self._base(request, caller),
                          entries=await run_in_threadpool(entries),
                          notice=request.query_params.get("hecho"))

    async def replay(self, request: Request) -> Response:
        caller = await self._who(request)
        if caller is None:
            return _to_login()
        inbound_id = request.path_params["id"]
        try:
            await self._form(request, caller)
            result = await run_in_threadpool(
                lambda: replay_mail(self.tools, inbound_id, Via("board", caller)))
        except _Refused as refusal:
            return self._refused(request, caller, refusal)
        except ActionError as exc:
            return self._refused(request, caller, _Refused(exc.status, _spanish(exc)))
        done = f"Correo {inbound_id} reprocesado: {result['outcome']}" + (
            f" (caso {result['case']})" if result["case"] else "") + "."
        return RedirectResponse(f"/cuarentena?hecho={_quote(done)}", 303)

    # -- login ------------------------------------------------------------------------

    async def login(self, request: Request) -> Response:
        if request.method == "GET":
            nonce = secrets.token_urlsafe(24)
            response = self._page("login.html.j2", nonce=nonce, problem=None, caller=None)
            response.set_cookie(LOGIN_COOKIE, nonce, max_age=3600, path="/entrar",
                                httponly=True, samesite="strict",
                                secure=request.url.scheme == "https")
            return response
        raw = await read_body(request, MAX_FORM)
        form = {k: v[-1] for k, v in parse_qs(raw.decode("utf-8", "replace")).items()}
        nonce = request.cookies.get(LOGIN_COOKIE, "")
        if not nonce or not hmac.compare_digest(form.get("nonce", ""), nonce):
            return self._page("login.html.j2", 403, nonce=nonce, caller=None,
                              problem="El formulario caducó: vuelva a cargar la página.")
        value = await run_in_threadpool(self._open_session, form.get("token", "").strip())
        if value is None:
            log.warning("board login refused", extra={"client": request.client.host
                                                      if request.client else None})
            return self._page("login.html.j2", 401, nonce=nonce, caller=None,
                              problem="Ese token no es válido.")
        response = RedirectResponse("/", 303)
        response.set_cookie(SESSION_COOKIE, value, path="/", httponly=True, samesite="strict",
                            secure=request.url.scheme == "https",
                            max_age=int(self.tools.settings.board_session_hours * 3600))
        response.delete_cookie(LOGIN_COOKIE, path="/entrar")
        return response

    def _open_session(self, token: str) -> str | None:
        with self.tools.db.reader() as session:
            caller = find_token(session, token)
        if caller is None:
            return None
        lifetime = timedelta(hours=self.tools.settings.board_session_hours)
        with self.tools.db.transaction() as session:
            value = open_board_session(session, caller, lifetime=lifetime)
        log.info("board login", extra={"token": caller.name})
        return value

    async def logout(self, request: Request) -> Response:
        caller = await self._who(request)
        try:
            await self._form(request, caller)
        except _Refused as refusal:
            return self._refused(request, caller, refusal)
        cookie = request.cookies.get(SESSION_COOKIE, "")

        def close() -> None:
            with self.tools.db.transaction() as session:
                close_board_session(session, cookie)

        await run_in_threadpool(close)
        response = RedirectResponse("/entrar", 303)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _to_login() -> Response:
    return RedirectResponse("/entrar", 303)


def _quote(text: str) -> str:
    from urllib.parse import quote

    return quote(text[:300])


def _spanish(exc: ActionError) -> str:
    if exc.status == 403:
        return "Su token es de solo lectura: puede ver el tablero, no cambiar casos."
    if exc.status == 404:
        return "Ya no existe (o no está en cuarentena)."
    return exc.detail or exc.error
