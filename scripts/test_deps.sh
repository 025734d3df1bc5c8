#!/usr/bin/env bash
# System packages the tests run for real (not from PyPI): nginx in front of `serve` in
# offload mode (tests/integration/test_offload.py); node and npm for the AsyncAPI parser and
# the Node producer example (make node); PgBouncer in front of PostgreSQL
# (tests/integration/test_pgbouncer.py, which starts its own on a free port). Installs only what is missing; apt-get
# needs root, so a non-root run says what to install and the nginx tests skip themselves;
# BGWORKER_TEST_INSTALL=no installs nothing, as root too (README, Set up). nftables: the
# multi-host tests (tests/hosts) drop packets inside network namespaces with it.
set -euo pipefail

missing=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
command -v nft >/dev/null 2>&1 || [ -x /usr/sbin/nft ] || missing+=(nftables)
command -v pgbouncer >/dev/null 2>&1 || [ -x /usr/sbin/pgbouncer ] || missing+=(pgbouncer)

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "${BGWORKER_TEST_INSTALL:-yes}" = no ]; then
  echo "test-deps: BGWORKER_TEST_INSTALL=no: not installing ${missing[*]}; their tests skip" >&2
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "test-deps: missing ${missing[*]}: run 'sudo apt-get install -y ${missing[*]}'" >&2
  exit 0
fi
echo "test-deps: installing ${missing[*]}"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
# Debian starts the packaged nginx on port 80; the tests start their own on loopback ports.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet nginx 2>/dev/null; then
  systemctl stop nginx || true
fi
# Likewise Debian's pgbouncer service on 6432 (where systemd or an init script started it):
# stopped and disabled; the tests start their own, as a normal user, on free ports.
if [[ " ${missing[*]} " == *" pgbouncer "* ]]; then
  if command -v systemctl >/dev/null 2>&1; then
    systemctl disable --now pgbouncer >/dev/null 2>&1 || true
  fi
  if [ -x /etc/init.d/pgbouncer ]; then
    /etc/init.d/pgbouncer stop >/dev/null 2>&1 || true
  fi
fi
