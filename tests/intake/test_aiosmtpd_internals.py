"""Fails loudly when aiosmtpd moves the internals `ListenerSMTP` builds on (STYLE.md 17).

`mailbridge.intake.smtp.ListenerSMTP` replaces aiosmtpd's DATA collection (one buffer,
no per-line copies), keeps its timers and refuses peers before the greeting. Those are
not aiosmtpd's public handler API: pyproject.toml pins `aiosmtpd<2`, and this test names
every private attribute and method used, with the signature relied on. When it fails
after an upgrade, read aiosmtpd's changes to `smtp.py` and adapt ListenerSMTP first.
"""

from __future__ import annotations

import inspect

import aiosmtpd
import pytest
from aiosmtpd.smtp import SMTP

from mailbridge.intake.smtp import ListenerSMTP

# name → the parameter names ListenerSMTP relies on (None: an attribute set per instance).
METHODS = {
    "_handle_client": ["self"],
    "_call_handler_hook": ["self", "command", "args"],
    "_timeout_cb": ["self"],
    "_reset_timeout": ["self", "duration"],
    "_set_post_data_state": ["self"],
    "check_helo_needed": ["self", "helo"],
    "check_auth_needed": ["self", "caller_method"],
    "connection_made": ["self", "transport"],
    "connection_lost": ["self", "error"],
    "push": ["self", "status"],
    "smtp_DATA": ["self", "arg"],
}
INSTANCE_ATTRIBUTES = ["_reader", "_writer", "_handle_hooks", "_decode_data", "envelope",
                       "session", "transport", "data_size_limit", "line_length_limit",
                       "command_size_limits", "hostname"]


def test_aiosmtpd_is_the_major_version_we_pinned() -> None:
    assert aiosmtpd.__version__.split(".")[0] == "1", (
        f"aiosmtpd {aiosmtpd.__version__}: ListenerSMTP was written against 1.4; "
        "check its internals before lifting the pin")


@pytest.mark.parametrize(("name", "parameters"), METHODS.items())
def test_the_methods_listener_smtp_overrides_or_calls_are_still_there(
        name: str, parameters: list[str]) -> None:
    method = getattr(SMTP, name, None)
    assert method is not None, f"aiosmtpd.smtp.SMTP.{name} is gone: adapt ListenerSMTP"
    found = list(inspect.signature(method).parameters)
    assert found[:len(parameters)] == parameters, (
        f"aiosmtpd.smtp.SMTP.{name}{inspect.signature(method)} changed: adapt ListenerSMTP")


def test_the_instance_attributes_are_still_set() -> None:
    source = inspect.getsource(SMTP)
    for attribute in INSTANCE_ATTRIBUTES:
        assert f"self.{attribute}" in source or hasattr(SMTP, attribute), (
            f"aiosmtpd.smtp.SMTP no longer has {attribute}: adapt ListenerSMTP")


def test_listener_smtp_overrides_only_what_is_listed() -> None:
    """A new override of an aiosmtpd internal must be added to the lists above."""
    own = {name for name, value in vars(ListenerSMTP).items()
           if callable(value) and hasattr(SMTP, name) and not name.startswith("__")}
    public_hooks = {name for name in own if not name.startswith("_")}
    assert own - public_hooks <= set(METHODS), (
        f"ListenerSMTP overrides {sorted(own - public_hooks - set(METHODS))}: list them here")
