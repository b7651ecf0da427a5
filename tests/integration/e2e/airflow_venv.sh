#!/usr/bin/env bash
# Builds (once) and prints the path of the venv the e2e tests run real Airflow
# from: $ELASTIC_AIRFLOW_CACHE/airflow-venv-<hash of requirements-airflow.txt>.
# Kept apart from the collection's venv because Airflow's pins conflict with
# ansible's.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${ELASTIC_AIRFLOW_CACHE:-$HOME/.cache/elastic-airflow}
req="$here/requirements-airflow.txt"
venv="$cache/airflow-venv-$(sha256sum "$req" | cut -c1-12)"
if [ ! -e "$venv/.done" ]; then
    for lib in default-libmysqlclient-dev pkg-config build-essential; do
        dpkg -s "$lib" >/dev/null 2>&1 || echo "airflow_venv.sh: $lib is missing (mysqlclient builds from source)" >&2
    done
    rm -rf "$venv"
    python3 -m venv "$venv" >&2
    "$venv/bin/pip" install --quiet --upgrade pip >&2
    "$venv/bin/pip" install --quiet --no-deps -r "$req" >&2
    "$venv/bin/pip" check >&2
    touch "$venv/.done"
fi
echo "$venv"
