#!/usr/bin/env bash
# Idempotent setup for a fresh machine: system packages (when root on Debian/Ubuntu),
# the Python virtualenv, and the pinned CDK CLI + Node 22 from package.json.
# Each step is skipped when what it would install is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

# Any installed PostgreSQL server will do for the local lab (Debian 12 ships 15).
PG_BIN=${PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)}
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}

need_apt=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need_apt+=(nginx)
command -v wrk >/dev/null 2>&1 || need_apt+=(wrk)
command -v dot >/dev/null 2>&1 || need_apt+=(graphviz)
[ -x "$PG_BIN/initdb" ] || need_apt+=(postgresql)
command -v systemd-analyze >/dev/null 2>&1 || need_apt+=(systemd)
command -v runuser >/dev/null 2>&1 || need_apt+=(util-linux)
# The boot rehearsal: containers with systemd as PID 1, their root, their network and data volume.
command -v systemd-nspawn >/dev/null 2>&1 || need_apt+=(systemd-container)
command -v debootstrap >/dev/null 2>&1 || need_apt+=(debootstrap)
command -v mkfs.xfs >/dev/null 2>&1 || need_apt+=(xfsprogs)
command -v ip >/dev/null 2>&1 || need_apt+=(iproute2)
command -v nft >/dev/null 2>&1 || need_apt+=(nftables)
command -v losetup >/dev/null 2>&1 || need_apt+=(mount)
command -v pgrep >/dev/null 2>&1 || need_apt+=(procps)
# The deploy rehearsal: HAProxy stands in for the ALB.
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || need_apt+=(haproxy)

if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing system packages: ${need_apt[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  else
    echo "setup: missing system packages: ${need_apt[*]} (install them with your package manager)" >&2
  fi
fi

# Python: rebuild the venv's packages only when the requirement files change.
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
want=$(cat requirements.txt requirements-dev.txt | sha256sum | cut -d' ' -f1)
have=$(cat .venv/.requirements.sha 2>/dev/null || true)
if [ "$want" != "$have" ]; then
  echo "setup: installing Python packages"
  .venv/bin/pip install -q --disable-pip-version-check -r requirements-dev.txt
  echo "$want" > .venv/.requirements.sha
fi

# Node: the pinned CDK CLI and Node 22 (so jsii prints no end-of-life banner).
want=$(sha256sum package.json package-lock.json 2>/dev/null | sha256sum | cut -d' ' -f1)
have=$(cat node_modules/.setup.sha 2>/dev/null || true)
if [ "$want" != "$have" ] || [ ! -x node_modules/.bin/cdk ]; then
  echo "setup: installing the CDK CLI"
  if [ -f package-lock.json ]; then npm ci --no-audit --no-fund --loglevel=error; else npm install --no-audit --no-fund --loglevel=error; fi
  echo "$want" > node_modules/.setup.sha
fi
