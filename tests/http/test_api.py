"""The JSON API over HTTP to the real daemon (issue 18.2): tokens, cases, changes with the
staff commands' rules, staff answers that reach the customer, the quarantine, and an
OpenAPI document that matches the routes and the answers."""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest

from mailbridge.http import DeskTools
from mailbridge.http.api import Api
from mailbridge.http.openapi import openapi_document
from tests.support.daemon import Daemon, http_request, opening_mail
from tests.support.faults import quarantine_one
from tests.support.schema import problems
from tests.support.sink import Received, SmtpSink

ANA = "ana@compensar.example"
CARLOS = "carlos@mesa.example"
DOC = openapi_document()


@pytest.fixture
def relay() -> Iterator[SmtpSink]:
    sink = SmtpSink().start()
    yield sink
    sink.stop()


def token(daemon: Daemon, name: str, *flags: str) -> str:
    out = daemon.cli("api-token", "create", name, *flags).stdout.decode().strip()
    assert re.fullmatch(r"mbt_[A-Za-z0-9_\-]{40,}", out), out
    return out


def check(body: Any, schema: str) -> Any:
    found = problems(body, {"$ref": f"#/components/schemas/{schema}"}, DOC)
    assert found == [], found
    return body


def call(daemon: Daemon, method: str, path: str, body: Any = None, *,
         token: str | None = None) -> tuple[int, Any]:
    status, payload, _headers = http_request(daemon, method, path, body, token=token)
    return status, payload


def wait_mail(relay: SmtpSink, address: str, kind_words: str, timeout: float = 20) -> Received:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for received in relay.received:
            if address in received.rcpt_tos and kind_words in received.message.get_body(
                    ("plain",)).get_content():
                return received
        time.sleep(0.05)
    raise AssertionError(f"no mail to {address} saying {kind_words!r}: "
                         f"{[(r.rcpt_tos, r.message['Subject']) for r in relay.received]}")


def open_case(daemon: Daemon, **kwargs: str) -> dict[str, Any]:
    daemon.send(opening_mail(**kwargs))
    daemon.settle()
    number = daemon.query("SELECT max(number) FROM tickets")[0][0]
    return daemon.wait_ticket(number)


def test_tokens_are_shown_once_kept_hashed_and_revocable(make_daemon) -> None:
    daemon = make_daemon().start()
    secret = token(daemon, "jira")
    listed = daemon.cli_json("api-token", "list")
    assert listed == [{"name": "jira", "read_only": False, "created_at": listed[0]["created_at"],
                       "last_used_at": None}]
    # Only the hash is stored: no column of the row holds the token.
    (row,) = daemon.query("SELECT name, token_hash FROM api_tokens")
    assert row == ("jira", hashlib.sha256(secret.encode()).hexdigest())
    assert secret not in str(daemon.query("SELECT * FROM api_tokens"))
    assert daemon.cli("api-token", "create", "jira", check=False).returncode == 65

    assert call(daemon, "GET", "/api/v1/cases", token=secret)[0] == 200
    status, payload, headers = http_request(daemon, "GET", "/api/v1/cases")
    assert status == 401 and payload["error"] == "unauthorized"
    assert headers.get("www-authenticate", headers.get("WWW-Authenticate", "")).startswith("Bearer")
    assert call(daemon, "GET", "/api/v1/cases", token=secret + "x")[0] == 401
    assert call(daemon, "GET", "/api/v1/cases", token="mbt_nothing")[0] == 401
    assert http_request(daemon, "GET", "/api/v1/cases",
                        headers={"Authorization": f"Basic {secret}"})[0] == 401
    assert daemon.cli_json("api-token", "list")[0]["last_used_at"] is not None

    assert "revoked" in daemon.cli("api-token", "revoke", "jira").stdout.decode()
    assert call(daemon, "GET", "/api/v1/cases", token=secret)[0] == 401
    assert daemon.cli("api-token", "revoke", "jira", check=False).returncode == 1
    # The OpenAPI document needs no token.
    status, doc = call(daemon, "GET", "/api/v1/openapi.json")
    assert status == 200 and doc == DOC


def test_cases_are_listed_filtered_and_paged(make_daemon) -> None:
    daemon = make_daemon().start()
    reader = token(daemon, "informes", "--read-only")
    open_case(daemon)  # 1: TEN-1001, soporte-a → A, critica
    open_case(daemon, sender="maria@lafise.example", to="soporte-b@mesa.example",
              subject="TEN-2002 Reportes lentos")  # 2
    open_case(daemon, sender="luis@compensar.example", to="soporte-c@mesa.example",
              subject="TEN-1001 Consulta de facturación")  # 3

    def numbers(query: str = "") -> list[int]:
        status, body = call(daemon, "GET", f"/api/v1/cases{query}", token=reader)
        assert status == 200, body
        check(body, "CaseList")
        return [c["number"] for c in body["cases"]]

    assert numbers() == [3, 2, 1]
    assert numbers("?priority=b") == [2]
    assert numbers("?queue=critica") == [1]
    assert numbers("?tenant=ten-1001") == [3, 1]
    assert numbers("?owner=-") == [3, 2, 1]
    assert numbers("?owner=carlos@mesa.example") == []
    assert numbers("?status=abierto") == [3, 2, 1]
    assert numbers("?sla_state=a_tiempo&tenant=TEN-1001") == [3, 1]
    assert numbers("?sla_state=vencido") == []
    status, page = call(daemon, "GET", "/api/v1/cases?limit=1&offset=1", token=reader)
    assert [c["number"] for c in page["cases"]] == [2]
    assert (page["total"], page["limit"], page["offset"]) == (3, 1, 1)
    for bad in ("?sla_state=tarde", "?limit=0", "?limit=501", "?offset=-1", "?limit=x"):
        status, body = call(daemon, "GET", f"/api/v1/cases{bad}", token=reader)
        assert status == 400, (bad, body)
        check(body, "Error")

    status, case = call(daemon, "GET", "/api/v1/cases/2", token=reader)
    assert status == 200
    check(case, "Case")
    assert case["tenant_id"] == "TEN-2002" and case["priority"] == "B"
    assert case["messages"][0]["body"].startswith("Buenos días")
    assert case["sla"]["state"] == "a_tiempo" and case["sla"]["response_due_at"]
    assert case["events"][0]["kind"] == "created"
    assert case == daemon.cli_json("tickets", "show", "2") | {"sla": case["sla"]}
    status, body = call(daemon, "GET", "/api/v1/cases/999", token=reader)
    assert status == 404 and check(body, "Error")["error"] == "not found"


def test_patch_follows_the_staff_commands_rules_all_or_nothing(make_daemon, relay) -> None:
    daemon = make_daemon(relay_port=relay.port).start()
    writer, reader = token(daemon, "jira"), token(daemon, "informes", "--read-only")
    open_case(daemon)
    path = "/api/v1/cases/1"

    status, body = call(daemon, "PATCH", path, {"priority": "B"}, token=reader)
    assert status == 403 and body["error"] == "forbidden"
    status, body = call(daemon, "PATCH", path, {"priority": "Z"}, token=writer)
    assert status == 422 and body["detail"] == "prioridad desconocida; use A, B o C"
    status, body = call(daemon, "PATCH", path, {"owner": "pepe@gmail.example"}, token=writer)
    assert status == 422 and "no es de la mesa" in body["detail"]
    # One refused change refuses the request: the priority did not change either.
    status, body = call(daemon, "PATCH", path, {"priority": "B", "status": "listo"},
                        token=writer)
    assert status == 422 and body["detail"].startswith("estado desconocido")
    assert call(daemon, "GET", path, token=reader)[1]["priority"] == "A"
    for bad in ({}, {"color": "rojo"}, {"priority": 2}):
        assert call(daemon, "PATCH", path, bad, token=writer)[0] == 400, bad
    assert http_request(daemon, "PATCH", path, raw=b"{no json", token=writer)[0] == 400

    status, body = call(daemon, "PATCH", path, {"priority": "B", "owner": "Carlos@Mesa.Example"},
                        token=writer)
    assert status == 200, body
    check(body, "CasePatchResult")
    assert body["changes"] == ["prioridad cambiada de A a B", "propietario del caso: "
                               "carlos@mesa.example"]
    case = body["case"]
    assert (case["priority"], case["severity"], case["owner"]) == ("B", "MEDIA", CARLOS)
    # The staff command's notice: the new owner is told, naming the token.
    notice = wait_mail(relay, CARLOS, "le asignó el caso 1")
    assert "jira (API)" in notice.message.get_body(("plain",)).get_content()
    assert "[Caso 1]" in notice.message["Subject"]
    # Each change on the case's events, with the token's name.
    by = {(e["kind"], e["data"].get("by")) for e in case["events"]}
    assert {("priority", "api:jira"), ("owner", "api:jira"), ("api_change", "api:jira")} <= by

    status, body = call(daemon, "PATCH", path, {"status": "esperando_cliente"}, token=writer)
    assert status == 200 and body["case"]["sla_state"] == "en_pausa"
    assert body["case"]["waiting_since"] is not None
    status, body = call(daemon, "PATCH", path, {"status": "resuelto"}, token=writer)
    assert status == 200 and "se pidió al cliente que confirme" in body["changes"][0]
    assert body["case"]["waiting_since"] is None and body["case"]["sla_state"] == "a_tiempo"
    request = wait_mail(relay, ANA, "confirm")
    assert "[Caso 1]" in request.message["Subject"]
    assert [e["data"]["to"] for e in body["case"]["events"] if e["kind"] == "status"] == [
        "esperando_cliente", "resuelto"]


def test_a_reply_reaches_the_customer_as_a_staff_answer(make_daemon, relay) -> None:
    daemon = make_daemon(relay_port=relay.port).start()
    writer, reader = token(daemon, "crm"), token(daemon, "informes", "--read-only")
    open_case(daemon)
    path = "/api/v1/cases/1/replies"
    text = "Hola Ana: ya encontramos la causa y estamos aplicando la corrección."

    assert call(daemon, "POST", path, {"body": text}, token=reader)[0] == 403
    assert call(daemon, "POST", path, {"body": "  "}, token=writer)[0] == 400
    assert call(daemon, "POST", path, {"body": text, "cc": "x"}, token=writer)[0] == 400
    status, body = call(daemon, "POST", path, {"body": text, "author": "pepe@gmail.example"},
                        token=writer)
    assert status == 422 and "no es de la mesa" in body["detail"]
    assert call(daemon, "POST", "/api/v1/cases/9/replies", {"body": text}, token=writer)[0] == 404

    status, body = call(daemon, "POST", path, {"body": text, "author": CARLOS,
                                               "author_name": "Carlos Ruiz"}, token=writer)
    assert status == 201, body
    check(body, "ReplyResult")
    assert body["queued"] and body["message"]["sender"] == CARLOS
    mail = wait_mail(relay, ANA, "ya encontramos la causa")
    assert mail.message["Message-ID"] == body["message_id"]
    assert mail.message["Subject"] == "[Caso 1] TEN-1001 Caída del servicio de correo"
    assert "<soporte+1@mesa.example>" in mail.message["Reply-To"]
    assert mail.message["Auto-Submitted"] == "no"  # a person's words, as a relayed answer
    content = mail.message.get_body(("plain",)).get_content()
    assert "Carlos Ruiz" in content and "Responder a todos" in content

    case = call(daemon, "GET", "/api/v1/cases/1", token=reader)[1]
    staff = [m for m in case["messages"] if m["author_role"] == "staff"]
    assert [(m["sender"], m["body"], m["message_id"]) for m in staff] == [
        (CARLOS, text, body["message_id"])]
    assert case["owner"] == CARLOS and case["sla"]["state"] == "cumplido"
    assert case["sla"]["first_response_at"] == body["message"]["created_at"]
    reply = [e for e in case["events"] if e["kind"] == "api_reply"]
    assert reply[0]["data"] | {"message_id": None} == {
        "by": CARLOS, "token": "crm", "via": "api", "message_id": None, "sent": True}

    # The customer's answer to that mail (its Message-ID only) joins the case.
    answer = opening_mail(subject="RE: avance", body="Gracias, quedo atenta.",
                          In_Reply_To=body["message_id"])
    daemon.send(answer)
    daemon.settle()
    assert daemon.wait_ticket(1)["messages"][-1]["body"].startswith("Gracias, quedo atenta")

    # Without an author the token answers: recorded as api:NAME, nobody owns it by that.
    open_case(daemon, subject="TEN-1001 Otro asunto distinto")
    status, body = call(daemon, "POST", "/api/v1/cases/2/replies", {"body": "Recibido."},
                        token=writer)
    assert status == 201 and body["message"]["sender"] == "api:crm"
    assert call(daemon, "GET", "/api/v1/cases/2", token=reader)[1]["owner"] is None


def test_quarantine_is_listed_and_replayed(make_daemon) -> None:
    daemon = make_daemon()
    inbound_id = quarantine_one(daemon)
    daemon.start()
    writer, reader = token(daemon, "ops"), token(daemon, "informes", "--read-only")
    status, body = call(daemon, "GET", "/api/v1/quarantine", token=reader)
    assert status == 200
    check(body, "QuarantineList")
    assert [(e["id"], e["stage"], e["error"]) for e in body["quarantine"]] == [
        (inbound_id, "explode", "RuntimeError: boom in a stage")]
    replay = f"/api/v1/quarantine/{inbound_id}/replay"
    assert call(daemon, "POST", replay, token=reader)[0] == 403
    status, body = call(daemon, "POST", replay, token=writer)
    assert status == 200, body
    check(body, "ReplayResult")
    assert body == {"id": inbound_id, "outcome": "ticket", "case": 1}
    assert call(daemon, "GET", "/api/v1/quarantine", token=reader)[1] == {"quarantine": []}
    assert call(daemon, "POST", replay, token=writer)[0] == 404
    assert daemon.wait_ticket(1)["subject"] == "TEN-1001 Falla que explota"


def test_the_openapi_document_lists_exactly_the_routes() -> None:
    routes: set[tuple[str, str]] = set()
    for route in Api(DeskTools(db=None, settings=None, rules=None, on_outbox=None,  # type: ignore[arg-type]
                               replay=None)).routes():
        path = re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path)  # type: ignore[attr-defined]
        routes |= {(path, m.lower()) for m in route.methods - {"HEAD"}}  # type: ignore[attr-defined]
    documented = {(path, method) for path, ops in DOC["paths"].items() for method in ops}
    assert routes == documented
    for path, ops in DOC["paths"].items():
        for method, op in ops.items():
            names = set(re.findall(r"\{(\w+)\}", path))
            assert {p["name"] for p in op.get("parameters", []) if p["in"] == "path"} == names
            assert any(code.startswith("2") for code in op["responses"]), (path, method)
            for answer in op["responses"].values():
                schema = answer.get("content", {}).get("application/json", {}).get("schema", {})
                ref = schema.get("$ref", "")
                assert not ref or ref.rpartition("/")[2] in DOC["components"]["schemas"]
