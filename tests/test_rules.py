"""rules.yaml validation: the shipped demo works, mistakes are named with their line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mailbridge.rules import RulesError, load_rules, parse_rules

REPO = Path(__file__).resolve().parent.parent
DEMO = (REPO / "rules.yaml").read_text(encoding="utf-8")


def test_shipped_rules_are_the_demo_contract() -> None:
    rules = load_rules(REPO / "rules.yaml")
    assert {a.address: a.priority for a in rules.addresses} == {
        "soporte-a@mesa.example": "A",
        "soporte-b@mesa.example": "B",
        "soporte-c@mesa.example": "C",
    }
    assert rules.desk.staff_domains == ["mesa.example"]
    assert rules.desk.from_address == "soporte@mesa.example"
    compensar = rules.tenant("ten-1001")
    assert compensar is not None
    assert (compensar.name, compensar.plan, compensar.timezone) == (
        "Compensar", "premium", "America/Bogota",
    )
    assert compensar.contacts == ["ana@compensar.example", "luis@compensar.example"]
    assert compensar.executive == "ejecutivo.compensar@mesa.example"
    lafise = rules.tenant("TEN-2002")
    assert lafise is not None
    assert (lafise.name, lafise.plan, lafise.timezone) == (
        "Lafise Nicaragua", "profesional", "America/Managua",
    )
    assert lafise.contacts == ["maria@lafise.example"]
    assert lafise.executive == "ejecutivo.lafise@mesa.example"
    assert rules.find_tenant_id("Re: ten-1001 caída") == "TEN-1001"
    assert rules.find_tenant_id("sin tenant") is None


def test_recipients_accepted_are_only_support_addresses() -> None:
    rules = load_rules(REPO / "rules.yaml")
    assert rules.accepts_recipient("Soporte-A@Mesa.Example")
    assert rules.accepts_recipient("soporte+42@mesa.example")  # our case Reply-To
    assert rules.accepts_recipient("soporte-b+x@mesa.example")
    assert not rules.accepts_recipient("soporte@otro.example")
    assert not rules.accepts_recipient("ventas@mesa.example")
    assert not rules.accepts_recipient("victim@gmail.example")


@pytest.mark.parametrize(
    ("change", "place", "words"),
    [
        (("plan: profesional", "plan: oro"), "tenants.1.plan", "unknown plan 'oro'"),
        (("America/Bogota", "America/Bogot"), "tenants.0.timezone", "unknown time zone"),
        (("priority: B", "priority: Z"), "addresses.1.priority", "'A', 'B' or 'C'"),
        (("soporte-c@mesa.example", "soporte-a@mesa.example"), "addresses.2.address", "twice"),
        (("tenant_pattern: 'TEN-\\d+'", "tenant_pattern: 'TEN-(\\d+'"), "tenant_pattern", "regular"),
        (("from_address: soporte@mesa.example", "from_address: soporte"), "desk.from_address",
         "not an e-mail"),
    ],
)
def test_mistakes_name_line_and_key(change, place, words) -> None:
    old, new = change
    assert old in DEMO
    text = DEMO.replace(old, new, 1)
    with pytest.raises(RulesError) as raised:
        parse_rules(text, source="rules.yaml")
    problem = raised.value.problems[0]
    assert problem.key == place
    assert words in problem.message
    # The line named is the line where the changed key sits.
    assert new.split(":")[0].strip() in text.splitlines()[problem.line - 1] or (
        problem.key.split(".")[-1] in text.splitlines()[problem.line - 1]
    )


def test_too_many_contacts_for_the_plan() -> None:
    text = DEMO.replace(
        "contacts: [maria@lafise.example]",
        "contacts: [maria@lafise.example, jose@lafise.example, eva@lafise.example]",
    )
    with pytest.raises(RulesError) as raised:
        parse_rules(text)
    assert "3 contacts but plan 'profesional' allows 2" in str(raised.value)


def test_yaml_syntax_error_has_a_line() -> None:
    with pytest.raises(RulesError) as raised:
        parse_rules("desk:\n  name: [sin cerrar\n", source="x.yaml")
    assert raised.value.problems[0].line is not None
    assert str(raised.value).startswith("x.yaml:")


def test_check_config_command(tmp_path: Path) -> None:
    bad = tmp_path / "rules.yaml"
    bad.write_text(DEMO.replace("plan: profesional", "plan: oro"), encoding="utf-8")
    env = {"MAILBRIDGE_RULES": str(bad), "MAILBRIDGE_DATA_DIR": str(tmp_path), "PATH": "/usr/bin"}
    result = subprocess.run(
        [sys.executable, "-m", "mailbridge", "check-config"],
        env=env, capture_output=True, text=True, cwd=tmp_path, check=False,
    )
    assert result.returncode == 78
    line = DEMO.splitlines().index("    plan: profesional") + 1
    assert f"{bad}:{line}: tenants.1.plan: unknown plan 'oro'" in result.stderr

    env["MAILBRIDGE_RULES"] = str(REPO / "rules.yaml")
    ok = subprocess.run(
        [sys.executable, "-m", "mailbridge", "check-config"],
        env=env, capture_output=True, text=True, cwd=tmp_path, check=False,
    )
    assert ok.returncode == 0, ok.stderr
    assert "3 support addresses, 2 tenants" in ok.stdout


def test_check_config_refuses_authres_without_a_trusted_upstream(tmp_path: Path) -> None:
    env = {"MAILBRIDGE_RULES": str(REPO / "rules.yaml"), "MAILBRIDGE_DATA_DIR": str(tmp_path),
           "MAILBRIDGE_SENDER_AUTH": "authres", "PATH": "/usr/bin"}
    result = subprocess.run([sys.executable, "-m", "mailbridge", "check-config"], env=env,
                            capture_output=True, text=True, cwd=tmp_path, check=False)
    assert result.returncode == 78
    assert "MAILBRIDGE_TRUSTED_AUTHSERV_ID" in result.stderr
    env["MAILBRIDGE_TRUSTED_AUTHSERV_ID"] = "mx.mesa.example"
    ok = subprocess.run([sys.executable, "-m", "mailbridge", "check-config"], env=env,
                        capture_output=True, text=True, cwd=tmp_path, check=False)
    assert ok.returncode == 0 and "sender authentication: authres (trusting mx.mesa.example)" in ok.stdout
