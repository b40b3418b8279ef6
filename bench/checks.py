"""What a run achieved: latencies from the tracker, correctness from the daemon's database."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from harness import (
    DB_ERRORS,
    DaemonProcess,
    db_time_to_mono,
    percentiles,
    queue_depths,
    wait_for_progress,
)
from load import CASE_TOKEN, Tracker


def _mid(value: str | None) -> str:
    return (value or "").strip().strip("<>")


def ack_latencies(tracker: Tracker) -> dict[str, Any]:
    """250 → first ack at the relay, per opening (and scheduled → ack for paced load)."""
    from_250: list[float] = []
    from_due: list[float] = []
    with tracker.cond:
        for mid, times in tracker.acks.items():
            sent = tracker.sent.get(mid)
            if sent is None or not sent.ok:
                continue
            first = min(times)
            from_250.append(first - sent.t_done)
            if sent.t_due is not None:
                from_due.append(first - sent.t_due)
        send_times = [s.t_done - s.t_start for s in tracker.sent.values() if s.ok]
    out = {"ack_after_250": percentiles(from_250), "smtp_transaction": percentiles(send_times)}
    if from_due:
        out["ack_after_scheduled"] = percentiles(from_due)
    return out


def wait_drained(daemon: DaemonProcess, tracker: Tracker, timeout: float,
                 stall: float = 30.0) -> bool:
    """Until every 250'd opening has its ack and the daemon's queues are empty.

    Gives up early when nothing moved for `stall` seconds (e.g. acks suppressed)."""

    def measure() -> tuple[int, int, int, int]:
        depths = queue_depths(daemon)
        return (tracker.acked_count(), tracker.openings_ok(), depths["inbound_new"],
                depths["outbox_pending"])

    def drained(value: tuple[int, int, int, int]) -> bool:
        acked, openings, inbound_new, outbox_pending = value
        return acked >= openings and inbound_new == 0 and outbox_pending == 0

    return wait_for_progress(measure, drained, stall=stall, timeout=timeout)


def burst_end(daemon: DaemonProcess, tracker: Tracker, last_250: float) -> float:
    """When a burst was done (monotonic): its last first ack or its last reply committed,
    whichever came later; the last 250 when neither is known."""
    ends = [min(t) for t in tracker.acks.values()]
    reply_end = last_processed(daemon, tracker)
    if reply_end is not None:
        ends.append(reply_end)
    return max(ends) if ends else last_250


def last_processed(daemon: DaemonProcess, tracker: Tracker) -> float | None:
    """When the last 250'd reply was committed (monotonic), from inbound.processed_at."""
    replies = {_mid(s.mail.message_id) for s in tracker.ok_sent() if s.mail.kind == "reply"}
    if not replies:
        return None
    latest: float | None = None
    try:
        with daemon.db() as conn:
            for message_id, processed_at in conn.execute(
                "SELECT message_id, processed_at FROM inbound WHERE processed_at IS NOT NULL"
            ):
                if _mid(message_id) in replies:
                    t = db_time_to_mono(processed_at)
                    if t is not None and (latest is None or t > latest):
                        latest = t
    except DB_ERRORS:
        return None
    return latest


def correctness(daemon: DaemonProcess, tracker: Tracker) -> dict[str, Any]:
    """Tickets, threaded replies, acks, duplicates and losses for the 250'd mail."""
    out: dict[str, Any] = {}
    ok = tracker.ok_sent()
    openings = [s.mail for s in ok if s.mail.kind == "opening"]
    replies = [s.mail for s in ok if s.mail.kind == "reply"]
    with tracker.cond:
        failed = Counter(
            f"{s.code} {s.response[:60]}" for s in tracker.sent.values() if not s.ok)
        acks = {mid: list(times) for mid, times in tracker.acks.items()}
        ack_events = dict(tracker.ack_events)
        other = list(tracker.other_events)
        repeats = sum(1 for mid, n in tracker.outbound_ids.items() if mid and n > 1)
    out["sent_250"] = len(ok)
    out["openings_250"] = len(openings)
    out["replies_250"] = len(replies)
    out["refused_or_failed"] = sum(failed.values())
    out["refusals"] = dict(failed.most_common(5))

    case_of: dict[str, int] = {}
    inbound: dict[str, tuple[str, str | None]] = {}
    try:
        with daemon.db() as conn:
            for message_id, number in conn.execute(
                "SELECT m.message_id, t.number FROM ticket_messages m "
                "JOIN tickets t ON t.id = m.ticket_id WHERE m.direction = 'in'"
            ):
                case_of[_mid(message_id)] = int(number)
            for message_id, state, outcome in conn.execute(
                "SELECT message_id, state, outcome FROM inbound"
            ):
                inbound[_mid(message_id)] = (state, outcome)
            out["tickets_db"] = conn.execute("SELECT count(*) FROM tickets").fetchone()[0]
            out["inbound_states"] = dict(conn.execute(
                "SELECT state, count(*) FROM inbound GROUP BY state").fetchall())
            out["inbound_outcomes"] = dict(conn.execute(
                "SELECT coalesce(outcome, '-'), count(*) FROM inbound GROUP BY outcome"
            ).fetchall())
            out["outbox_states"] = dict(conn.execute(
                "SELECT state, count(*) FROM outbox GROUP BY state").fetchall())
    except DB_ERRORS as exc:
        out["db_error"] = repr(exc)

    listed = daemon.cli("tickets", "list", "--json", "--limit", "100000")
    if listed.returncode == 0:
        try:
            out["tickets_cli"] = len(json.loads(listed.stdout))
        except json.JSONDecodeError:
            out["tickets_cli"] = None
    else:
        out["tickets_cli"] = None
        out["tickets_cli_error"] = listed.stderr.decode(errors="replace")[-300:]

    lost: list[str] = []
    lost_why: Counter[str] = Counter()
    for mail in [*openings, *replies]:
        if _mid(mail.message_id) not in case_of:
            lost.append(mail.message_id)
            state, outcome = inbound.get(_mid(mail.message_id), ("not in inbound", None))
            lost_why[f"{state}:{outcome}"] += 1
    out["lost"] = len(lost)
    out["lost_by_inbound_state"] = dict(lost_why)
    out["lost_examples"] = lost[:5]

    opened_cases = {case_of[_mid(m.message_id)] for m in openings if _mid(m.message_id) in case_of}
    out["openings_with_own_case"] = len(opened_cases)
    out["acked_openings"] = sum(1 for m in openings if m.message_id in acks)
    out["acks_received"] = sum(len(v) for v in acks.values())
    out["duplicates"] = sum(1 for v in acks.values() if len(v) > 1)
    out["outbound_message_id_repeats"] = repeats
    out["other_outbound"] = len(other)
    out["other_outbound_subjects"] = dict(Counter(
        CASE_TOKEN.sub("[Caso N]", e.get("subject", ""))[:60] for e in other).most_common(5))
    mismatched = 0
    for mail in openings:
        event = ack_events.get(mail.message_id)
        token = CASE_TOKEN.match(event["subject"]) if event else None
        case = case_of.get(_mid(mail.message_id))
        if token is not None and case is not None and int(token.group(1)) != case:
            mismatched += 1
    out["ack_case_mismatch"] = mismatched
    threaded = sum(1 for m in replies if case_of.get(_mid(m.message_id)) == m.case_number)
    out["threaded_replies"] = threaded
    out["misthreaded_replies"] = sum(
        1 for m in replies
        if _mid(m.message_id) in case_of and case_of[_mid(m.message_id)] != m.case_number
    )
    out["replies_without_token_threaded"] = sum(
        1 for m in replies
        if "/no-token" in m.shape and case_of.get(_mid(m.message_id)) == m.case_number
    )
    out["replies_planned_not_sent"] = sum(
        1 for o in tracker.reply_plan if o not in tracker.replies_built)
    return out
