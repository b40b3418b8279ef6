"""Where the mail templates and the migrations are: in a checkout beside the package, else
in the installed data (`<prefix>/share/mailbridge`, from the wheel's data files)."""

from __future__ import annotations

import sys
from pathlib import Path

_CHECKOUT = Path(__file__).resolve().parent.parent
INSTALLED_DATA = Path(sys.prefix) / "share" / "mailbridge"


def data_dir(name: str, marker: str) -> Path:
    """The folder `name` (`templates`, `alembic`) of this checkout when it holds `marker`,
    else the installed copy. The marker tells ours from a namesake: beside an installed
    package, `../alembic` is the Alembic library itself."""
    checkout = _CHECKOUT / name
    if (checkout / marker).is_file():
        return checkout
    return INSTALLED_DATA / name
