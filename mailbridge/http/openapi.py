"""The API's OpenAPI 3.1 document, served at /api/v1/openapi.json.

Written by hand beside the routes (tests/http/test_api.py checks that both list the same
paths and methods, and that real answers match these schemas).
"""

from __future__ import annotations

from functools import cache
from typing import Any, get_args

from mailbridge.pipeline.changes import SETTABLE_STATUSES
from mailbridge.service_levels.clocks import ClockStatus
from mailbridge.tickets.models import OPEN_STATUSES, STATUS_CLOSED

SLA_STATES: tuple[str, ...] = get_args(ClockStatus)
STATUSES = sorted({*OPEN_STATUSES, STATUS_CLOSED})

_S: dict[str, Any] = {"type": "string"}
_S_NULL: dict[str, Any] = {"type": ["string", "null"]}
_TIME: dict[str, Any] = {"type": "string", "format": "date-time"}
_TIME_NULL: dict[str, Any] = {"type": ["string", "null"], "format": "date-time"}
_INT: dict[str, Any] = {"type": "integer"}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _obj(required: list[str], **properties: Any) -> dict[str, Any]:
    return {"type": "object", "required": required, "properties": properties}


def _array(items: Any) -> dict[str, Any]:
    return {"type": "array", "items": items}


_SUMMARY = {
    "number": _INT,
    "tenant_id": _S_NULL,
    "priority": {"type": "string", "enum": ["A", "B", "C"]},
    "severity": _S,
    "status": {"type": "string", "enum": STATUSES},
    "subject": _S,
    "sender": _S,
    "created_at": _TIME,
    "updated_at": _TIME,
    "queue": _S_NULL,
    "owner": _S_NULL,
    "sla_state": {"type": ["string", "null"], "enum": [*SLA_STATES, None]},
}
_MESSAGE = _obj(
    ["direction", "author_role", "sender", "subject", "message_id", "created_at", "body"],
    direction={"type": "string", "enum": ["in", "out"]},
    author_role=_S, sender=_S, subject=_S, message_id=_S_NULL, created_at=_TIME,
    body={"type": "string", "description": "the new text only: quoted history stripped, "
          "passwords and keys redacted"},
)
_CASE_EXTRA = {
    "sender_name": _S_NULL,
    "waiting_since": _TIME_NULL,
    "cc": _array(_S),
    "cc_held": _array(_S),
    "fields": {"type": "object"},
    "fields_raw": {"type": "object"},
    "missing_fields": _array(_S),
    "attachments": _array(_S),
    "attachment_details": _array(_obj(["filename", "content_type", "size", "sha256"],
                                      filename=_S, content_type=_S, size=_INT, sha256=_S)),
    "ack_due_at": _TIME_NULL,
    "acked_at": _TIME_NULL,
    "sla": _obj(["response_due_at", "state", "first_response_at"],
                response_started_at=_TIME_NULL, response_due_at=_TIME_NULL,
                at_risk_at=_TIME_NULL, first_response_at=_TIME_NULL,
                state={"type": ["string", "null"], "enum": [*SLA_STATES, None]},
                state_label=_S_NULL, breached_at=_TIME_NULL,
                escalations=_array({"type": "object"}),
                closing={"type": ["object", "null"]}),
    "messages": _array(_ref("Message")),
    "outbound": _array(_obj(["kind", "to", "subject", "message_id", "state", "attempts"],
                            kind=_S, to=_array(_S), subject=_S, message_id=_S, state=_S,
                            attempts=_INT, sent_at=_TIME_NULL)),
    "events": _array(_obj(["kind", "at", "data"], kind=_S, at=_TIME,
                          data={"type": "object"})),
    "vendor_references": _array({"type": "object"}),
}
_QUARANTINED = _obj(
    ["id", "received_at", "channel", "stage", "error"],
    id=_INT, received_at=_TIME, channel=_S, source=_S_NULL, mail_from=_S_NULL,
    rcpt_tos=_array(_S), size={"type": ["integer", "null"]}, message_id=_S_NULL,
    stage=_S_NULL, attempts=_INT, error=_S,
)

SCHEMAS: dict[str, Any] = {
    "Error": _obj(["error"], error=_S, detail=_S),
    "CaseSummary": _obj(list(_SUMMARY), **_SUMMARY),
    "Message": _MESSAGE,
    "Case": _obj([*_SUMMARY, *_CASE_EXTRA], **_SUMMARY, **_CASE_EXTRA),
    "CaseList": _obj(["cases", "total", "limit", "offset"], cases=_array(_ref("CaseSummary")),
                     total=_INT, limit=_INT, offset=_INT),
    "CasePatch": {
        "type": "object", "minProperties": 1, "additionalProperties": False,
        "properties": {
            "status": {"type": "string", "enum": sorted(SETTABLE_STATUSES),
                       "description": "as «#estado»: resuelto asks the customer to confirm, "
                       "esperando_cliente pauses the response clock"},
            "priority": {"type": "string", "enum": ["A", "B", "C"],
                         "description": "as «#prioridad»"},
            "owner": {"type": "string", "format": "email",
                      "description": "as «#asignar»: a staff address; told by mail"},
        },
    },
    "CasePatchResult": _obj(["case", "changes"], case=_ref("Case"), changes=_array(_S)),
    "Reply": {
        "type": "object", "required": ["body"], "additionalProperties": False,
        "properties": {
            "body": {"type": "string", "minLength": 1,
                     "description": "the answer; sent to the customer as a staff "
                     "reply-all is relayed"},
            "author": {"type": "string", "format": "email",
                       "description": "the staff member answering (becomes the owner of "
                       "an unowned case); default: the token"},
            "author_name": {"type": "string", "description": "signs the mail"},
        },
    },
    "ReplyResult": _obj(["case", "message", "message_id", "queued"], case=_INT,
                        message=_ref("Message"), message_id=_S_NULL,
                        queued={"type": "boolean"}),
    "QuarantinedMail": _QUARANTINED,
    "QuarantineList": _obj(["quarantine"], quarantine=_array(_ref("QuarantinedMail"))),
    "ReplayResult": _obj(["id", "outcome", "case"], id=_INT, outcome=_S,
                         case={"type": ["integer", "null"]}),
}


def _json(schema: str) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": _ref(schema)}}}


def _answer(description: str, schema: str) -> dict[str, Any]:
    return {"description": description, **_json(schema)}


_ERRORS = {
    "401": _answer("no token, or an unknown one", "Error"),
}
_WRITE_ERRORS = {
    **_ERRORS,
    "400": _answer("the request is malformed", "Error"),
    "403": _answer("the token is read-only", "Error"),
    "404": _answer("no such case or mail", "Error"),
}
_NUMBER = {"name": "number", "in": "path", "required": True, "schema": _INT,
           "description": "the case number ([Caso N])"}


def _query(name: str, description: str, schema: Any = _S) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema,
            "description": description}


@cache
def openapi_document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "mailbridge API", "version": "1",
            "description": "Cases and quarantine of the support desk. Authenticate with "
            "`Authorization: Bearer <token>` (`mailbridge api-token create NAME`). Every "
            "write is recorded on the case's events with the token's name.",
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": SCHEMAS,
        },
        "security": [{"bearer": []}],
        "paths": {
            "/api/v1/openapi.json": {"get": {
                "summary": "This document", "operationId": "openapi", "security": [],
                "responses": {"200": {"description": "the OpenAPI document",
                                      "content": {"application/json": {
                                          "schema": {"type": "object"}}}}},
            }},
            "/api/v1/cases": {"get": {
                "summary": "Cases, newest first", "operationId": "listCases",
                "parameters": [
                    _query("status", "e.g. abierto, esperando_cliente",
                           {"type": "string", "enum": STATUSES}),
                    _query("priority", "A, B or C", {"type": "string",
                                                    "enum": ["A", "B", "C", "a", "b", "c"]}),
                    _query("queue", "the queue's key in rules.yaml"),
                    _query("tenant", "tenant id, e.g. TEN-1001"),
                    _query("owner", "a staff address; '-' for cases nobody owns"),
                    _query("sla_state", "the response clock's state",
                           {"type": "string", "enum": list(SLA_STATES)}),
                    _query("limit", "at most this many (1-500, default 50)",
                           {"type": "integer", "minimum": 1, "maximum": 500}),
                    _query("offset", "skip this many", {"type": "integer", "minimum": 0}),
                ],
                "responses": {"200": _answer("a page of cases and the total", "CaseList"),
                              "400": _answer("a filter is malformed", "Error"), **_ERRORS},
            }},
            "/api/v1/cases/{number}": {
                "get": {
                    "summary": "One case: fields, messages, SLA clock, vendor references, "
                    "events", "operationId": "getCase", "parameters": [_NUMBER],
                    "responses": {"200": _answer("the case", "Case"),
                                  "404": _answer("no such case", "Error"), **_ERRORS},
                },
                "patch": {
                    "summary": "Change status, priority and/or owner (the staff commands' "
                    "rules; all or nothing)", "operationId": "patchCase",
                    "parameters": [_NUMBER],
                    "requestBody": {"required": True, **_json("CasePatch")},
                    "responses": {"200": _answer("the case after the change", "CasePatchResult"),
                                  "422": _answer("refused by the rules (the detail says why, "
                                                 "in Spanish)", "Error"), **_WRITE_ERRORS},
                },
            },
            "/api/v1/cases/{number}/replies": {"post": {
                "summary": "A staff answer, sent to the customer as a staff reply-all",
                "operationId": "postReply", "parameters": [_NUMBER],
                "requestBody": {"required": True, **_json("Reply")},
                "responses": {"201": _answer("recorded and queued", "ReplyResult"),
                              "413": _answer("the answer is too long", "Error"),
                              "422": _answer("the author is not of the desk", "Error"),
                              **_WRITE_ERRORS},
            }},
            "/api/v1/quarantine": {"get": {
                "summary": "Mail whose processing failed, oldest first",
                "operationId": "listQuarantine",
                "parameters": [_query("limit", "at most this many (1-500, default 100)",
                                      {"type": "integer", "minimum": 1, "maximum": 500})],
                "responses": {"200": _answer("the quarantined mails", "QuarantineList"),
                              **_ERRORS},
            }},
            "/api/v1/quarantine/{id}/replay": {"post": {
                "summary": "Run a quarantined mail through the pipeline again",
                "operationId": "replayQuarantined",
                "parameters": [{"name": "id", "in": "path", "required": True, "schema": _INT}],
                "responses": {"200": _answer("what the pipeline made of it", "ReplayResult"),
                              **_WRITE_ERRORS},
            }},
        },
    }
