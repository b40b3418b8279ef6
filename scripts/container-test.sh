#!/usr/bin/env bash
# Builds the container image from nothing with Debian's podman and tests it as a user
# would (`make container`; the last step of `make test`, skipped when
# MAILBRIDGE_SKIP_CONTAINER=1). Needs root: rootful podman and debootstrap.
#
#  1. A Debian base image: debootstrap --variant=minbase (python3, python3-venv,
#     python3-pip, ca-certificates) from the Debian mirror in this machine's apt sources,
#     brought up to date from its -updates and -security suites, then `podman import`.
#     The root file system is cached as a tar under ~/.cache/mailbridge/container, keyed
#     by the Debian release, architecture and package list, and rebuilt after
#     MAILBRIDGE_CONTAINER_BASE_MAX_AGE_DAYS (7) days for security updates.
#  2. podman build --format docker (the OCI format drops HEALTHCHECK) --isolation chroot
#     --network host --pull=never on that base; pip inside the build gets this machine's
#     package-index settings and CA bundle as build secrets, never stored in the image.
#  3. SQLite in a volume: a mail over SMTP, its [Caso 1] acknowledgement in the volume's
#     Maildir, `podman healthcheck run`, `podman stop` exits 0 within the grace time, and
#     a new container on the same volume still has case 1.
#  4. PostgreSQL: two containers on one private server on loopback, each receiving mail:
#     one case and one acknowledgement per mail, none twice.
#
# Everything runs in a podman storage of its own under /var/tmp (runc, a containers.conf
# whose default ulimits stay within this machine's hard limits), removed at the end with
# every container, volume and image in it. Containers use the host's network and listen
# on 127.0.0.1, on ports picked free.
set -euo pipefail
cd "$(dirname "$0")/.."
SRC=$PWD

PACKAGES="python3 python3-venv python3-pip ca-certificates"
BASE_RECIPE=1              # bump when the way the base is made changes
GRACE=15                   # seconds `podman stop` waits before SIGKILL
MAX_AGE_DAYS=${MAILBRIDGE_CONTAINER_BASE_MAX_AGE_DAYS:-7}
CACHE_DIR=${MAILBRIDGE_CONTAINER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mailbridge/container}

started=$SECONDS
passed=0
finished=0
log() { printf '[container-test %4ss] %s\n' "$((SECONDS - started))" "$*"; }
ok() { passed=$((passed + 1)); log "ok: $*"; }
fail() { printf '[container-test %4ss] FAIL: %s\n' "$((SECONDS - started))" "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || fail "run as root (rootful podman and debootstrap): sudo $0"

# -- Debian packages ---------------------------------------------------------------------
pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1; }
need=()
command -v podman >/dev/null || need+=(podman)
command -v runc >/dev/null || need+=(runc)
command -v debootstrap >/dev/null || need+=(debootstrap)
[ -n "$(pg_bin)" ] || need+=(postgresql)
if [ ${#need[@]} -gt 0 ]; then
  log "installing Debian packages: ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# -- a podman of our own -----------------------------------------------------------------
work=$(mktemp -d /var/tmp/mbct.XXXXXX)
pg_dir=""
containers=()

podlog=$work/podman.log
pm() { podman --root "$work/storage" --runroot "$work/run" --storage-driver overlay "$@"; }

cleanup() {
  local status=$?
  set +e
  if [ "$status" -ne 0 ]; then
    for c in "${containers[@]}"; do
      echo "--- logs of $c (last 40 lines)" >&2
      pm logs --tail 40 "$c" >&2 2>&1
    done
    [ -s "$podlog" ] && { echo "--- podman (last 20 lines)" >&2; tail -20 "$podlog" >&2; }
  fi
  local cleaning=$SECONDS
  if [ -d "$work/storage" ]; then
    pm rm --all --force --time 0 >/dev/null 2>&1
    pm volume rm --all --force >/dev/null 2>&1
    pm rmi --all --force >/dev/null 2>&1
  fi
  if [ -n "$pg_dir" ]; then
    runuser -u postgres -- "$(pg_bin)/pg_ctl" -D "$pg_dir/data" -m immediate stop >/dev/null 2>&1
    rm -rf "$pg_dir"
  fi
  # Nothing of ours stays mounted (a failed debootstrap leaves /proc in its target).
  grep -o " $work[^ ]*" /proc/mounts | sort -r | while read -r m; do umount -l "$m"; done
  rm -rf --one-file-system "$work"
  echo "container-test: cleaned up in $((SECONDS - cleaning)) s"
  [ "$status" -eq 0 ] || echo "container-test: failed after $((SECONDS - started)) s" >&2
  [ "$status" -eq 0 ] && [ "$finished" = 1 ] || status=1
  # The closing line, in the form CI reads.
  echo "container: $passed passed, $((status == 0 ? 0 : 1)) failed"
  exit "$status"
}
trap cleanup EXIT

scripts/lock.sh --check >/dev/null || fail "the lock files are stale (above)"
ok "requirements.lock and requirements-build.lock match pyproject.toml"

limit() {  # limit HARD DEFAULT: DEFAULT, or the hard limit when lower
  if [ "$1" = unlimited ] || [ "$1" -ge "$2" ]; then echo "$2"; else echo "$1"; fi
}
nofile=$(limit "$(ulimit -Hn)" 20000)
nproc=$(limit "$(ulimit -Hu)" 32768)
# crun fails on this machine's cgroup layout: runc. No systemd here: cgroupfs, file events.
cat > "$work/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF
export CONTAINERS_CONF=$work/containers.conf

# -- 1. the Debian base image ------------------------------------------------------------
. /etc/os-release
[ "${ID:-}" = debian ] && [ -n "${VERSION_CODENAME:-}" ] \
  || fail "the base image is debootstrapped from this machine's Debian release; this is ${ID:-unknown}"
arch=$(dpkg --print-architecture)

# The Debian mirrors in this machine's apt sources: "URI SUITE" for this release's suites.
debian_sources() {
  python3 - "$VERSION_CODENAME" <<'PY'
import glob, sys
codename = sys.argv[1]
entries = []  # (uri, suite)
for path in ["/etc/apt/sources.list", *sorted(glob.glob("/etc/apt/sources.list.d/*.list"))]:
    try:
        lines = open(path, encoding="utf-8").read().splitlines()
    except OSError:
        continue
    for line in lines:
        words = line.split("#", 1)[0].split()
        if words[:1] == ["deb"]:
            words = [w for w in words[1:] if not w.startswith("[")]
            if len(words) >= 3 and "main" in words[2:]:
                entries.append((words[0], words[1]))
for path in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
    text = open(path, encoding="utf-8").read()
    for stanza in text.split("\n\n"):
        fields = {}
        for line in stanza.splitlines():
            if line and not line.startswith(("#", " ", "\t")) and ":" in line:
                key, value = line.split(":", 1)
                fields[key.strip().lower()] = value.split()
        if "deb" in fields.get("types", []) and "main" in fields.get("components", []) \
                and fields.get("enabled", ["yes"]) != ["no"]:
            entries += [(uri, suite) for uri in fields.get("uris", [])
                        for suite in fields.get("suites", [])]
for uri, suite in entries:
    if suite == codename or suite.startswith(codename + "-"):
        print(uri.rstrip("/"), suite)
PY
}
sources=$(debian_sources)
mirror=$(awk -v s="$VERSION_CODENAME" '$2 == s {print $1; exit}' <<<"$sources")
[ -n "$mirror" ] || fail "no Debian mirror for $VERSION_CODENAME in /etc/apt/sources*"

key=$(printf '%s\n' "$BASE_RECIPE" "$VERSION_CODENAME" "$arch" "$PACKAGES" | sha256sum | cut -c1-16)
base_tar=$CACHE_DIR/base-$VERSION_CODENAME-$arch-$key.tar
if [ -f "$base_tar" ] && [ -z "$(find "$base_tar" -mtime "+$MAX_AGE_DAYS")" ]; then
  log "base: cached $base_tar"
else
  log "base: debootstrap --variant=minbase $VERSION_CODENAME from $mirror ($PACKAGES)"
  rootfs=$work/rootfs
  debootstrap --variant=minbase --include="${PACKAGES// /,}" "$VERSION_CODENAME" "$rootfs" \
    "$mirror" > "$work/debootstrap.log" 2>&1 || { tail -20 "$work/debootstrap.log" >&2; fail "debootstrap"; }
  # The release's -updates and -security suites, as this machine has them.
  awk '{print "deb " $1 " " $2 " main"}' <<<"$sources" > "$rootfs/etc/apt/sources.list"
  log "base: debootstrap done; updates from ${VERSION_CODENAME}-updates and -security"
  { chroot "$rootfs" apt-get update -qq \
      && chroot "$rootfs" env DEBIAN_FRONTEND=noninteractive apt-get -y -qq upgrade
  } > "$work/apt.log" 2>&1 || { tail -20 "$work/apt.log" >&2; fail "apt-get upgrade in the base"; }
  # Slim like Debian's container images: no documentation, manuals or translations, now
  # or in packages installed later.
  cat > "$rootfs/etc/dpkg/dpkg.cfg.d/excludes" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
EOF
  chroot "$rootfs" apt-get clean
  find "$rootfs/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
  find "$rootfs/usr/share/doc" -mindepth 1 -type d -empty -delete
  rm -rf "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* "$rootfs"/var/lib/apt/lists/* \
    "$rootfs"/var/cache/debconf/*-old "$rootfs"/var/log/*.log
  find "$rootfs/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias -exec rm -rf {} +
  : > "$rootfs/etc/resolv.conf"   # podman provides its own
  echo localhost > "$rootfs/etc/hostname"
  mkdir -p "$CACHE_DIR"
  rm -f "$CACHE_DIR"/base-*.tar      # one base at a time
  tar --numeric-owner --xattrs -C "$rootfs" -cf "$base_tar.$$" .
  mv "$base_tar.$$" "$base_tar"     # atomic: a concurrent run sees all or nothing
  rm -rf --one-file-system "$rootfs"
  log "base: built and cached $base_tar ($(du -m "$base_tar" | cut -f1) MB)"
fi
base_image=localhost/mailbridge-base:$key
pm import --change 'CMD ["/bin/bash"]' "$base_tar" "$base_image" >>"$podlog" 2>&1 \
  || fail "podman import"
ok "base: imported as $base_image"

# -- 2. the image ------------------------------------------------------------------------
# pip's package-index settings of this machine, for the build only: index URLs (local
# file:// folders left out: they are not in the build), trusted hosts, proxy, timeouts,
# and its CA bundle as /run/secrets/pipca.
python3 - "$work/pip.conf" "$work/pip-ca" <<'PY'
import os, subprocess, sys, shutil
conf_path, ca_path = sys.argv[1], sys.argv[2]
try:
    out = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True,
                         text=True, timeout=60, check=False).stdout
except (OSError, subprocess.SubprocessError):
    out = ""
values: dict[str, str] = {}
env_values: dict[str, str] = {}
for line in out.splitlines():
    name, sep, value = line.partition("=")
    if not sep or "." not in name:
        continue
    section, key = name.rsplit(".", 1)
    if section in ("global", "install", "download", ":env:"):
        (env_values if section == ":env:" else values)[key] = value.strip().strip("'\"")
values.update(env_values)
settings = []
for key in ("index-url", "extra-index-url", "trusted-host", "proxy", "timeout",
            "default-timeout", "retries"):
    value = values.get(key)
    if key.endswith("index-url") and value:
        value = " ".join(u for u in value.split() if u.startswith(("http://", "https://")))
    if value:
        settings.append(f"{'timeout' if key == 'default-timeout' else key} = {value}")
ca = values.get("cert") or os.environ.get("PIP_CERT") or "/etc/ssl/certs/ca-certificates.crt"
if os.path.isfile(ca):
    shutil.copyfile(ca, ca_path)
    settings.append("cert = /run/secrets/pipca")
with open(conf_path, "w", encoding="utf-8") as f:
    f.write("[global]\n" + "".join(s + "\n" for s in settings))
PY
secrets=(--secret "id=pipconf,src=$work/pip.conf")
[ -f "$work/pip-ca" ] && secrets+=(--secret "id=pipca,src=$work/pip-ca")
image=localhost/mailbridge:container-test
build_started=$SECONDS
pm build --format docker --isolation chroot --network host --pull=never --layers=false \
  --build-arg "BASE_IMAGE=$base_image" "${secrets[@]}" -t "$image" -f Dockerfile . \
  > "$work/build.log" 2>&1 || { tail -40 "$work/build.log" >&2; fail "podman build"; }
size_mb=$(( $(pm image inspect --format '{{.Size}}' "$image") / 1000000 ))
ok "build: $image in $((SECONDS - build_started)) s, $size_mb MB"

# Nothing of the build's pip settings is in the image.
leftover=$(pm run --rm --network host "$image" sh -c \
  'ls /etc/pip.conf /etc/xdg/pip /run/secrets 2>/dev/null; pip config list; env | grep ^PIP_' \
  2>>"$podlog" || true)
[ -z "$leftover" ] || fail "the image keeps build-time pip settings: $leftover"
if [ -f "$work/pip-ca" ]; then
  ca_sum=$(sha256sum < "$work/pip-ca" | cut -d' ' -f1)
  ca_size=$(stat -c %s "$work/pip-ca")
  image_ca=$(pm run --rm "$image" sha256sum /etc/ssl/certs/ca-certificates.crt 2>>"$podlog" \
    | cut -d' ' -f1)
  if [ "$ca_sum" != "$image_ca" ]; then   # the host's own bundle: it must not be in the image
    found=$(pm run --rm --user 0 "$image" sh -c \
      "find / -xdev -type f -size ${ca_size}c -exec sha256sum {} + | grep $ca_sum" \
      2>>"$podlog" || true)
    [ -z "$found" ] || fail "the build's CA bundle is in the image: $found"
  fi
fi
[ "$(pm image inspect --format '{{.Config.User}}' "$image")" = "10001:10001" ] \
  || fail "the image does not run as the mailbridge user"
ok "image: no pip settings or CA bundle left from the build, runs as 10001"

# -- helpers for the runs ----------------------------------------------------------------
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

start() {  # start NAME VOLUME SMTP_PORT HTTP_PORT [podman run options...]
  local name=$1 volume=$2 smtp=$3 http=$4; shift 4
  containers+=("$name")
  pm run -d --name "$name" --network host -v "$volume:/var/lib/mailbridge" \
    -e "MAILBRIDGE_SMTP_LISTEN=127.0.0.1:$smtp" -e "MAILBRIDGE_HTTP_LISTEN=127.0.0.1:$http" \
    "$@" "$image" >>"$podlog" 2>&1 || fail "podman run $name"
}

wait_healthy() {  # wait_healthy NAME: `podman healthcheck run` says healthy within 120 s
  local deadline=$((SECONDS + 120))
  until pm healthcheck run "$1" >>"$podlog" 2>&1; do
    [ "$(pm inspect --format '{{.State.Running}}' "$1")" = true ] || fail "$1 exited"
    [ $SECONDS -lt $deadline ] || fail "$1 not healthy after 120 s"
    sleep 0.5
  done
}

stop() {  # stop NAME: exits 0 on SIGTERM before the grace time ends
  local begin=$SECONDS code
  pm stop --time "$GRACE" "$1" >>"$podlog" 2>&1 || fail "podman stop $1"
  code=$(pm inspect --format '{{.State.ExitCode}}' "$1")
  [ "$code" = 0 ] || fail "$1 exited $code after SIGTERM"
  [ $((SECONDS - begin)) -lt "$GRACE" ] || fail "$1 took the whole grace time to stop"
}

send() {  # send PORT FROM SUBJECT: one mail over SMTP
  python3 - "$@" <<'PY'
import smtplib, sys
from email.message import EmailMessage
port, sender, subject = int(sys.argv[1]), sys.argv[2], sys.argv[3]
m = EmailMessage()
m["From"], m["To"], m["Subject"] = sender, "soporte-a@mesa.example", subject
m.set_content(f"Explicación detallada del incidente ({subject}): no llegan los correos.")
with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
    smtp.send_message(m)
PY
}

# acks N DIR...: wait (60 s at most) until the Maildirs hold N acknowledgements to the
# customers (the demo tenant TEN-1001 at compensar.example), then
# check that cases 1..N are each acknowledged once; prints "number<TAB>subject" lines.
acks() {
  python3 - "$@" <<'PY'
import email, email.policy, re, sys, time
from pathlib import Path
want, dirs = int(sys.argv[1]), [Path(d) / "outbound" / "new" for d in sys.argv[2:]]
def read():
    found = []
    for d in dirs:
        for f in sorted(d.glob("*")) if d.is_dir() else []:
            msg = email.message_from_bytes(f.read_bytes(), policy=email.policy.default)
            m = re.match(r"\[Caso (\d+)\] (.*)", str(msg["Subject"]))
            # The customer's acknowledgement, not the desk's own notice of the new case.
            if m and str(msg["To"]).endswith("@compensar.example"):
                found.append((int(m.group(1)), m.group(2), str(msg["To"])))
    return found
deadline = time.monotonic() + 60
while len(read()) < want and time.monotonic() < deadline:
    time.sleep(0.2)
time.sleep(1.0)  # a duplicate would come right behind
found = read()
numbers = sorted(n for n, _, _ in found)
if numbers != list(range(1, want + 1)) or len({s for _, s, _ in found}) != want:
    sys.exit(f"expected cases 1..{want} acknowledged once each, got {sorted(found)}")
for n, subject, to in sorted(found):
    print(f"{n}\t{subject}\t{to}")
PY
}

# -- 3. SQLite in a volume ---------------------------------------------------------------
pm volume create mb-sqlite >>"$podlog" 2>&1
vol_dir=$(pm volume inspect --format '{{.Mountpoint}}' mb-sqlite)
smtp=$(free_port); http=$(free_port)
start mb-sqlite-1 mb-sqlite "$smtp" "$http" -e MAILBRIDGE_DB_UPGRADE_ON_START=1
wait_healthy mb-sqlite-1
# The check reads MAILBRIDGE_HTTP_LISTEN: pointed at a closed port it reports unhealthy.
if pm exec -e MAILBRIDGE_HTTP_LISTEN="127.0.0.1:$(free_port)" mb-sqlite-1 \
     python /opt/mailbridge/healthcheck.py >/dev/null 2>&1; then
  fail "the health check passes with nothing listening"
fi
ok "sqlite: healthy on 127.0.0.1:$http (HEALTHCHECK follows MAILBRIDGE_HTTP_LISTEN)"
send "$smtp" ana@compensar.example "TEN-1001 Caída del servicio de correo"
got=$(acks 1 "$vol_dir") || fail "no [Caso 1] acknowledgement in the volume's Maildir"
grep -q "ana@compensar.example" <<<"$got" || fail "the acknowledgement is not to ana: $got"
ok "sqlite: [Caso 1] acknowledgement in the volume's outbound/new"
stop mb-sqlite-1
ok "sqlite: podman stop: exit 0 within ${GRACE} s"
start mb-sqlite-2 mb-sqlite "$smtp" "$http"
wait_healthy mb-sqlite-2
pm exec mb-sqlite-2 mailbridge tickets show 1 --json > "$work/case1.json" \
  || fail "case 1 is not in the new container"
python3 - "$work/case1.json" <<'PY' || fail "case 1 in the new container is not the mail sent"
import json, sys
case = json.load(open(sys.argv[1]))
assert case["number"] == 1 and case["tenant_id"] == "TEN-1001", case
assert case["sender"] == "ana@compensar.example", case
PY
send "$smtp" luis@compensar.example "TEN-1001 Segunda consulta desde el contenedor nuevo"
acks 2 "$vol_dir" >/dev/null || fail "the new container did not go on with case 2"
stop mb-sqlite-2
ok "sqlite: a new container on the volume has case 1 and numbers the next mail 2"

# -- 4. two containers on one PostgreSQL -------------------------------------------------
# A private server on loopback, as tests/support/postgres.py starts it.
pg_dir=$(mktemp -d /var/tmp/mbct-pg.XXXXXX)
chown postgres:postgres "$pg_dir"
pg_port=$(free_port)
runuser -u postgres -- "$(pg_bin)/initdb" -D "$pg_dir/data" -A trust -U mailbridge -E UTF8 \
  --locale=C.UTF-8 >"$pg_dir/initdb.log" 2>&1 || fail "initdb: $(tail -5 "$pg_dir/initdb.log")"
runuser -u postgres -- "$(pg_bin)/pg_ctl" -D "$pg_dir/data" -l "$pg_dir/log" -w -t 30 \
  -o "-p $pg_port -k $pg_dir -c listen_addresses=127.0.0.1 -c fsync=off" start >/dev/null \
  || fail "pg_ctl start: $(tail -5 "$pg_dir/log")"
"$(pg_bin)/createdb" -h 127.0.0.1 -p "$pg_port" -U mailbridge mailbridge
db_url=postgresql://mailbridge@127.0.0.1:$pg_port/mailbridge
log "postgresql: private server on 127.0.0.1:$pg_port"

dirs=()
ports=()
for i in 1 2; do
  pm volume create "mb-pg-$i" >>"$podlog" 2>&1
  dirs+=("$(pm volume inspect --format '{{.Mountpoint}}' "mb-pg-$i")")
  smtp=$(free_port); http=$(free_port); ports+=("$smtp")
  # One replica upgrades the schema; the other starts once it is there.
  upgrade=$([ "$i" = 1 ] && echo 1 || echo 0)
  start "mb-pg-$i" "mb-pg-$i" "$smtp" "$http" -e "MAILBRIDGE_DATABASE_URL=$db_url" \
    -e "MAILBRIDGE_DB_UPGRADE_ON_START=$upgrade"
  wait_healthy "mb-pg-$i"
done
ok "postgresql: two containers healthy, the first ran db upgrade"
# Eight different issues (close subjects of one tenant would join an open case).
subjects=("No llegan las facturas electrónicas" "Error al iniciar sesión en el portal"
  "Lentitud en la consulta de afiliados" "Certificado vencido en el sitio web"
  "Impresora de la sede norte sin conexión" "Copia de seguridad nocturna fallida"
  "Usuario bloqueado tras cambio de clave" "Solicitud de acceso a la VPN corporativa")
mails=${#subjects[@]}
for n in $(seq 0 $((mails - 1))); do   # alternately to each container, from ana and luis
  send "${ports[$((n % 2))]}" "$([ $((n % 2)) = 0 ] && echo ana || echo luis)@compensar.example" \
    "TEN-1001 ${subjects[$n]}"
done
acks "$mails" "${dirs[@]}" > "$work/acks" || fail "not one acknowledgement per mail"
ok "postgresql: $mails mails to both containers, one acknowledgement each"
pm exec mb-pg-2 mailbridge tickets list --json > "$work/cases.json"
python3 - "$work/cases.json" "$mails" <<'PY' || fail "not one case per mail"
import json, sys
cases, want = json.load(open(sys.argv[1])), int(sys.argv[2])
numbers = sorted(c["number"] for c in cases)
subjects = {c["subject"] for c in cases}
assert numbers == list(range(1, want + 1)) and len(subjects) == want, (numbers, subjects)
PY
ok "postgresql: $mails cases, numbered 1 to $mails"
for i in 1 2; do stop "mb-pg-$i"; done
ok "postgresql: both stopped with exit 0 within ${GRACE} s"

log "passed: image $size_mb MB, all in $((SECONDS - started)) s"
finished=1
