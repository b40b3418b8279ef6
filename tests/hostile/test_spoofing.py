"""Spoofing: a mail that claims a registered contact's (or an agent's) address but fails
DMARC/DKIM is an unknown sender under `sender_auth` (mailbridge/auth.py)."""

from __future__ import annotations

import base64
import email
import email.policy
import subprocess
from pathlib import Path

import pytest

from mailbridge.auth import (
    aligned,
    authenticate,
    parse_authentication_results,
)
from tests.hostile.helpers import report
from tests.pipeline.helpers import case, deliver, outbox_raw
from tests.support.daemon import COMPLETE_BODY

MX = "mx.mesa.example"
RESULTS: list[dict[str, str]] = []


def mail(*, authres: list[str] = (), sender: str = "ana@compensar.example",
         subject: str = "TEN-1001 Caída del servicio de correo", body: str = COMPLETE_BODY,
         message_id: str = "<spoof-1@compensar.example>", extra: str = "") -> bytes:
    head = "".join(f"Authentication-Results: {a}\r\n" for a in authres)
    return (f"{head}From: Ana Gómez <{sender}>\r\nTo: soporte-a@mesa.example\r\n"
            f"Subject: {subject}\r\nMessage-ID: {message_id}\r\n{extra}"
            f"Content-Type: text/plain; charset=utf-8\r\n\r\n{body}").encode()


def verdict(raw: bytes, policy: str = "authres", sender: str = "ana@compensar.example"):  # type: ignore[no-untyped-def]
    message = email.message_from_bytes(raw, policy=email.policy.compat32)
    return authenticate(policy=policy, raw=raw, message=message, sender=sender,
                        trusted_authserv_ids=MX)


def test_authentication_results_parsing() -> None:
    authserv, results = parse_authentication_results(
        'mx.google.com (Google); dkim=pass header.i=@compensar.example header.s=s1 '
        'header.b="AbC;d"; spf=pass (google.com: domain of ana@compensar.example designates '
        "192.0.2.1 as permitted sender) smtp.mailfrom=ana@compensar.example; "
        "dmarc=pass (p=REJECT sp=REJECT dis=NONE) header.from=compensar.example")
    assert authserv == "mx.google.com"
    assert [(r.method, r.result) for r in results] == [("dkim", "pass"), ("spf", "pass"),
                                                       ("dmarc", "pass")]
    assert results[2].properties["header.from"] == "compensar.example"
    assert parse_authentication_results("mx.mesa.example 1; none") == ("mx.mesa.example", [])
    assert aligned("compensar.example", "mail.compensar.example")
    assert not aligned("compensar.example.attacker.example", "compensar.example")
    assert not aligned("", "compensar.example")


@pytest.mark.parametrize(("name", "authres", "passed"), [
    ("dmarc pass", [f"{MX}; dmarc=pass header.from=compensar.example"], True),
    ("dmarc fail", [f"{MX}; dkim=fail; spf=softfail; dmarc=fail header.from=compensar.example"],
     False),
    ("dmarc fail although dkim passes for another domain",
     [f"{MX}; dkim=pass header.d=attacker.example; dmarc=fail header.from=compensar.example"],
     False),
    ("aligned dkim pass, no dmarc", [f"{MX}; dkim=pass header.d=compensar.example"], True),
    ("unaligned dkim pass, no dmarc", [f"{MX}; dkim=pass header.d=attacker.example"], False),
    ("aligned spf pass", [f"{MX}; spf=pass smtp.mailfrom=bounces@compensar.example"], True),
    ("smtp auth", [f"{MX}; auth=pass smtp.auth=ana@compensar.example"], True),
    ("none", [f"{MX}; none"], False),
    ("no header at all", [], False),
    ("pass from an untrusted authserv-id", ["mx.attacker.example; dmarc=pass"], False),
    ("forged pass below the upstream's fail",
     [f"{MX}; dmarc=fail header.from=compensar.example",
      f"{MX}; dmarc=pass header.from=compensar.example"], False),
    ("forged pass with a comment trick",
     [f"{MX} (dmarc=pass); dmarc=fail header.from=compensar.example"], False),
])
def test_authres_verdicts(name: str, authres: list[str], passed: bool) -> None:
    result = verdict(mail(authres=authres))
    assert result.passed is passed, (name, result)
    RESULTS.append({"case": f"authres: {name}", "verdict": "pass" if passed else "fail",
                    "detail": result.detail})


def _settings(settings, **values):  # type: ignore[no-untyped-def]
    return settings.model_copy(update=values)


def test_forged_contact_is_an_unknown_sender(db, settings, rules) -> None:
    auth = _settings(settings, sender_auth="authres", trusted_authserv_id=MX)
    genuine = deliver(db, auth, rules, mail(
        authres=[f"{MX}; dkim=pass header.d=compensar.example; "
                 "dmarc=pass header.from=compensar.example"]))
    assert genuine.outcome == "ticket"
    forged = deliver(db, auth, rules, mail(
        authres=[f"{MX}; spf=fail smtp.mailfrom=ana@compensar.example; "
                 "dmarc=fail header.from=compensar.example"],
        subject="TEN-1001 Cambien el correo de contacto", message_id="<spoof-2@attacker.example>"))
    assert forged.outcome == "refused:unauthenticated-sender" and forged.ticket_number is None
    unsigned = deliver(db, auth, rules, mail(subject="TEN-1001 Sin resultados",
                                             message_id="<spoof-3@attacker.example>"))
    assert unsigned.outcome == "refused:unauthenticated-sender"
    # One answer in all (the genuine ack): nothing goes to a forged address.
    assert len(outbox_raw(db)) == 1
    # The same mails with sender_auth off: believed, as before.
    off = deliver(db, settings, rules, mail(subject="TEN-1001 Sin política",
                                            message_id="<spoof-4@attacker.example>"))
    assert off.outcome == "ticket"
    RESULTS.append({"case": "pipeline: forged contact", "verdict": forged.outcome,
                    "detail": "no case, no answer, mail kept"})


def test_forged_agent_commands_count_for_nothing(db, settings, rules) -> None:
    auth = _settings(settings, sender_auth="authres", trusted_authserv_id=MX)
    opened = deliver(db, auth, rules, mail(authres=[f"{MX}; dmarc=pass"]))
    number = opened.ticket_number
    forged_staff = (
        f"Authentication-Results: {MX}; dmarc=fail header.from=mesa.example\r\n"
        f"From: Agente <agente@mesa.example>\r\nTo: soporte-a@mesa.example\r\n"
        f"Subject: RE: [Caso {number}] TEN-1001 Caída del servicio de correo\r\n"
        "Message-ID: <spoof-staff@attacker.example>\r\n\r\n#estado cerrado\r\n"
        "#prioridad C\r\nCerramos el caso.\r\n").encode()
    deliver(db, auth, rules, forged_staff, mail_from="agente@mesa.example")
    ticket = case(db, number)
    assert ticket["status"] != "cerrado" and ticket["priority"] == "A"
    assert ticket["messages"][-1]["author_role"] == "external"
    RESULTS.append({"case": "pipeline: forged agent with #estado cerrado", "verdict": "external",
                    "detail": f"case stays {ticket['status']}, priority {ticket['priority']}"})


# --- DKIM verified here -------------------------------------------------------------------


@pytest.fixture(scope="module")
def dkim_key(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, bytes]:
    pytest.importorskip("dkim")
    directory = tmp_path_factory.mktemp("dkim")
    private = directory / "key.pem"
    subprocess.run(["openssl", "genrsa", "-out", str(private), "2048"], check=True,
                   capture_output=True)
    public_der = subprocess.run(["openssl", "rsa", "-in", str(private), "-pubout", "-outform",
                                 "DER"], check=True, capture_output=True).stdout
    return private.read_bytes(), base64.b64encode(public_der)


def test_dkim_verified_here(db, settings, rules, dkim_key, monkeypatch) -> None:
    import dkim

    import mailbridge.auth

    private, public = dkim_key
    records = {b"s1._domainkey.compensar.example.": b"v=DKIM1; k=rsa; p=" + public,
               b"s1._domainkey.attacker.example.": b"v=DKIM1; k=rsa; p=" + public}

    def dns_txt(name: bytes | str, timeout: float = 5) -> bytes | None:
        key = name if isinstance(name, bytes) else name.encode()
        return records.get(key if key.endswith(b".") else key + b".")

    monkeypatch.setattr(mailbridge.auth, "DKIM_DNSFUNC", dns_txt)

    def signed(domain: str, message_id: str, tamper: bool = False) -> bytes:
        raw = mail(subject=f"TEN-1001 Firmado por {domain}", message_id=message_id)
        signature = dkim.sign(raw, b"s1", domain.encode(), private,
                              include_headers=[b"from", b"to", b"subject", b"message-id"])
        out = signature + raw
        return out.replace(b"8:15", b"9:15") if tamper else out

    cases = {
        "signed by the From domain": (signed("compensar.example", "<d1@compensar.example>"), True),
        "body changed after signing": (signed("compensar.example", "<d2@compensar.example>",
                                              tamper=True), False),
        "signed by another domain": (signed("attacker.example", "<d3@attacker.example>"), False),
        "not signed": (mail(message_id="<d4@attacker.example>"), False),
    }
    auth = _settings(settings, sender_auth="dkim")
    for name, (raw, passed) in cases.items():
        result = mailbridge.auth.authenticate(
            policy="dkim", raw=raw, message=email.message_from_bytes(raw),
            sender="ana@compensar.example", dnsfunc=dns_txt)
        assert result.passed is passed, (name, result)
        outcome = deliver(db, auth, rules, raw).outcome
        assert (outcome == "ticket") is passed, (name, outcome)
        RESULTS.append({"case": f"dkim: {name}", "verdict": outcome, "detail": result.detail})


def test_end_to_end_over_smtp(make_daemon, sink) -> None:
    daemon = make_daemon(relay_port=sink.port, sender_auth="authres", trusted_authserv_id=MX)
    daemon.start()
    with daemon.smtp() as client:
        client.sendmail("ana@compensar.example", ["soporte-a@mesa.example"], mail(
            authres=[f"{MX}; dmarc=pass header.from=compensar.example"],
            message_id="<e2e-ok@compensar.example>"))
        client.sendmail("ana@compensar.example", ["soporte-a@mesa.example"], mail(
            authres=[f"{MX}; dmarc=fail header.from=compensar.example"],
            subject="TEN-1001 Urgente: cambien la cuenta", message_id="<e2e-bad@attacker.example>"))
    daemon.settle()
    assert daemon.outcomes() == ["ticket", "refused:unauthenticated-sender"]
    (ack,) = sink.received
    assert ack.message["In-Reply-To"] == "<e2e-ok@compensar.example>"
    assert "sender not authenticated" in daemon.log_tail(50)
    daemon.stop()
    report("spoofing", cases=len(RESULTS), results=RESULTS)


def test_policy_documented() -> None:
    doc = Path(__file__).resolve().parents[2] / "docs" / "reliability.md"
    if doc.exists():
        assert "sender_auth" in doc.read_text(encoding="utf-8")
