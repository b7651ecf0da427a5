"""PgBouncer in front of the internal PostgreSQL in real pods (database_pgbouncer): site.yml
deploys it in its own namespace (and a re-run changes nothing: conftest.deploy), a DAG runs to
success, and the connections prove the path: PostgreSQL's clients (pg_stat_activity) are the
PgBouncer pods only, PgBouncer's clients (SHOW CLIENTS on each pod's admin console) are the
Airflow pods, in pool mode transaction with no more server connections than the pool size; the
migrate Job alone connects directly.

Real-node suite (see conftest.py), `make test-pgbouncer`: not part of `make test` or
`make test-e2e`. Its own namespace, so run it when the other e2e namespaces are gone (the 2-core
node). The local image is Debian's PgBouncer 1.18 (docs/images.md, pgbouncer).
"""

from __future__ import annotations

import json
import os

from conftest import HERE, RESULTS, kubectl, results, variant_fixtures, wait_for, wait_runs

NAMESPACE = "e2e-pods-pgb"
VARS = HERE / "vars" / "pgbouncer.yml"
API_PORT = int(os.environ.get("ELASTIC_AIRFLOW_E2E_PGB_API_PORT", "18182"))
DAG = "e2e_sleep_append"
POOL_SIZE = 5  # vars/pgbouncer.yml

# Run in the scheduler's container: PgBouncer's admin console on each address given, as the
# Airflow user (stats_users) with the password of the container's own SQLAlchemy URL, which is
# never printed. Prints {address: {"clients": [client addresses], "pools": [SHOW POOLS rows]}}.
ADMIN_CONSOLE = """
import json, os, sys, urllib.parse
import psycopg2
url = urllib.parse.urlsplit(os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
out = {}
for host in sys.argv[1:]:
    conn = psycopg2.connect(host=host, port=6432, dbname="pgbouncer", user=urllib.parse.unquote(url.username),
                            password=urllib.parse.unquote(url.password), connect_timeout=10)
    conn.autocommit = True
    rows = {}
    for what in ("CLIENTS", "POOLS"):
        cur = conn.cursor()
        cur.execute("SHOW " + what)
        names = [d[0] for d in cur.description]
        rows[what] = [dict(zip(names, map(str, r))) for r in cur.fetchall()]
    conn.close()
    out[host] = {"clients": sorted({r["addr"] for r in rows["CLIENTS"] if r["database"] == "airflow"}),
                 "pools": [r for r in rows["POOLS"] if r["database"] == "airflow"]}
print(json.dumps(out))
"""


deployed_pgb, airflow_pgb = variant_fixtures("pgb", NAMESPACE, VARS, API_PORT)


def _pods(core, component):
    return [p for p in core.list_namespaced_pod(NAMESPACE,
                                                label_selector=f"app.kubernetes.io/component={component}").items
            if p.metadata.deletion_timestamp is None and p.status.phase == "Running" and p.status.pod_ip]


def test_a_dag_succeeds_through_pgbouncer(deployed_pgb, airflow_pgb):
    assert len(_pods(deployed_pgb, "pgbouncer")) == 2
    path = f"{RESULTS}/pgb-{os.urandom(3).hex()}.txt"
    airflow_pgb.unpause(DAG)
    run_ids = [airflow_pgb.trigger(DAG, {"path": path, "seconds": 2}, f"pgb-{i}-{os.urandom(3).hex()}")["dag_run_id"]
               for i in range(3)]
    assert wait_runs(airflow_pgb, DAG, run_ids, 300) == ["success"] * 3
    assert sorted(line[0] for line in results(deployed_pgb, path, NAMESPACE)) == sorted(run_ids)


def test_the_airflow_pods_use_pgbouncer_and_only_pgbouncer_uses_the_database(deployed_pgb, airflow_pgb):
    core = deployed_pgb
    bouncers = {p.status.pod_ip: p.metadata.name for p in _pods(core, "pgbouncer")}
    airflow = {c: {p.status.pod_ip for p in _pods(core, c)}
               for c in ("api-server", "scheduler", "dag-processor", "triggerer", "worker")}
    assert all(airflow.values()), airflow

    # PostgreSQL's side: every client of the airflow database is a PgBouncer pod (the local
    # socket's psql of this check has no address).
    query = ("select coalesce(host(client_addr), 'local') from pg_stat_activity "
             "where datname = 'airflow' and pid <> pg_backend_pid()")
    addresses = set(kubectl("exec", "e2e-database-0", "-c", "postgresql", "--", "psql", "-U", "airflow",
                            "-d", "airflow", "-Atc", query, namespace=NAMESPACE).split())
    assert addresses and addresses <= set(bouncers), (addresses, bouncers)
    assert not addresses & set().union(*airflow.values())

    # PgBouncer's side: the Airflow pods are its clients (the Service spreads each pod's
    # connections over both PgBouncer pods), in transaction pooling, within the pool size.
    def admin():
        out = kubectl("exec", "deploy/e2e-scheduler", "-c", "scheduler", "--", "python", "-c", ADMIN_CONSOLE,
                      *sorted(bouncers), namespace=NAMESPACE)
        return json.loads(out.strip().splitlines()[-1])

    def every_component_a_client():
        seen = admin()
        clients = set().union(*(set(v["clients"]) for v in seen.values()))
        return seen if all(ips & clients for ips in airflow.values()) else None
    # A component may hold no connection for a moment: looked at again for a minute.
    seen = wait_for(every_component_a_client, 60, "every Airflow component among PgBouncer's clients", interval=5)
    for host, state in seen.items():
        (pool,) = state["pools"]
        assert pool["pool_mode"] == "transaction", (bouncers[host], pool)
        servers = sum(int(pool[k]) for k in ("sv_active", "sv_idle", "sv_used", "sv_tested", "sv_login"))
        assert servers <= POOL_SIZE, (bouncers[host], pool)


def test_only_the_migrate_job_connects_directly(deployed_pgb):
    jobs = json.loads(kubectl("get", "jobs", "-l", "app.kubernetes.io/component=migrate", "-o", "json",
                              namespace=NAMESPACE))["items"]
    assert jobs
    for job in jobs:
        (container,) = job["spec"]["template"]["spec"]["containers"]
        refs = {e["name"]: e["valueFrom"]["secretKeyRef"]["name"] for e in container["env"]
                if e["name"] == "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"}
        assert refs == {"AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": "e2e-database"}
    scheduler = json.loads(kubectl("get", "deploy", "e2e-scheduler", "-o", "json", namespace=NAMESPACE))
    env = scheduler["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {e["valueFrom"]["secretKeyRef"]["name"] for e in env
            if e["name"] == "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"} == {"e2e-database-pgbouncer"}
