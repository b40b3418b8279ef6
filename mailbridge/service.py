"""`mailbridge run`: starts the enabled parts, handles signals, drains on SIGTERM."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import stat
from pathlib import Path
from typing import Any

from sqlalchemy import text

import mailbridge.models  # noqa: F401  (every table known: see Database)
from mailbridge.db import Database
from mailbridge.http import DeskTools, desk_routes
from mailbridge.intake.imap import ImapPollers
from mailbridge.intake.imap_config import load_imap_accounts
from mailbridge.intake.smtp import IntakeHandler, ServerTls, SpoolWriter, smtp_factory
from mailbridge.limits import check_fd_budget, throttle_accept_errors
from mailbridge.memory import tune_malloc
from mailbridge.oauth import REGISTRY as OAUTH_TOKENS
from mailbridge.oauth import relay_token_source
from mailbridge.outbound.sender import OutboxSender
from mailbridge.outbound.webhook_sender import WebhookSender
from mailbridge.outbound.webhooks import load_webhook_targets, record_events
from mailbridge.pipeline import Pipeline, PipelineWorker
from mailbridge.pipeline.processes import PipelineProcesses
from mailbridge.pipeline.runner import wait_settled
from mailbridge.rules import RulesHolder
from mailbridge.schema import pending_revision
from mailbridge.settings import Settings
from mailbridge.sla.jobs import SlaScheduler
from mailbridge.status import refresh_queue_gauges
from mailbridge.systemd import notify, watchdog_interval
from mailbridge.views import case_summary_by_id
from mailbridge.web import HttpLimits, HttpServer

log = logging.getLogger(__name__)


class SchemaOutdated(Exception):
    pass


class Service:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.rules = RulesHolder(settings.rules)
        self.db = Database(settings.resolved_database_url)
        behind = pending_revision(self.db.engine)
        if behind is not None:
            raise SchemaOutdated(
                f"the database schema is not at {behind}: run `mailbridge db upgrade` first"
            )
        self.sender = OutboxSender(self.db, settings)
        # Webhooks (events written in the transactions, like mail), one thread per target.
        targets = load_webhook_targets(settings.webhooks, path=settings.webhooks_file)
        record_events(self.db, targets)
        self.webhooks = WebhookSender(self.db, settings, targets,
                                      describe_case=case_summary_by_id)
        # SLA timers (APScheduler, jobs in this database): escalations, closing, late acks.
        self.sla = SlaScheduler(self.db, settings, self.rules, on_outbox=self._outbox_written)
        accounts = load_imap_accounts(settings.imap_accounts, path=settings.imap_accounts_file)
        # OAuth2 tokens (relay, IMAP accounts): known from the start, so the renewer keeps
        # them fresh and a failing one is reported before any mail needs it.
        OAUTH_TOKENS.retry_base = settings.oauth_retry_base
        OAUTH_TOKENS.retry_max = settings.oauth_retry_max
        if settings.relay and settings.relay_auth == "xoauth2":
            relay_token_source(settings)
        for account in accounts:
            account.token_source()
        self.imap = ImapPollers(accounts, self.db, on_stored=self._wake_worker)
        self.pipeline = Pipeline(
            self.db, settings, self.rules, on_outbox=self._outbox_written,
            on_imap_done=self.imap.wake if accounts else None,
            batch_size=settings.pipeline_batch,
        )
        self.worker: PipelineWorker | PipelineProcesses
        if settings.pipeline_processes:
            # Processing in child processes: this one keeps intake, sender and timers.
            self.worker = PipelineProcesses(
                settings, settings.pipeline_processes, on_outbox=self._outbox_written,
                on_imap_done=self.imap.wake if accounts else None,
            )
        else:
            self.worker = PipelineWorker(self.pipeline, settings.worker_poll_interval)
        self.stopping = asyncio.Event()
        self.smtp_server: asyncio.Server | None = None
        self.lmtp_server: asyncio.Server | None = None
        # STARTTLS on the SMTP listener; the certificate is read again on SIGHUP.
        self.tls = ServerTls.from_settings(settings)
        self.http: HttpServer | None = None

    def _outbox_written(self) -> None:
        """A transaction queued mail or webhook events: both senders look now (the
        webhook publisher only when it has targets: without, no event is recorded, and
        a pass for every mail cost ~1 ms of CPU on PostgreSQL; its own poll still
        publishes what the CLI records)."""
        self.sender.wakeup.set()
        if self.webhooks.targets:
            self.webhooks.wakeup.set()

    def _replay(self, inbound_id: int) -> Any:
        # The pipeline processes (PostgreSQL) may take the released mail first.
        return self.pipeline.process(inbound_id) or wait_settled(self.db, inbound_id)

    def _wake_worker(self) -> None:
        self.worker.wakeup.set()

    def readiness(self) -> dict[str, Any]:
        checks: dict[str, Any] = {}
        try:
            with self.db.reader() as session:
                session.execute(text("SELECT 1"))
            checks["database"] = {"ok": True}
        except Exception as exc:
            checks["database"] = {"ok": False, "error": str(exc)[:200]}
        checks["smtp"] = {"ok": self.smtp_server is not None and not self.stopping.is_set()}
        if self.settings.lmtp_listen:
            checks["lmtp"] = {"ok": self.lmtp_server is not None and not self.stopping.is_set()}
        if isinstance(self.worker, PipelineProcesses):
            checks["pipeline"] = self.worker.readiness()
        for name, state in self.imap.readiness().items():
            checks[f"imap:{name}"] = state
        for name, state in OAUTH_TOKENS.readiness().items():
            checks[f"oauth:{name}"] = state
        return checks

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        # accept() out of descriptors: counted, logged once a second (mailbridge/limits.py).
        throttle_accept_errors(loop)
        budget = check_fd_budget(self.settings)
        writer = SpoolWriter(self.db, on_stored=self.worker.wakeup.set)
        writer.start()
        handler = IntakeHandler(self.rules, self.settings, writer.store)
        factory = smtp_factory(handler, self.settings, tls=self.tls)
        host, port = self.settings.smtp_address
        self.smtp_server = await loop.create_server(factory, host=host, port=port)
        smtp_port = self.smtp_server.sockets[0].getsockname()[1]
        listeners = [(handler, factory)]
        lmtp_where: Any = None
        if self.settings.lmtp_address is not None:
            # LMTP from the local MTA: the same policy, the same spool writer.
            lmtp_handler = IntakeHandler(self.rules, self.settings, writer.store, channel="lmtp")
            lmtp = smtp_factory(lmtp_handler, self.settings, lmtp=True)
            self.lmtp_server, lmtp_where = await self._listen_lmtp(lmtp)
            listeners.append((lmtp_handler, lmtp))
        http_host, http_port = self.settings.http_address
        self.http = HttpServer(
            http_host, http_port, self.readiness,
            before_metrics=lambda: refresh_queue_gauges(self.db),
            limits=HttpLimits(
                max_connections=self.settings.http_max_connections,
                request_timeout=self.settings.http_timeout,
                keepalive_timeout=self.settings.http_keepalive_timeout,
            ),
            routes=desk_routes(DeskTools(self.db, self.settings, self.rules, self._outbox_written,
                                         self._replay)),
        )
        await asyncio.to_thread(self.http.start)
        self.worker.start()
        self.sender.start()
        self.webhooks.start()
        self.sla.start()
        if OAUTH_TOKENS.sources():
            OAUTH_TOKENS.start(self.settings.run_dir / "oauth.json")
        self.imap.start()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.stopping.set)
        loop.add_signal_handler(signal.SIGHUP, self._reload)
        self._write_listen_file(host, smtp_port, http_host, self.http.port, lmtp_where)
        notify("READY=1\nSTATUS=accepting mail")
        watchdog = asyncio.create_task(self._watchdog()) if watchdog_interval() else None
        log.info(
            "mailbridge started",
            extra={
                "smtp": f"{host}:{smtp_port}",
                "smtp_tls": "required" if self.settings.smtp_require_tls
                else "offered" if self.tls else "off",
                "lmtp": lmtp_where,
                "http": f"{http_host}:{self.http.port}",
                "relay": self.settings.relay or f"maildir:{self.settings.outbound_maildir}",
                "database": self.db.engine.url.render_as_string(hide_password=True),
                **budget,
                "http_max_connections": self.settings.http_max_connections,
            },
        )
        await self.stopping.wait()
        notify("STOPPING=1\nSTATUS=draining")
        await self._drain(listeners, writer)
        if watchdog is not None:
            watchdog.cancel()

    async def _listen_lmtp(self, factory: Any) -> tuple[asyncio.Server, Any]:
        """Open the LMTP listener: a unix socket (a path) or host:port."""
        loop = asyncio.get_running_loop()
        where = self.settings.lmtp_address
        if isinstance(where, str):
            path = Path(where)
            _remove_stale_socket(path)
            server = await loop.create_unix_server(factory, path=str(path))
            path.chmod(int(self.settings.lmtp_socket_mode, 8))
            return server, str(path)
        assert where is not None
        server = await loop.create_server(factory, host=where[0], port=where[1])
        return server, [where[0], server.sockets[0].getsockname()[1]]

    def _reload(self) -> None:
        notify("RELOADING=1")
        if self.rules.reload() and isinstance(self.worker, PipelineProcesses):
            self.worker.reload()
        if self.tls is not None:
            self.tls.reload()
        notify("READY=1")

    async def _watchdog(self) -> None:
        """Ping systemd only while the database answers: a wedged daemon gets restarted."""
        interval = watchdog_interval() or 30.0
        while True:
            checks = await asyncio.to_thread(self.readiness)
            if checks["database"]["ok"]:
                notify("WATCHDOG=1")
            await asyncio.sleep(interval)

    async def _drain(self, listeners: list[tuple[IntakeHandler, Any]],
                     writer: SpoolWriter) -> None:
        log.info("stopping: no new connections; finishing work in hand")
        assert self.smtp_server is not None
        self.smtp_server.close()
        if self.lmtp_server is not None:
            self.lmtp_server.close()
        deadline = asyncio.get_running_loop().time() + self.settings.drain_timeout
        while any(h.in_flight for h, _ in listeners) \
                and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        # Sessions not in DATA have nothing acknowledged: their clients retry.
        for _handler, factory in listeners:
            for proto in list(factory.live):
                proto.close_transport()
        if isinstance(self.settings.lmtp_address, str):
            Path(self.settings.lmtp_address).unlink(missing_ok=True)
        await writer.stop()
        await asyncio.to_thread(self.imap.stop, self.settings.drain_timeout)
        await asyncio.to_thread(self.worker.stop, self.settings.drain_timeout)
        await asyncio.to_thread(self.sla.stop)  # its last mails still leave below
        self.sender.wakeup.set()
        await asyncio.to_thread(self.sender.stop, self.settings.drain_timeout)
        await asyncio.to_thread(OAUTH_TOKENS.stop)
        (self.settings.run_dir / "oauth.json").unlink(missing_ok=True)
        await asyncio.to_thread(self.webhooks.stop, self.settings.drain_timeout)
        if self.http is not None:
            await asyncio.to_thread(self.http.stop)
        self.db.dispose()
        (self.settings.run_dir / "listen.json").unlink(missing_ok=True)
        log.info("mailbridge stopped")

    def _write_listen_file(self, host: str, smtp_port: int, http_host: str, http_port: int,
                           lmtp: Any = None) -> None:
        """Where we actually listen (ports may be 0 = chosen by the OS)."""
        self.settings.run_dir.mkdir(parents=True, exist_ok=True)
        path = self.settings.run_dir / "listen.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({
            "pid": os.getpid(), "smtp": [host, smtp_port], "http": [http_host, http_port],
            **({"lmtp": lmtp} if lmtp is not None else {}),
        }))
        tmp.replace(path)


def _remove_stale_socket(path: Path) -> None:
    """A socket file left by a daemon that died is removed; one still answered is not."""
    if not path.exists():
        return
    if not stat.S_ISSOCK(path.stat().st_mode):
        raise OSError(f"{path} exists and is not a socket: not replacing it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        path.unlink(missing_ok=True)
        return
    finally:
        probe.close()
    raise OSError(f"another process listens on {path}")


def run(settings: Settings) -> int:
    # Big freed buffers (a 25 MB mail) go back to the system instead of staying resident.
    tune_malloc()
    service = Service(settings)
    asyncio.run(service.serve())
    return 0
