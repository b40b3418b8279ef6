"""Templates and migrations are found in a checkout and in a non-editable install."""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

import pytest

from mailbridge import resources
from mailbridge.outbound.render import DEFAULT_TEMPLATES
from mailbridge.schema import ALEMBIC_DIR

ROOT = Path(__file__).resolve().parent.parent


def test_a_checkout_uses_its_own_folders() -> None:
    assert ALEMBIC_DIR == ROOT / "alembic"
    assert DEFAULT_TEMPLATES == ROOT / "templates"


def test_a_namesake_beside_the_package_is_not_taken(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # Installed, the package's parent is site-packages, where `alembic` is the library.
    (tmp_path / "alembic").mkdir()
    (tmp_path / "alembic" / "__init__.py").write_text("")
    monkeypatch.setattr(resources, "_CHECKOUT", tmp_path)
    assert resources.data_dir("alembic", "env.py") == (
        Path(sys.prefix) / "share" / "mailbridge" / "alembic")


def test_the_wheel_carries_every_template_and_migration() -> None:
    data_files = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "data-files"]
    shipped = {pattern_match for patterns in data_files.values() for pattern in patterns
               for pattern_match in ROOT.glob(pattern)}
    for target, patterns in data_files.items():
        for pattern in patterns:
            # Each file lands in its own folder under share/mailbridge.
            assert all(target == "share/mailbridge/" + str(p.parent.relative_to(ROOT))
                       for p in ROOT.glob(pattern)), (target, pattern)
    wanted = {p for folder in ("templates", "alembic") for p in (ROOT / folder).rglob("*")
              if p.is_file() and "__pycache__" not in p.parts}
    assert wanted - shipped == set()
