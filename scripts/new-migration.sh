#!/usr/bin/env bash
# Adds an Alembic revision for model changes: migrates a scratch database to head,
# then autogenerates the difference. Review the file before committing it.
# (0001_initial is released: never edit or regenerate it.)
set -euo pipefail
cd "$(dirname "$0")/.."
message=${1:?usage: scripts/new-migration.sh "what changes"}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
.venv/bin/python - "$tmp" "$message" <<'PY'
import sys
from alembic import command
from mailbridge.schema import alembic_config, upgrade
url = f"sqlite:///{sys.argv[1]}/gen.db"
upgrade(url)
command.revision(alembic_config(url), message=sys.argv[2], autogenerate=True)
PY
