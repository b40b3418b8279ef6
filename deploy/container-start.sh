#!/bin/sh
# The container's start: check the configuration, upgrade the schema only when asked
# (MAILBRIDGE_DB_UPGRADE_ON_START=1: one replica on a shared PostgreSQL, or the only
# container on SQLite), then become the daemon (PID 1 gets SIGTERM and drains).
set -eu
mailbridge check-config
case "${MAILBRIDGE_DB_UPGRADE_ON_START:-0}" in
  1|true|yes) mailbridge db upgrade ;;
  0|false|no|"") ;;
  *) echo "error: MAILBRIDGE_DB_UPGRADE_ON_START must be 1 or 0" >&2; exit 78 ;;
esac
exec mailbridge run
