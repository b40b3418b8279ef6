"""Pure stage work done before the write transaction, picked up by the stages."""

from __future__ import annotations

import mailbridge.parse.secrets as secrets_module
from mailbridge.parse.ahead import Ahead, ahead
from mailbridge.parse.mime import parse_mail
from mailbridge.pipeline import Pipeline
from mailbridge.pipeline.runner import guess_for
from mailbridge.pipeline.stages import work_ahead
from mailbridge.spool import new_inbound, store_inbound
from tests.support.daemon import opening_mail

calls: list[str] = []


@ahead
def shout(text: str, *, times: int = 1) -> list[str]:
    calls.append(text)
    return [text.upper()] * times


def test_a_result_computed_ahead_is_handed_out_once_for_the_same_arguments() -> None:
    calls.clear()
    work = Ahead()
    first = work.compute(shout, "hola", times=2)
    with work.active():
        assert shout("hola", times=2) is first  # taken, not computed again
        assert shout("hola", times=2) == first  # a second call computes
        assert shout("adiós") == ["ADIÓS"]  # other arguments compute
    assert calls == ["hola", "hola", "adiós"]
    # Outside `active()` nothing computed ahead is used.
    work.compute(shout, "fuera")
    assert shout("fuera") == ["FUERA"]
    assert calls == ["hola", "hola", "adiós", "fuera", "fuera"]


def test_an_exception_ahead_is_not_kept() -> None:
    work = Ahead()

    @ahead
    def fails(value: int) -> int:
        raise ValueError(value)

    try:
        work.compute(fails, 1)
    except ValueError:
        pass
    assert work.store == {}


def test_an_opening_is_classified_redacted_and_read_before_its_transaction(
    db, settings, rules, monkeypatch
) -> None:
    """The stages' text work runs before the write transaction, once per mail."""
    in_transaction = {"now": False}
    redactions: list[bool] = []
    original = secrets_module.redact_secrets.__ahead_of__  # type: ignore[attr-defined]

    def watched(text: str) -> tuple[str, list[str]]:
        redactions.append(in_transaction["now"])
        return original(text)  # type: ignore[no-any-return]

    monkeypatch.setattr(secrets_module.redact_secrets, "__ahead_of__", watched)
    transaction = db.transaction

    def flagged():  # type: ignore[no-untyped-def]
        class _Ctx:
            def __enter__(self):  # type: ignore[no-untyped-def]
                in_transaction["now"] = True
                self.inner = transaction()
                return self.inner.__enter__()

            def __exit__(self, *exc):  # type: ignore[no-untyped-def]
                try:
                    return self.inner.__exit__(*exc)
                finally:
                    in_transaction["now"] = False
        return _Ctx()

    monkeypatch.setattr(db, "transaction", flagged)
    raw = opening_mail().as_bytes()
    (inbound_id,) = store_inbound(db, [new_inbound(
        raw, channel="smtp", mail_from="ana@compensar.example",
        rcpt_tos=["soporte-a@mesa.example"])])
    result = Pipeline(db, settings, lambda: rules).process(inbound_id)
    assert result is not None and result.outcome == "ticket"
    # Redacted once, before the transaction: the stage took that result.
    assert redactions == [False]
    assert "300 agentes sin correo externo" in case_text(db)


def test_a_wrong_prediction_changes_nothing(rules) -> None:
    """A mail predicted as an opening that is not one: the stage computes as before."""
    mail = parse_mail(opening_mail().as_bytes())
    work = Ahead()
    work_ahead(work, guess_for(mail, "ana@compensar.example", "smtp", rules))
    assert len(work.store) == 4  # classify, encryption, redaction, fields
    with work.active():
        text, kinds = secrets_module.redact_secrets("otro texto, sin secretos")
        assert (text, kinds) == ("otro texto, sin secretos", [])
        assert len(work.store) == 4  # the prediction stays unused
    assert work.store == {}  # and is dropped with the mail


def case_text(db) -> str:  # type: ignore[no-untyped-def]
    from sqlalchemy import text

    with db.reader() as session:
        return " ".join(str(b) for (b,) in session.execute(text("SELECT body FROM ticket_messages")))
