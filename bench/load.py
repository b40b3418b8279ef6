"""SMTP load: client threads, the send plan, and the acks that come back.

The `Tracker` hands mail to the client threads, records when each got its 250,
and listens to the relay sink: when the ack of an opening arrives it records the
time (matched by In-Reply-To) and, if the plan has a reply to that case, builds
the reply from the ack (case number, Message-ID, text) and queues it.
"""

from __future__ import annotations

import re
import smtplib
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from corpus import Ack, Corpus, Mail
from harness import mono_now

CASE_TOKEN = re.compile(r"^\[Caso (\d+)\]")
DONE = object()


@dataclass
class Sent:
    mail: Mail
    t_start: float
    t_done: float
    code: int
    response: str
    t_due: float | None = None  # steady load: when the schedule wanted it sent

    @property
    def ok(self) -> bool:
        return self.code == 250


class SmtpConn:
    """One client connection, reused across mails like an MTA's queue runner."""

    def __init__(self, host: str, port: int, timeout: float = 120.0) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self.client: smtplib.SMTP | None = None

    reconnects = 0  # all connections, for the report

    def send(self, mail: Mail, attempts: int = 3) -> Sent:
        """MAIL, RCPT, DATA on the open connection; like an MTA, a connection the
        server closed (421: command limit, session time) before DATA is opened
        again and the mail tried anew. Once DATA began there is no retry: its
        outcome is unknown, and a resend would be a duplicate mailbridge did not cause."""
        t0 = mono_now()
        for _attempt in range(attempts):
            in_data = False
            try:
                if self.client is None:
                    self.client = smtplib.SMTP(self.host, self.port, timeout=self.timeout,
                                               local_hostname="cliente.compensar.example")
                    self.client.ehlo()
                    t0 = mono_now()  # the connection is not part of the mail's time
                client = self.client
                code, resp = client.mail(mail.mail_from, [f"SIZE={len(mail.raw)}"])
                if code == 421:
                    raise smtplib.SMTPServerDisconnected(resp.decode(errors="replace"))
                if code != 250:
                    client.rset()
                    return Sent(mail, t0, mono_now(), code, resp.decode(errors="replace"))
                accepted = 0
                last = (0, b"")
                for rcpt in mail.rcpt_tos:
                    last = client.rcpt(rcpt)
                    if last[0] == 421:
                        raise smtplib.SMTPServerDisconnected(last[1].decode(errors="replace"))
                    accepted += last[0] in (250, 251)
                if not accepted:
                    client.rset()
                    return Sent(mail, t0, mono_now(), last[0], last[1].decode(errors="replace"))
                in_data = True
                code, resp = client.data(mail.raw)
                return Sent(mail, t0, mono_now(), code, resp.decode(errors="replace"))
            except (smtplib.SMTPException, OSError) as exc:
                self.close()
                if in_data:
                    return Sent(mail, t0, mono_now(), -1, repr(exc))
                SmtpConn.reconnects += 1
                last_error = exc
        return Sent(mail, t0, mono_now(), -1, repr(last_error))

    def close(self) -> None:
        if self.client is not None:
            try:
                self.client.quit()
            except (smtplib.SMTPException, OSError):
                pass
            self.client = None


class Tracker:
    """The send plan, the 250s, the acks, and replies built from acks."""

    def __init__(
        self,
        corpus: Corpus,
        openings: list[Mail],
        reply_plan: dict[int, int] | None = None,
        *,
        wait_for_replies: bool = True,
        stall_seconds: float = 30.0,
    ) -> None:
        self.corpus = corpus
        self.openings = openings
        self.by_mid: dict[str, Mail] = {m.message_id: m for m in openings}
        self.reply_plan = dict(reply_plan or {})  # opening index -> reply index
        self.wait_for_replies = wait_for_replies
        self.stall_seconds = stall_seconds
        self.cond = threading.Condition()
        self.next_opening = 0
        self.ready: deque[Mail] = deque()
        self.replies_built: dict[int, Mail] = {}  # opening index -> reply
        self.replies_cancelled: set[int] = set()
        self.sent: dict[str, Sent] = {}
        self.acks: dict[str, list[float]] = {}  # opening Message-ID -> arrival times
        self.ack_events: dict[str, dict[str, Any]] = {}  # first ack per opening
        self.other_events: list[dict[str, Any]] = []
        self.outbound_ids: Counter[str] = Counter()
        self.last_progress = mono_now()
        self.on_ack: Callable[[Mail, dict[str, Any]], None] | None = None

    # -- the clients' side ----------------------------------------------------------------
    def take(self, block: bool = True, timeout: float = 0.2) -> Any:
        """Next mail to send: a ready reply first, else the next opening; DONE at the end."""
        with self.cond:
            if self.ready:
                return self.ready.popleft()
            if self.next_opening < len(self.openings):
                mail = self.openings[self.next_opening]
                self.next_opening += 1
                return mail
            if not self.wait_for_replies or not self._replies_outstanding():
                return DONE
            if mono_now() - self.last_progress > self.stall_seconds:
                return DONE  # acks stopped coming: do not wait for ever
            if block:
                self.cond.wait(timeout)
                if self.ready:
                    return self.ready.popleft()
            return None

    def take_reply_or_opening(self) -> Mail | None:
        """Steady load: whatever is ready now, never waiting."""
        with self.cond:
            if self.ready:
                return self.ready.popleft()
            if self.next_opening < len(self.openings):
                mail = self.openings[self.next_opening]
                self.next_opening += 1
                return mail
            return None

    def _replies_outstanding(self) -> int:
        wanted = 0
        for opening_index in self.reply_plan:
            if opening_index in self.replies_built or opening_index in self.replies_cancelled:
                continue
            wanted += 1
        return wanted

    def record(self, sent: Sent) -> None:
        with self.cond:
            self.sent[sent.mail.message_id] = sent
            self.by_mid.setdefault(sent.mail.message_id, sent.mail)
            if not sent.ok and sent.mail.kind == "opening":
                self.replies_cancelled.add(sent.mail.index)
            self.last_progress = mono_now()
            self.cond.notify_all()

    # -- the relay sink's side ------------------------------------------------------------
    def on_sink_event(self, event: dict[str, Any]) -> None:
        build: tuple[int, Mail, Ack] | None = None
        with self.cond:
            self.outbound_ids[event.get("message_id", "")] += 1
            opening = self.by_mid.get(event.get("in_reply_to", ""))
            token = CASE_TOKEN.match(event.get("subject", ""))
            # The desk's notices to its own people (staff_new_case …) thread on the
            # customer's mail too, but are auto-generated: only an auto-reply is the ack.
            if opening is None or opening.kind != "opening" or token is None \
                    or event.get("auto_submitted", "auto-replied") != "auto-replied":
                self.other_events.append(event)
                return
            times = self.acks.setdefault(opening.message_id, [])
            times.append(event["t"])
            self.last_progress = mono_now()
            if len(times) > 1:
                return
            self.ack_events[opening.message_id] = event
            reply_index = self.reply_plan.get(opening.index)
            if reply_index is not None and opening.index not in self.replies_built:
                ack = Ack(
                    message_id=event["message_id"], subject=event["subject"],
                    case_number=int(token.group(1)), text=event.get("text", ""),
                    references=tuple(event.get("references", [])), date=event.get("date", ""),
                )
                build = (reply_index, opening, ack)
        if build is not None:
            reply_index, opening, ack = build
            reply = self.corpus.reply(reply_index, opening, ack)
            with self.cond:
                self.replies_built[opening.index] = reply
                self.by_mid[reply.message_id] = reply
                self.ready.append(reply)
                self.cond.notify_all()
        if self.on_ack is not None:
            self.on_ack(opening, event)

    # -- results --------------------------------------------------------------------------
    def ok_sent(self) -> list[Sent]:
        with self.cond:
            return [s for s in self.sent.values() if s.ok]

    def acked_count(self) -> int:
        with self.cond:
            return sum(1 for mid in self.acks if mid in self.sent and self.sent[mid].ok)

    def openings_ok(self) -> int:
        with self.cond:
            return sum(1 for s in self.sent.values() if s.ok and s.mail.kind == "opening")


def run_burst(tracker: Tracker, port: int | list[int], clients: int,
              timeout: float) -> tuple[float, float]:
    """K closed-loop clients until the plan is done; returns (first send, last 250) instants.

    With several ports (workers), client k talks to port k mod len(ports).
    """
    deadline = mono_now() + timeout
    start = mono_now()
    ports = port if isinstance(port, list) else [port]

    def client_loop(k: int) -> None:
        conn = SmtpConn("127.0.0.1", ports[k % len(ports)])
        try:
            while mono_now() < deadline:
                job = tracker.take()
                if job is DONE:
                    return
                if job is None:
                    continue
                tracker.record(conn.send(job))
        finally:
            conn.close()

    threads = [threading.Thread(target=client_loop, args=(k,), name=f"client-{k}", daemon=True)
               for k in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(0.0, deadline - mono_now()) + 5)
    done = [s.t_done for s in tracker.ok_sent()]
    return start, max(done) if done else start


def run_paced(tracker: Tracker, port: int, clients: int, rate: float, total: int,
              timeout: float) -> tuple[float, float]:
    """Open-loop load: mail k is due at start + k/rate, sent by whichever client is free.

    A client that falls behind sends at once; `Sent.t_due` keeps the scheduled
    instant so latency can also be measured from it (no coordinated omission).
    """
    start = mono_now() + 0.2
    deadline = start + timeout
    lock = threading.Lock()
    counter = [0]

    def client_loop() -> None:
        conn = SmtpConn("127.0.0.1", port)
        try:
            while True:
                with lock:
                    k = counter[0]
                    counter[0] += 1
                if k >= total:
                    return
                due = start + k / rate
                pause = due - mono_now()
                if pause > 0:
                    time.sleep(pause)
                if mono_now() > deadline:
                    return
                mail = tracker.take_reply_or_opening()
                if mail is None:
                    return
                sent = conn.send(mail)
                sent.t_due = due
                tracker.record(sent)
        finally:
            conn.close()

    threads = [threading.Thread(target=client_loop, name=f"paced-{k}", daemon=True)
               for k in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(0.0, deadline - mono_now()) + 5)
    done = [s.t_done for s in tracker.ok_sent()]
    return start, max(done) if done else start
