# mailbridge: slim, non-root, data in a volume.
FROM python:3.11-slim

# MALLOC_MMAP_THRESHOLD_: glibc hands freed big message buffers back (mailbridge/memory.py).
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    MALLOC_MMAP_THRESHOLD_=131072 \
    MAILBRIDGE_DATA_DIR=/var/lib/mailbridge \
    MAILBRIDGE_RULES=/etc/mailbridge/rules.yaml \
    MAILBRIDGE_SMTP_LISTEN=0.0.0.0:2525 \
    MAILBRIDGE_HTTP_LISTEN=0.0.0.0:8025

RUN useradd --system --home-dir /var/lib/mailbridge --shell /usr/sbin/nologin mailbridge \
 && mkdir -p /var/lib/mailbridge /etc/mailbridge /opt/mailbridge \
 && chown mailbridge:mailbridge /var/lib/mailbridge

WORKDIR /opt/mailbridge
COPY pyproject.toml README.md ./
COPY mailbridge ./mailbridge
COPY alembic ./alembic
COPY templates ./templates
RUN pip install --no-cache-dir -e '.[postgres]'
COPY rules.yaml /etc/mailbridge/rules.yaml

USER mailbridge
VOLUME ["/var/lib/mailbridge"]
EXPOSE 2525 8025
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s \
  CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8025/healthz', timeout=4).status == 200 else 1)"
# Upgrade the schema, then run; SIGTERM drains and exits 0.
CMD ["sh", "-c", "mailbridge db upgrade && exec mailbridge run"]
