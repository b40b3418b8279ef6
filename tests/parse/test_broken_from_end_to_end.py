"""Broken From headers through the real daemon: every mail is attributed, none becomes a contact's."""

from __future__ import annotations

from pathlib import Path

from tests.support.sink import SmtpSink

SENDERS = Path(__file__).resolve().parents[1] / "messages" / "senders"


def test_broken_from_is_attributed_and_a_lookalike_is_no_contact(make_daemon,
                                                                  sink: SmtpSink) -> None:
    daemon = make_daemon(relay_port=sink.port).start()
    mails = [
        # (fixture, envelope sender)
        ("spaces_in_local_part.eml", "powerquadrantsystem@example.com"),
        # `<an a@compensar.example>`: joined, it would be the contact ana@compensar.example.
        ("spaces_in_local_part_of_a_contact.eml", "ana@compensar.example"),
        ("missing_closing_bracket.eml", "ana@compensar.example"),
    ]
    for name, envelope in mails:
        with daemon.smtp() as client:
            client.sendmail(envelope, ["soporte-a@mesa.example"], (SENDERS / name).read_bytes())
    daemon.settle()

    rows = daemon.query("SELECT message_id, outcome FROM inbound ORDER BY id")
    assert rows == [
        ("<spaces_in_local_part@compensar.example>", "refused:unknown-sender"),
        ("<spaces_in_local_part_of_a_contact@compensar.example>", "refused:unknown-sender"),
        ("<missing_closing_bracket@compensar.example>", "ticket"),
    ]
    ticket = daemon.wait_ticket(1)  # the only case: the contact's own mail, bracket missing
    assert ticket["sender"] == "ana@compensar.example"
    assert ticket["sender_name"] == "Ana Gomez"
    assert daemon.cli("tickets", "show", "2", "--json", check=False).returncode != 0
    assert daemon.stop() == 0
