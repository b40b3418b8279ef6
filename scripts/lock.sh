#!/usr/bin/env bash
# Writes requirements.lock, the exact packages the container image installs (mailbridge's
# dependencies and the `postgres` extra), and requirements-build.lock, the build backend
# (setuptools); each package pinned with the sha256 hashes of its files on the package
# index, which pip checks (--require-hashes).
#
#   scripts/lock.sh            after changing dependencies in pyproject.toml: keeps every
#                              pin that still fits, resolves the rest
#   scripts/lock.sh --upgrade  moves every pin to the newest release that fits
#   scripts/lock.sh --check    exit 1 if pyproject.toml changed its dependencies since the
#                              lock was written (scripts/container-test.sh runs this)
#
# Resolved by pip-compile (pip-tools, a pinned version in a venv of its own under
# ~/.cache/mailbridge) against the package index only: local pip config files and
# find-links are ignored so that the lock names nothing the index lacks. PIP_INDEX_URL and
# PIP_CERT from the environment are honoured.
set -euo pipefail
cd "$(dirname "$0")/.."

PIP_VERSION=26.3
PIP_TOOLS_VERSION=7.6.2
LOCK=requirements.lock
BUILD_LOCK=requirements-build.lock
MARK="# pyproject dependencies sha256:"

# What the lock depends on in pyproject.toml: the Python range, the dependencies, the
# postgres extra and the build requirements (not the tool settings).
fingerprint() {
  python3 - <<'PY'
import hashlib, json, tomllib
with open("pyproject.toml", "rb") as f:
    data = tomllib.load(f)
project = data["project"]
relevant = {
    "requires-python": project.get("requires-python"),
    "dependencies": project.get("dependencies", []),
    "postgres": project.get("optional-dependencies", {}).get("postgres", []),
    "build": data.get("build-system", {}).get("requires", []),
}
print(hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest())
PY
}

if [ "${1:-}" = "--check" ]; then
  want=$(fingerprint)
  for file in "$LOCK" "$BUILD_LOCK"; do
    have=$(sed -n "s/^$MARK //p" "$file" 2>/dev/null | head -1)
    if [ "$want" != "$have" ]; then
      echo "error: $file is stale: the dependencies in pyproject.toml changed since it was" >&2
      echo "       written. Run scripts/lock.sh and commit $LOCK and $BUILD_LOCK." >&2
      exit 1
    fi
  done
  echo "$LOCK and $BUILD_LOCK match pyproject.toml"
  exit 0
fi

extra=()
case "${1:-}" in
  "") ;;
  --upgrade) extra+=(--upgrade) ;;
  *) echo "usage: scripts/lock.sh [--upgrade|--check]" >&2; exit 2 ;;
esac

tools="${XDG_CACHE_HOME:-$HOME/.cache}/mailbridge/pip-tools-$PIP_TOOLS_VERSION"
clean_pip=(env -u PIP_FIND_LINKS -u PIP_EXTRA_INDEX_URL -u PIP_CONSTRAINT PIP_CONFIG_FILE=/dev/null)
if [ ! -x "$tools/bin/pip-compile" ]; then
  python3 -m venv "$tools"
  "${clean_pip[@]}" "$tools/bin/pip" install --quiet "pip==$PIP_VERSION" "pip-tools==$PIP_TOOLS_VERSION"
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mark="$MARK $(fingerprint)"
# lock OUTPUT ARGS...: pip-compile keeps the pins of the existing OUTPUT that still fit.
lock() {
  local output=$1; shift
  [ -f "$output" ] && cp "$output" "$work/out"
  "${clean_pip[@]}" CUSTOM_COMPILE_COMMAND="scripts/lock.sh" "$tools/bin/pip-compile" \
    --quiet --generate-hashes --allow-unsafe --strip-extras --no-emit-index-url \
    "${extra[@]}" --output-file "$work/out" "$@" pyproject.toml
  { echo "$mark"; cat "$work/out"; } > "$output"
  rm -f "$work/out"
  echo "wrote $output: $(grep -c '^[a-z]' "$output") packages"
}
lock "$LOCK" --extra postgres
# The build backend, installed first: mailbridge and any dependency that ships only an
# sdist (dkimpy) are built with --no-build-isolation from these pinned, hashed files.
lock "$BUILD_LOCK" --build-deps-for wheel --only-build-deps
