#!/usr/bin/env bash
# Until the first release, the schema is one migration regenerated from the models.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
rm -f alembic/versions/0001_initial.py
.venv/bin/python - "$tmp" <<'PY'
import sys
from alembic import command
from mailbridge.schema import alembic_config
url = f"sqlite:///{sys.argv[1]}/gen.db"
cfg = alembic_config(url)
command.revision(cfg, message="initial schema", autogenerate=True, rev_id="0001_initial")
PY
mv alembic/versions/0001_initial_initial_schema.py alembic/versions/0001_initial.py
rm -rf "$tmp"
echo "regenerated alembic/versions/0001_initial.py"
