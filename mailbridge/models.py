"""The registry of every table: imported by the entry points (cli, service, the pipeline
processes, Alembic, tests) so that Base.metadata is complete before a database opens."""

from mailbridge import tokens as _tokens  # noqa: F401
from mailbridge.db import Base
from mailbridge.outbound import outbox as _outbox  # noqa: F401
from mailbridge.outbound import webhooks as _webhooks  # noqa: F401
from mailbridge.spool import InboundMail  # noqa: F401
from mailbridge.tickets import models as _tickets  # noqa: F401

try:  # the IMAP intake's tables, when that module is present
    from mailbridge.intake import imap as _imap  # noqa: F401
except ImportError:  # pragma: no cover
    pass

metadata = Base.metadata
