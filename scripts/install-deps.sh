#!/usr/bin/env bash
# Installs the Debian packages that `make demo` and `make test` need and a
# fresh machine lacks. Idempotent and quick when all are there; `make deps`
# (a prerequisite of demo, test and cluster-up) runs it. Needs root.
#
#   real node      containerd runc containernetworking-plugins iptables conntrack
#   images         debootstrap umoci (images/build.sh)
#   real servers   redis-server rabbitmq-server postgresql mariadb-server (the
#                  drain and controller suites start their own; never as services)
#   builds         default-libmysqlclient-dev pkg-config build-essential (mysqlclient)
#   docs check     chromium (headless, opens the built documentation site: make docs-check)
set -euo pipefail
packages=(containerd runc containernetworking-plugins iptables conntrack debootstrap umoci
          openssl iproute2 redis-server rabbitmq-server postgresql mariadb-server
          default-libmysqlclient-dev pkg-config build-essential chromium)
missing=()
for p in "${packages[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
[ ${#missing[@]} -gt 0 ] || exit 0
[ "$(id -u)" = 0 ] || { echo "install-deps: needs root to install: ${missing[*]}" >&2; exit 1; }
echo "installing ${missing[*]}"
# Keep Debian from starting the packages' services: the cluster and the tests
# start their own (containerd included, with its own config and state dir).
printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
chmod +x /usr/sbin/policy-rc.d
trap 'rm -f /usr/sbin/policy-rc.d' EXIT
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
