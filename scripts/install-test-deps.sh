#!/usr/bin/env bash
# Installs the Debian packages the test suite needs (real servers, no mocks):
# Dovecot for the IMAP tests, PostgreSQL for the second database run,
# swaks as a second real SMTP client, Chromium and its driver for the board's browser test.
set -euo pipefail
need=()
command -v dovecot >/dev/null 2>&1 || [ -x /usr/sbin/dovecot ] || need+=(dovecot-imapd)
command -v swaks >/dev/null 2>&1 || need+=(swaks)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
  echo "installing Debian packages for the tests: ${need[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
