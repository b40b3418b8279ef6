# mailbridge: non-root, data in a volume, installed non-editable into /opt/mailbridge/.venv
# from the hash-pinned requirements.lock (scripts/lock.sh writes it).
#   docker build -t mailbridge .          (README: Container)
# BASE_IMAGE: an image with python3 (3.11+) and its venv module; scripts/container-test.sh
# builds on a Debian base it makes with debootstrap. Build with `--format docker` under
# podman/buildah: the OCI format has no HEALTHCHECK.
ARG BASE_IMAGE=python:3.11-slim

# -- build: the venv, then mailbridge's wheel into it; only the venv goes on -------------
FROM ${BASE_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY requirements-build.lock requirements.lock /tmp/mailbridge/
# The package index's settings and CA bundle, when a build needs them, are build-time
# secrets (never in a layer): --secret id=pipconf,src=pip.conf [--secret id=pipca,src=ca.crt]
# with `cert = /run/secrets/pipca` in that pip.conf. Without them pip uses its defaults.
# The build backend goes first: dkimpy (an sdist) and mailbridge build with it.
RUN --mount=type=secret,id=pipconf,target=/etc/pip.conf \
    --mount=type=secret,id=pipca,target=/run/secrets/pipca \
    python3 -m venv /opt/mailbridge/.venv \
 && /opt/mailbridge/.venv/bin/pip install --quiet --no-deps --require-hashes \
      -r /tmp/mailbridge/requirements-build.lock \
 && /opt/mailbridge/.venv/bin/pip install --quiet --no-deps --require-hashes \
      --no-build-isolation -r /tmp/mailbridge/requirements.lock
COPY pyproject.toml README.md /tmp/mailbridge/src/
COPY mailbridge /tmp/mailbridge/src/mailbridge
COPY alembic /tmp/mailbridge/src/alembic
COPY templates /tmp/mailbridge/src/templates
# Non-editable: the code, templates and migrations are copied into the venv
# (templates and migrations under .venv/share/mailbridge); nothing from the index.
RUN /opt/mailbridge/.venv/bin/pip install --quiet --no-deps --no-index --no-build-isolation \
      /tmp/mailbridge/src \
 && /opt/mailbridge/.venv/bin/pip check

# -- the image ---------------------------------------------------------------------------
FROM ${BASE_IMAGE}
# MALLOC_MMAP_THRESHOLD_: glibc hands freed big message buffers back (mailbridge/memory.py).
# MAILBRIDGE_DRAIN_TIMEOUT: a drain that ends before `docker stop`'s 10 s; give more with
# --stop-timeout and a larger value.
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    PATH=/opt/mailbridge/.venv/bin:$PATH \
    MALLOC_MMAP_THRESHOLD_=131072 \
    MAILBRIDGE_DATA_DIR=/var/lib/mailbridge \
    MAILBRIDGE_RULES=/etc/mailbridge/rules.yaml \
    MAILBRIDGE_SMTP_LISTEN=0.0.0.0:2525 \
    MAILBRIDGE_HTTP_LISTEN=0.0.0.0:8025 \
    MAILBRIDGE_DRAIN_TIMEOUT=8 \
    MAILBRIDGE_DB_UPGRADE_ON_START=0

# A fixed uid/gid (10001) so that volumes keep their owner from one base image to another.
RUN groupadd --gid 10001 mailbridge \
 && useradd --uid 10001 --gid mailbridge --no-create-home --home-dir /var/lib/mailbridge \
      --shell /usr/sbin/nologin mailbridge \
 && install -d -o mailbridge -g mailbridge -m 0750 /var/lib/mailbridge \
 && install -d -m 0755 /etc/mailbridge

COPY --from=build /opt/mailbridge/.venv /opt/mailbridge/.venv
COPY rules.yaml /etc/mailbridge/rules.yaml
COPY deploy/container-start.sh /opt/mailbridge/start.sh
COPY deploy/container-healthcheck.py /opt/mailbridge/healthcheck.py

USER 10001:10001
WORKDIR /var/lib/mailbridge
VOLUME ["/var/lib/mailbridge"]
EXPOSE 2525 8025
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
  CMD ["/opt/mailbridge/.venv/bin/python", "/opt/mailbridge/healthcheck.py"]
# check-config, `db upgrade` when MAILBRIDGE_DB_UPGRADE_ON_START=1, then `mailbridge run`;
# SIGTERM drains and exits 0. Any other command runs instead: `mailbridge tickets list`.
CMD ["/opt/mailbridge/start.sh"]
