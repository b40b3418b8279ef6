"""Prometheus metrics, one registry for the process."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

RECEIVED = Counter(
    "mailbridge_mails_received_total", "Mails offered to intake", ["channel", "outcome"]
)
PROCESSED = Counter("mailbridge_mails_processed_total", "Mails through the pipeline", ["outcome"])
TICKETS_CREATED = Counter("mailbridge_tickets_created_total", "Cases opened", ["priority"])
OUTBOUND = Counter("mailbridge_outbound_total", "Outbound mails", ["kind", "outcome"])
ACK_LATENCY = Histogram(
    "mailbridge_ack_latency_seconds",
    "From the inbound 250 to our mail leaving",
    ["kind"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 900, 3600),
)
OUTBOX_DEPTH = Gauge("mailbridge_outbox_depth", "Outbound mails waiting")
OUTBOX_FAILED = Gauge("mailbridge_outbox_failed", "Outbound mails that failed for good")
AUTO_REPLIES_WITHHELD = Counter(
    "mailbridge_auto_replies_withheld_total",
    "Automatic mails not sent, or recipients left out of one, and why",
    ["reason"],
)
OUTBOX_OLDEST = Gauge("mailbridge_outbox_oldest_seconds", "Age of the oldest waiting mail")
QUARANTINE_SIZE = Gauge("mailbridge_quarantine_size", "Mails kept in quarantine")
ACKS_LATE = Gauge("mailbridge_acks_overdue", "Cases whose acknowledgement missed its deadline")
# Service levels (mailbridge/sla): counters count each case once, in the process that saw it.
ACKS_LATE_TOTAL = Counter(
    "mailbridge_acks_late_total", "Acknowledgements that missed their deadline, once per case"
)
SLA_BREACHES = Counter(
    "mailbridge_sla_breaches_total", "First responses that missed their target", ["severity"]
)
SLA_BREACHED_OPEN = Gauge(
    "mailbridge_sla_breached_open", "Open cases past their response target without a response"
)
SLA_AT_RISK = Gauge("mailbridge_sla_at_risk", "Open cases whose response clock is at risk")
ESCALATIONS = Counter("mailbridge_escalations_total", "Escalations sent", ["level", "trigger"])
CASES_CLOSED = Counter("mailbridge_cases_closed_total", "Resolved cases closed", ["reason"])
SLA_SWEEPS = Counter("mailbridge_sla_sweeps_total", "Scheduler sweeps run", ["kind", "outcome"])


INBOUND_WAITING = Gauge("mailbridge_inbound_waiting", "Stored mails not processed yet")
INBOUND_OLDEST = Gauge("mailbridge_inbound_oldest_seconds", "Age of the oldest unprocessed mail")

# Webhooks (outbound/webhook_sender.py): deliveries by target, and the queue at scrape time.
WEBHOOK_DELIVERIES = Counter(
    "mailbridge_webhook_deliveries_total", "Webhook delivery attempts by outcome",
    ["target", "outcome"],
)
WEBHOOKS_PENDING = Gauge("mailbridge_webhooks_pending", "Webhook deliveries waiting", ["target"])
WEBHOOKS_FAILED = Gauge(
    "mailbridge_webhooks_failed", "Webhook deliveries that failed for good (kept for the "
    "retention time)", ["target"],
)
