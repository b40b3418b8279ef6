"""A background thread woken by an Event: the shape of the pipeline worker and the sender."""

from __future__ import annotations

import threading


class BackgroundLoop:
    """Runs `_run()` in a daemon thread; `wakeup` cuts its wait short, `stop()` ends it."""

    thread_name = "worker"

    def __init__(self) -> None:
        self.wakeup = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Ask the loop to finish its work in hand, and wait for it (bounded)."""
        self._stop.set()
        self.wakeup.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:  # pragma: no cover - subclasses
        raise NotImplementedError
