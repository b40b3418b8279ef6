"""Webhooks from the real daemon to real receivers on loopback (issue 18.3): written in the
transaction that caused them, signed, retried with backoff under the same id, one
failing target never holding up another, a dead one marked failed in status and metrics.
"""

from __future__ import annotations

import itertools
import json
import re
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest

from tests.support.daemon import Daemon, http_request, opening_mail
from tests.support.faults import quarantine_one
from tests.support.webhooks import Delivery, WebhookReceiver

SECRETS = {"flaky": b"s3creto-flaky", "down": b"s3creto-down", "ok": b"s3creto-ok"}


@pytest.fixture
def receivers() -> Iterator[dict[str, WebhookReceiver]]:
    found = {"flaky": WebhookReceiver(fail_first=2).start(),
             "down": WebhookReceiver(fail_always=True).start(),
             "ok": WebhookReceiver().start()}
    yield found
    for receiver in found.values():
        receiver.stop()


def hooked_daemon(make_daemon, receivers, tmp_path, **env: str) -> Daemon:  # type: ignore[no-untyped-def]
    secret_file = tmp_path / "down.secret"
    secret_file.write_bytes(SECRETS["down"] + b"\n")
    targets = [
        {"name": "flaky", "url": receivers["flaky"].url, "secret_env": "HOOK_FLAKY",
         "events": ["case.created", "case.updated", "case.closed"]},
        {"name": "down", "url": receivers["down"].url, "secret_file": str(secret_file),
         "events": "*"},
        {"name": "ok", "url": receivers["ok"].url, "secret_env": "HOOK_OK"},
    ]
    daemon = make_daemon(webhooks=json.dumps(targets), webhook_retry_base="0.2",
                         webhook_retry_max="0.5", **env)
    daemon.env.update(HOOK_FLAKY=SECRETS["flaky"].decode(), HOOK_OK=SECRETS["ok"].decode())
    return daemon


def by_event(deliveries: list[Delivery], event: str) -> list[Delivery]:
    return [d for d in deliveries if d.json["event"] == event]


def test_signed_retried_under_one_id_and_one_dead_target_holds_up_nobody(
        make_daemon, receivers, tmp_path) -> None:  # type: ignore[no-untyped-def]
    daemon = hooked_daemon(make_daemon, receivers, tmp_path, webhook_retry_for="4")
    inbound_id = quarantine_one(daemon)  # mail.quarantined, written before the daemon starts
    daemon.start()
    daemon.send(opening_mail())
    daemon.settle()
    ok, flaky, down = receivers["ok"], receivers["flaky"], receivers["down"]

    got = ok.wait_for(lambda d: {"case.created", "mail.quarantined"} <= {x.json["event"] for x in d})
    created = by_event(got, "case.created")[0]
    body = created.json
    assert uuid.UUID(body["id"]) and body["event"] == "case.created"
    assert datetime.fromisoformat(body["occurred_at"]).tzinfo is not None
    assert body["case"]["number"] == 1 and body["case"]["tenant_id"] == "TEN-1001"
    assert body["case"]["sla_state"] == "a_tiempo"
    assert created.signed_by(SECRETS["ok"]) and not created.signed_by(SECRETS["flaky"])
    assert created.headers["x-mailbridge-event"] == "case.created"
    assert created.headers["x-mailbridge-delivery"] == body["id"]
    quarantined = by_event(got, "mail.quarantined")[0].json
    assert quarantined["case"] is None
    assert quarantined["data"]["inbound_id"] == inbound_id
    assert quarantined["data"]["stage"] == "explode"
    assert quarantined["data"]["error"] == "RuntimeError: boom in a stage"

    # flaky answered 500 twice: the third try is taken, with the same id and body, each
    # signed; the backoff grows between tries.
    flaky.wait_for(lambda d: by_event(d, "case.created"))
    tries = [d for d in flaky.deliveries if d.json["id"] == body["id"]]
    assert [d.answered for d in tries] == [500, 500, 200]
    assert {d.body for d in tries} == {created.body}
    assert all(d.signed_by(SECRETS["flaky"]) for d in tries)
    gaps = [round(b.at - a.at, 3) for a, b in itertools.pairwise(tries)]
    print(f"flaky target: tries at +0, +{gaps[0]} s, +{sum(gaps):.3f} s")
    assert all(g >= 0.15 for g in gaps), gaps  # never sooner than the base delay (0.2 s -20%)
    # Not subscribed: flaky never got mail.quarantined.
    assert not [d for d in flaky.deliveries if d.json["event"] == "mail.quarantined"]

    # Past webhook_retry_for, its deliveries fail for good: status and metrics say so.
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        hooks = daemon.cli_json("status")["webhooks"]
        if hooks["by_target"].get("down", {}).get("pending", 1) == 0:
            break
        time.sleep(0.2)
    assert hooks["by_target"]["down"] == {"pending": 0, "sent": 0, "failed": 2}, hooks
    assert hooks["by_target"]["ok"] == {"pending": 0, "sent": 2, "failed": 0}
    assert hooks["by_target"]["flaky"]["sent"] == 1
    failures = {(f["target"], f["event"], f["last_status"]) for f in hooks["recent_failures"]}
    assert failures == {("down", "case.created", 500), ("down", "mail.quarantined", 500)}
    assert all(f["error"].startswith("HTTP 500") and f["attempts"] >= 2
               for f in hooks["recent_failures"])
    text = daemon.cli("status").stdout.decode()
    assert re.search(r"WEBHOOK FAILED: down case\.created \S+ \(case 1\) after \d+ attempts: "
                     r"HTTP 500", text), text
    _status, metrics, _ = http_request(daemon, "GET", "/metrics")
    metrics = metrics.decode()
    assert 'mailbridge_webhooks_failed{target="down"} 2.0' in metrics
    assert re.search(r'mailbridge_webhook_deliveries_total\{outcome="failed",target="down"\} 2\.0',
                     metrics)
    assert re.search(r'mailbridge_webhook_deliveries_total\{outcome="retried",target="flaky"\} 2\.0',
                     metrics)
    # The dead target kept failing until it gave up (4 s); ok had it long before, at once.
    down_tries = [d for d in down.deliveries if d.json["id"] == body["id"]]
    assert len(down_tries) >= 2 and all(d.signed_by(SECRETS["down"]) for d in down_tries)
    assert created.at < down_tries[-1].at
    assert daemon.query("SELECT attempts FROM webhook_deliveries WHERE target = 'ok'") == [
        (1,), (1,)]
    print(f"down target: {len(down_tries)} tries of case.created over "
          f"{down_tries[-1].at - down_tries[0].at:.2f} s; ok had it "
          f"{down_tries[-1].at - created.at:.2f} s before down gave up")
    # Each event reached ok exactly once.
    ids = [d.json["id"] for d in ok.accepted()]
    assert len(ids) == len(set(ids)) == 2


def test_every_event_comes_from_the_transaction_that_caused_it(
        make_daemon, receivers, tmp_path) -> None:  # type: ignore[no-untyped-def]
    daemon = hooked_daemon(make_daemon, receivers, tmp_path, sla_sweep_interval="0").start()
    ok = receivers["ok"]
    api = daemon.cli("api-token", "create", "jira").stdout.decode().strip()
    daemon.send(opening_mail())
    daemon.settle()
    daemon.wait_ticket(1)
    answer = opening_mail(subject="RE: [Caso 1] TEN-1001 Caída del servicio de correo",
                          body="Les envío otro registro del servidor.")
    daemon.send(answer)
    daemon.settle()
    # A refused PATCH rolls back whole: its priority change never becomes an event.
    assert http_request(daemon, "PATCH", "/api/v1/cases/1", {"priority": "B", "status": "x"},
                        token=api)[0] == 422
    assert http_request(daemon, "PATCH", "/api/v1/cases/1", {"priority": "B"}, token=api)[0] == 200
    # The clock, moved by the scheduler's own sweep: at risk, then broken.
    sla = daemon.wait_ticket(1)["sla"]  # the clock after the priority changed
    at_risk, due = (datetime.fromisoformat(sla[k]) for k in ("at_risk_at", "response_due_at"))
    daemon.cli("sweep", "--now", (at_risk + timedelta(minutes=1)).isoformat())
    daemon.cli("sweep", "--now", (due + timedelta(minutes=1)).isoformat())
    assert http_request(daemon, "PATCH", "/api/v1/cases/1", {"status": "cerrado"},
                        token=api)[0] == 200

    wanted = ["case.created", "case.message", "case.updated", "case.sla_at_risk",
              "case.sla_breached", "case.updated", "case.closed"]
    got = ok.wait_for(lambda d: len(d) >= len(wanted))
    time.sleep(1.0)  # nothing more comes (a refused PATCH left no event behind)
    assert ok.events() == wanted
    bodies = [d.json for d in ok.accepted()]
    assert all(b["case"]["number"] == 1 for b in bodies)
    assert len({b["id"] for b in bodies}) == len(bodies)
    message, priority, risk, breach, status, closed = (b["data"] for b in bodies[1:])
    assert message == {"sender": "ana@compensar.example", "role": "customer"}
    assert priority == {"by": "api:jira", "changes": {"priority": {"from": "A", "to": "B"}}}
    assert risk["due_at"] == breach["due_at"] == due.isoformat()
    assert status["changes"] == {"status": {"from": "abierto", "to": "cerrado"}}
    assert closed == {"by": "api:jira", "reason": "staff"}
    # flaky takes each event at its third try, and only those it subscribed to.
    flaky = receivers["flaky"].wait_for(lambda d: len(d) >= 4)
    assert [d.json["event"] for d in flaky] == [
        "case.created", "case.updated", "case.updated", "case.closed"]
    assert all(d.signed_by(SECRETS["ok"]) for d in got)


def test_bad_webhook_settings_name_their_place(make_daemon, tmp_path) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "hooks.yaml"
    bad.write_text("webhooks:\n  - name: crm\n    url: http://crm.example/hook\n"
                   "    secret: abc\n    events: [case.created, case.borrado]\n")
    daemon = make_daemon(webhooks_file=str(bad))
    result = daemon.cli("check-config", check=False)
    err = result.stderr.decode()
    assert result.returncode == 78
    assert f"{bad}:3: webhooks.0.url: an http:// url is only allowed on loopback" in err
    assert f"{bad}:4: webhooks.0.secret: Extra inputs are not permitted" in err
    assert "unknown event(s) case.borrado" in err
    proc = daemon.cli("run", check=False)
    assert proc.returncode == 78 and b"webhooks.0.url" in proc.stderr
    bad.write_text(json.dumps([{"name": "crm", "url": "https://crm.example/hook",
                                "secret_env": "NOT_SET_ANYWHERE"}]))
    result = daemon.cli("check-config", check=False)
    assert result.returncode == 78
    assert "environment variable NOT_SET_ANYWHERE is not set" in result.stderr.decode()
