"""Pure work done ahead, outside the write transaction, for the stage that will ask for it.

On SQLite the pipeline's transaction holds the database's one write lock, and
intake waits for it. Much of what the stages do there is pure text work on the
mail (classification, quote stripping, secret redaction, template fields) that
needs no database. The pipeline predicts those calls after parsing
(`Ahead.compute`, outside the lock); while the stages run (`Ahead.active`), a
function marked `@ahead` called with the same arguments takes the result instead
of computing it again. A wrong prediction costs only the wasted call: the stage
computes as it always did. Each result is handed out once.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from typing import Any, ParamSpec, TypeVar, cast

P = ParamSpec("P")
R = TypeVar("R")

_local = threading.local()


def _part(value: Any) -> Hashable:
    try:
        hash(value)
    except TypeError:
        return ("id", id(value))  # e.g. the rules' field list: the same object both times
    return cast(Hashable, value)


def _key(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Hashable:
    return (fn, tuple(_part(a) for a in args),
            tuple(sorted((k, _part(v)) for k, v in kwargs.items())))


def ahead(fn: Callable[P, R]) -> Callable[P, R]:
    """Mark a pure function whose result may have been computed ahead."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        store: dict[Hashable, Any] | None = getattr(_local, "store", None)
        if store:
            found = store.pop(_key(wrapper, args, kwargs), _MISSING)
            if found is not _MISSING:
                return cast(R, found)
        return cast(R, wrapper.__ahead_of__(*args, **kwargs))  # type: ignore[attr-defined]

    wrapper.__ahead_of__ = fn  # type: ignore[attr-defined]
    return wrapper


_MISSING = object()


class Ahead:
    """Results computed ahead for one mail."""

    def __init__(self) -> None:
        self.store: dict[Hashable, Any] = {}

    def compute(self, marked: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        """Call the function now and keep the result for the stage; exceptions are
        not kept (the stage meets them itself, with its name on the quarantine)."""
        result = marked.__ahead_of__(*args, **kwargs)  # type: ignore[attr-defined]
        self.store[_key(marked, args, kwargs)] = result
        return cast(R, result)

    @contextmanager
    def active(self) -> Iterator[None]:
        """While the stages run in this thread, marked functions look here first."""
        previous = getattr(_local, "store", None)
        _local.store = self.store
        try:
            yield
        finally:
            _local.store = previous
            self.store = {}
