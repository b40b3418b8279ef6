"""The desk's tools on the daemon's HTTP listener: the JSON API (api.py, openapi.py), the
board (board.py, chart.py), and who may use them (auth.py). `desk_routes` gives the
routes `mailbridge.web.build_app` serves after /healthz, /readyz and /metrics."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from starlette.routing import BaseRoute

from mailbridge.db import Database
from mailbridge.rules import Rules
from mailbridge.settings import Settings


@dataclass
class DeskTools:
    """What the API and the board work with, handed in by the service."""

    db: Database
    settings: Settings
    rules: Callable[[], Rules]
    # Wake the outbox and webhook senders after a write queued mail or events.
    on_outbox: Callable[[], None]
    # Run a mail released from quarantine through the pipeline now (its result, or None
    # when the pipeline worker took it first).
    replay: Callable[[int], Any]


def desk_routes(tools: DeskTools) -> list[BaseRoute]:
    from mailbridge.http.api import Api
    from mailbridge.http.board import Board

    return [*Api(tools).routes(), *Board(tools).routes()]
