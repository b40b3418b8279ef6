"""Two mailbridge desks answering each other: the loop stops by itself."""

from __future__ import annotations

import time
from pathlib import Path

from tests.support.daemon import free_port, opening_mail
from tests.support.rules import quiet_desk_text


def _desk_rules(tmp: Path, me: str, other: str) -> Path:
    text = quiet_desk_text()
    text = text.replace("mesa.example", f"{me}.example")
    # The other desk's own address is a registered contact here.
    text = text.replace("contacts: [ana@compensar.example, luis@compensar.example]",
                        f"contacts: [soporte@{other}.example, ana@compensar.example]")
    path = tmp / f"rules-{me}.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_two_desks_acknowledging_each_other_stop(make_daemon, tmp_path) -> None:
    port_a, port_b = free_port(), free_port()
    desk_a = make_daemon("a", rules=str(_desk_rules(tmp_path, "desk-a", "desk-b")),
                         smtp_listen=f"127.0.0.1:{port_a}", relay=f"127.0.0.1:{port_b}")
    desk_b = make_daemon("b", rules=str(_desk_rules(tmp_path, "desk-b", "desk-a")),
                         smtp_listen=f"127.0.0.1:{port_b}", relay=f"127.0.0.1:{port_a}")
    desk_a.start()
    desk_b.start()
    # Desk B's address writes to desk A (as a misconfigured forward would).
    desk_a.send(opening_mail(sender="soporte@desk-b.example", to="soporte-a@desk-a.example"))
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if desk_b.query("SELECT count(*) FROM inbound")[0][0] >= 1:
            break
        time.sleep(0.05)
    desk_a.settle()
    desk_b.settle()
    time.sleep(1.0)  # room for a wrong answer to travel back
    desk_a.settle()
    desk_b.settle()
    sent_a = desk_a.query("SELECT kind FROM outbox")
    sent_b = desk_b.query("SELECT kind FROM outbox")
    assert len(sent_a) == 1  # desk A answered once (its shared-mailbox refusal)
    assert sent_b == []
    assert desk_b.outcomes() == ["ignored:auto-reply"]
    assert desk_a.query("SELECT count(*) FROM inbound")[0][0] == 1
    assert desk_a.stop() == 0 and desk_b.stop() == 0
