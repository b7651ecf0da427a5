# -*- coding: utf-8 -*-
# Copyright: elastic_airflow developers
# Apache License 2.0 (see LICENSE)
"""A small Celery remote-control client over the broker (Redis or RabbitMQ).

Pure Python (celery/kombu only, no Ansible). Used by the
``celery_worker_drain`` module and by the elastic controller.

Every command is a broadcast addressed to explicit worker hostnames
(``destination=[hostname]``) with a short reply timeout; a command that
expects replies returns as soon as every addressed worker answered (``limit``),
so talking to a healthy worker costs milliseconds, and an absent worker costs
exactly ``timeout`` seconds.

    ctl = CeleryControl("redis://broker:6379/0", timeout=1.0)
    ctl.ping(["celery@worker-0"])            -> {"celery@worker-0": True}
    ctl.workload(["celery@worker-0"])        -> {"celery@worker-0": WorkerLoad(...)}
    ctl.queues("celery@worker-0")            -> [QueueRef("default", ...)]
    ctl.concurrency(["celery@worker-0"])     -> {"celery@worker-0": 16}
    ctl.queue_length(["default"])            -> 3   (messages waiting in the broker)
    ctl.cancel_consumer("celery@worker-0", ["default"])
    ctl.add_consumer("celery@worker-0", [QueueRef("default", ...)])
    ctl.close()

A worker that does not answer is *absent from* the result of ``ping``-like
queries (``ping`` maps it to False); it is never reported as idle.

With ``result_backend`` (the workers' Celery result backend), a task a
worker lists as active is not counted (``WorkerLoad.finished``) when the
backend records it finished (SUCCESS, FAILURE, REVOKED) at or after the time
that listing says it started: Celery 5.5's prefork pool forgets the tasks
that run while the broker connection is re-established, and ``inspect
active`` lists them for good after they end (celery/celery#8541; Celery 5.6
no longer clears that cache). Anything else counts: a record that is not
final (PENDING, STARTED), one older than the listed run (a re-run after a
redelivery), a task listed for less than ``FINISHED_MIN_AGE`` seconds, a
backend that cannot be read. The witness can only clear a task, never
invent one.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import re
import socket
import time
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

__all__ = [
    "BrokerUnreachable",
    "CeleryControl",
    "CeleryControlError",
    "CommandFailed",
    "NoReply",
    "QueueRef",
    "WorkerLoad",
]

LOG = logging.getLogger(__name__)

# Celery's ready states (celery.states.READY_STATES), spelled out so this
# module imports Celery only when it talks to a broker.
FINISHED_STATES = frozenset(("SUCCESS", "FAILURE", "REVOKED"))
# Only a task listed as active this long is looked up: a task that just ended is listed for a moment.
FINISHED_MIN_AGE = 30.0


class CeleryControlError(Exception):
    """Base class of every error raised by this module."""


class BrokerUnreachable(CeleryControlError):
    """The broker could not be reached (connection refused, DNS, auth, timeout)."""


class NoReply(CeleryControlError):
    """An addressed worker did not answer a command within the timeout."""

    def __init__(self, hostname: str, command: str, timeout: float):
        super().__init__(
            "celery worker %r did not answer %r within %.1fs (is the hostname right, "
            "and is the worker running and connected to this broker?)" % (hostname, command, timeout)
        )
        self.hostname = hostname
        self.command = command


class CommandFailed(CeleryControlError):
    """A worker answered a command with an error."""


@dataclasses.dataclass(frozen=True)
class WorkerLoad:
    """What one worker holds: task ids it is running, has prefetched, and holds for an ETA.

    ``finished``: ids the worker lists as active that the result backend
    records as finished; not part of ``active``, ``total`` or ``idle``.
    """

    active: Tuple[str, ...] = ()
    reserved: Tuple[str, ...] = ()
    scheduled: Tuple[str, ...] = ()
    finished: Tuple[str, ...] = ()

    @property
    def total(self) -> int:
        return len(self.active) + len(self.reserved) + len(self.scheduled)

    @property
    def idle(self) -> bool:
        return self.total == 0

    @property
    def task_ids(self) -> Tuple[str, ...]:
        return tuple(sorted(set(self.active) | set(self.reserved) | set(self.scheduled)))

    def counts(self) -> Dict[str, int]:
        return {"active": len(self.active), "reserved": len(self.reserved), "scheduled": len(self.scheduled)}


@dataclasses.dataclass(frozen=True)
class QueueRef:
    """A queue a worker consumes from, with what ``add_consumer`` needs to restore it."""

    name: str
    exchange: Optional[str] = None
    exchange_type: Optional[str] = None
    routing_key: Optional[str] = None

    def to_dict(self) -> Dict[str, Optional[str]]:
        return dataclasses.asdict(self)

    @classmethod
    def from_any(cls, value: Union["QueueRef", str, dict]) -> "QueueRef":
        if isinstance(value, QueueRef):
            return value
        if isinstance(value, str):
            return cls(value)
        return cls(
            name=value["name"],
            exchange=value.get("exchange"),
            exchange_type=value.get("exchange_type"),
            routing_key=value.get("routing_key"),
        )


QueueLike = Union[QueueRef, str, dict]


def _without_url(exc: BaseException) -> str:
    """An exception's type and message, with anything that looks like a URL (it may hold a password) masked."""
    return "%s: %s" % (type(exc).__name__, re.sub(r"[A-Za-z][A-Za-z0-9+.-]*://\S+", "<url>", str(exc)))


class ResultBackend:
    """Reads tasks' final states from the workers' Celery result backend; every read is bounded.

    A database backend (``db+<SQLAlchemy URL>``, Airflow's default) is read
    with one SELECT per call on a cached engine of one connection, with
    connect and statement timeouts: Celery's own database backend builds an
    engine per read in a process that does not fork, creates its tables, and
    retries for seconds. Any other backend (``redis://`` ...) goes through
    Celery's backend API with short socket timeouts. After a failure nothing
    is read for ``RETRY_SECONDS`` (``records`` raises at once meanwhile).
    """

    TIMEOUT = 5
    RETRY_SECONDS = 30.0
    TABLE = "celery_taskmeta"  # Celery's default (database_table_names), which Airflow keeps

    def __init__(self, url: str, app=None, monotonic=time.monotonic):
        self.url = url
        self.app = app
        self.monotonic = monotonic
        self._engine = None
        self._blocked_until = 0.0
        self._last_error = ""

    def records(self, task_ids: Sequence[str]) -> Dict[str, Tuple[Optional[str], Optional[float]]]:
        """{task id: (state, date_done as epoch seconds or None)}; a task it does not know is absent."""
        if not task_ids:
            return {}
        if self.monotonic() < self._blocked_until:
            raise CeleryControlError("the Celery result backend failed %.0f s ago (%s); retried later"
                                     % (self.RETRY_SECONDS - (self._blocked_until - self.monotonic()),
                                        self._last_error))
        try:
            if self.url.startswith("db+"):
                return self._select(list(task_ids))
            return self._get(list(task_ids))
        except Exception as exc:
            self._blocked_until = self.monotonic() + self.RETRY_SECONDS
            self._last_error = _without_url(exc)
            raise CeleryControlError("cannot read the Celery result backend: %s" % self._last_error) from None

    def _select(self, task_ids):
        import sqlalchemy as sa

        if self._engine is None:
            url = sa.engine.make_url(self.url[len("db+"):])
            connect_args = {}
            if url.get_backend_name() == "postgresql":
                connect_args = {"connect_timeout": self.TIMEOUT}
                if url.get_driver_name() == "psycopg":  # psycopg 3 prepares statements, which PgBouncer cannot keep
                    connect_args["prepare_threshold"] = None
            elif url.get_backend_name() == "mysql":
                connect_args = {"connect_timeout": self.TIMEOUT, "read_timeout": self.TIMEOUT}
            pool = {} if url.get_backend_name() == "sqlite" else {"pool_size": 1, "max_overflow": 0}
            self._engine = sa.create_engine(url, connect_args=connect_args, pool_pre_ping=True, pool_recycle=300,
                                            **pool)
        query = sa.text("SELECT task_id, status, date_done FROM %s WHERE task_id IN :ids" % self.TABLE)
        query = query.bindparams(sa.bindparam("ids", expanding=True))
        with self._engine.begin() as conn:
            if self._engine.dialect.name == "postgresql":
                # SET LOCAL, not a startup option: PgBouncer refuses `options`, and a plain SET would outlive
                # the transaction on a pooled server connection
                conn.execute(sa.text("SET LOCAL statement_timeout = %d" % (self.TIMEOUT * 1000)))
            rows = conn.execute(query, {"ids": task_ids}).fetchall()
        return dict((row[0], (row[1], _epoch(row[2]))) for row in rows)

    def _get(self, task_ids):
        backend = self.app.backend
        out = {}
        for task_id in task_ids:
            meta = backend.get_task_meta(task_id) or {}
            if meta.get("status") and meta["status"] != "PENDING":
                out[task_id] = (meta["status"], _epoch(meta.get("date_done")))
        return out

    def close(self):
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None


def _epoch(value) -> Optional[float]:
    """Epoch seconds of a result's date_done: a datetime (naive: UTC, Celery's default zone) or an ISO string."""
    if isinstance(value, str):
        try:
            value = datetime.datetime.fromisoformat(value)
        except ValueError:
            return None
    if not isinstance(value, datetime.datetime):
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=datetime.timezone.utc)
    return value.timestamp()


def _time_start(entry) -> Optional[float]:
    """When the worker started the task of an ``inspect active`` entry (epoch seconds), or None."""
    value = entry.get("time_start") if isinstance(entry, dict) else None
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _task_id(entry) -> Optional[str]:
    """Task id of an inspect entry (active/reserved: request dict; scheduled: {'request': ...})."""
    if not isinstance(entry, dict):
        return None
    if "request" in entry and isinstance(entry["request"], dict):
        entry = entry["request"]
    return entry.get("id")


class CeleryControl:
    """Remote control of Celery workers through their broker.

    ``broker_url``: the workers' broker (``redis://``, ``rediss://``, ``amqp://``,
    ``amqps://``, ...). ``timeout``: seconds to wait for replies of one command.
    ``connect_timeout``: seconds to establish the broker connection (default:
    ``timeout``). ``app``: an existing Celery app to use instead (its broker and
    ``control_exchange`` are used; ``broker_url`` may then be None).
    ``result_backend``: the workers' result backend URL (e.g. Airflow's
    ``db+postgresql://...``); tasks it records as finished are not counted as
    active (module docstring). None: trust ``inspect active`` alone.
    """

    def __init__(
        self,
        broker_url: Optional[str],
        timeout: float = 1.0,
        connect_timeout: Optional[float] = None,
        app=None,
        transport_options: Optional[dict] = None,
        result_backend: Optional[str] = None,
    ):
        if timeout is None or float(timeout) <= 0:
            raise ValueError("timeout must be > 0 seconds, got %r" % (timeout,))
        self.timeout = float(timeout)
        self.connect_timeout = float(connect_timeout) if connect_timeout else self.timeout
        if app is None:
            if not broker_url:
                raise ValueError("broker_url is required (e.g. redis://host:6379/0 or amqp://user:pw@host:5672//)")
            from celery import Celery

            app = Celery("elastic-airflow-control", broker=broker_url, set_as_current=False)
            app.conf.update(
                broker_connection_timeout=self.connect_timeout,
                broker_connection_retry=False,
                broker_connection_retry_on_startup=False,
                broker_connection_max_retries=0,
                broker_transport_options=dict(transport_options or {}),
                # nothing of ours is a task; keep the client side minimal
                worker_hijack_root_logger=False,
            )
        self.app = app
        self.results = None
        if result_backend:
            # short socket timeouts and no retries for the backends read through Celery (redis://, ...)
            app.conf.update(result_backend=result_backend, redis_socket_timeout=ResultBackend.TIMEOUT,
                            redis_socket_connect_timeout=ResultBackend.TIMEOUT, result_backend_always_retry=False)
            self.results = ResultBackend(result_backend, app)
        self.clock = time.time
        self._conn = None

    # -- connection -----------------------------------------------------------

    def connect(self) -> None:
        """Connect to the broker now (raises BrokerUnreachable); commands connect lazily otherwise."""
        self._connection()

    def _connection(self):
        if self._conn is None:
            conn = self.app.connection_for_write()
            try:
                conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=self.connect_timeout)
            except Exception as exc:  # kombu raises OperationalError, socket errors, auth errors ...
                try:
                    conn.release()
                except Exception:  # pragma: no cover - best effort
                    pass
                raise BrokerUnreachable("cannot reach the Celery broker %s: %s" % (self.safe_broker_url, exc)) from exc
            self._conn = conn
        return self._conn

    @property
    def safe_broker_url(self) -> str:
        """The broker URL with its password masked (for messages)."""
        try:
            return self.app.connection_for_write().as_uri(include_password=False)
        except Exception:  # pragma: no cover
            return "<broker>"

    def close(self) -> None:
        if self.results is not None:
            self.results.close()
        if self._conn is not None:
            try:
                self._conn.release()
            finally:
                self._conn = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _call(self, fn, *args, **kwargs):
        """Run a control call; map connection failures to BrokerUnreachable (and reconnect next time)."""
        conn = self._connection()
        try:
            return fn(*args, connection=conn, **kwargs)
        except CeleryControlError:
            raise
        except (OSError, socket.error) as exc:
            self.close()
            raise BrokerUnreachable("lost the Celery broker %s: %s" % (self.safe_broker_url, exc)) from exc
        except Exception as exc:
            if conn.connection_errors and isinstance(exc, tuple(conn.connection_errors)):
                self.close()
                raise BrokerUnreachable("lost the Celery broker %s: %s" % (self.safe_broker_url, exc)) from exc
            raise

    def finished(self, listed: Dict[str, Optional[float]]) -> frozenset:
        """The ids of ``listed`` ({task id: when the worker started it, epoch}) that have finished.

        A task has finished when the result backend records it SUCCESS,
        FAILURE or REVOKED at or after the time it started; only tasks started
        ``FINISHED_MIN_AGE`` seconds ago or more are looked up. Empty without a
        result backend. Raises CeleryControlError when the backend cannot be
        read (its message names no credentials).
        """
        if self.results is None:
            return frozenset()
        now = self.clock()
        started = dict((i, t) for i, t in listed.items() if i and t is not None and now - t >= FINISHED_MIN_AGE)
        records = self.results.records(sorted(started))
        return frozenset(i for i, (state, done) in records.items()
                         if i in started and state in FINISHED_STATES and done is not None and done >= started[i])

    def check_result_backend(self) -> None:
        """Read the result backend once (raises CeleryControlError); nothing to do without one."""
        if self.results is not None:
            self.results.records(["elastic-airflow-result-backend-check"])

    @staticmethod
    def _hosts(hostnames: Union[str, Iterable[str]]) -> List[str]:
        if isinstance(hostnames, str):
            hostnames = [hostnames]
        hosts = [h for h in dict.fromkeys(hostnames) if h]
        if not hosts:
            raise ValueError("at least one worker hostname is required")
        return hosts

    def _inspect(self, hosts: Sequence[str], method: str) -> Dict[str, object]:
        conn = self._connection()
        insp = self.app.control.inspect(destination=list(hosts), timeout=self.timeout, limit=len(hosts),
                                        connection=conn)
        return self._call(lambda connection: getattr(insp, method)()) or {}

    # -- queries --------------------------------------------------------------

    def ping(self, hostnames: Union[str, Iterable[str]]) -> Dict[str, bool]:
        """{hostname: answered} for each hostname."""
        hosts = self._hosts(hostnames)
        replies = self._call(self.app.control.ping, destination=hosts, timeout=self.timeout, limit=len(hosts)) or []
        seen = set()
        for reply in replies:
            seen.update(reply.keys())
        return {h: h in seen for h in hosts}

    def workload(self, hostnames: Union[str, Iterable[str]]) -> Dict[str, WorkerLoad]:
        """{hostname: WorkerLoad} for the workers that answered all three inspections.

        A worker missing from the result did not answer: its load is unknown.
        """
        hosts = self._hosts(hostnames)
        parts = {}
        for method in ("active", "reserved", "scheduled"):
            parts[method] = self._inspect(hosts, method)
        ids, starts = {}, {}
        for h in hosts:
            if all(h in parts[m] for m in parts):
                ids[h] = {m: tuple(i for i in (_task_id(e) for e in (parts[m][h] or [])) if i) for m in parts}
                for entry in parts["active"][h] or []:
                    task_id = _task_id(entry)
                    if task_id:
                        starts.setdefault(task_id, []).append(_time_start(entry))
        # a task listed twice (a redelivered copy) counts from its later start; an unknown start is never cleared
        listed = dict((i, None if None in ts else max(ts)) for i, ts in starts.items())
        finished = frozenset()
        try:
            finished = self.finished(listed)
        except CeleryControlError as exc:  # then every listed task counts: never idle on a guess
            LOG.warning("%s; counting every task the workers list as active", exc)
        out = {}
        for h, got in ids.items():
            active = tuple(i for i in got["active"] if i not in finished)
            out[h] = WorkerLoad(active, got["reserved"], got["scheduled"],
                                finished=tuple(i for i in got["active"] if i in finished))
        return out

    def concurrency(self, hostnames: Union[str, Iterable[str]]) -> Dict[str, int]:
        """{hostname: pool size} (``stats()['pool']['max-concurrency']``) of the workers that answered.

        A worker missing from the result did not answer, or its pool reports no size.
        """
        hosts = self._hosts(hostnames)
        stats = self._inspect(hosts, "stats")
        out = {}
        for h in hosts:
            pool = ((stats.get(h) or {}).get("pool") or {}) if isinstance(stats.get(h), dict) else {}
            size = pool.get("max-concurrency")
            if isinstance(size, int) and not isinstance(size, bool) and size > 0:
                out[h] = size
        return out

    def queue_length(self, queues: Iterable[str]) -> int:
        """Messages waiting in the broker for these queues, summed.

        A queue the broker does not know (never declared, or on Redis: empty,
        its list key does not exist) counts 0. Raises BrokerUnreachable when
        the broker cannot be reached.
        """
        names = [q for q in dict.fromkeys(QueueRef.from_any(q).name for q in queues) if q]
        if not names:
            raise ValueError("at least one queue name is required")
        conn = self._connection()
        total = 0
        try:
            for name in names:
                # A channel of its own per queue: on AMQP a passive declare of
                # a missing queue closes the channel it ran on.
                channel = conn.channel()
                try:
                    total += int(channel.queue_declare(queue=name, passive=True).message_count or 0)
                except Exception as exc:
                    if conn.connection_errors and isinstance(exc, tuple(conn.connection_errors)):
                        raise
                    if not (conn.channel_errors and isinstance(exc, tuple(conn.channel_errors))):
                        raise
                    # no such queue: nothing waits in it
                finally:
                    try:
                        channel.close()
                    except Exception:  # pragma: no cover - a channel the broker already closed
                        pass
        except CeleryControlError:
            raise
        except Exception as exc:
            if isinstance(exc, (OSError, socket.error)) or (
                    conn.connection_errors and isinstance(exc, tuple(conn.connection_errors))):
                self.close()
                raise BrokerUnreachable("lost the Celery broker %s: %s" % (self.safe_broker_url, exc)) from exc
            raise
        return total

    def queues(self, hostname: str) -> List[QueueRef]:
        """The queues the worker currently consumes from (raises NoReply if it does not answer)."""
        reply = self._inspect([hostname], "active_queues")
        if hostname not in reply:
            raise NoReply(hostname, "active_queues", self.timeout)
        out = []
        for q in reply[hostname] or []:
            exchange = q.get("exchange") or {}
            out.append(
                QueueRef(
                    name=q["name"],
                    exchange=exchange.get("name") if isinstance(exchange, dict) else exchange,
                    exchange_type=exchange.get("type") if isinstance(exchange, dict) else None,
                    routing_key=q.get("routing_key"),
                )
            )
        return out

    # -- commands -------------------------------------------------------------

    def _one_reply(self, hostname: str, command: str, replies) -> dict:
        for reply in replies or []:
            if hostname in reply:
                answer = reply[hostname]
                if isinstance(answer, dict) and "error" in answer:
                    raise CommandFailed("%s on %s failed: %s" % (command, hostname, answer["error"]))
                return answer
        raise NoReply(hostname, command, self.timeout)

    def cancel_consumer(self, hostname: str, queues: Iterable[QueueLike]) -> None:
        """Make the worker stop consuming from each queue (idempotent)."""
        for q in queues:
            name = QueueRef.from_any(q).name
            replies = self._call(
                self.app.control.cancel_consumer,
                name,
                destination=[hostname],
                reply=True,
                timeout=self.timeout,
                limit=1,
            )
            self._one_reply(hostname, "cancel_consumer(%s)" % name, replies)

    def add_consumer(self, hostname: str, queues: Iterable[QueueLike]) -> None:
        """Make the worker consume from each queue again (idempotent: 'already consuming' is fine)."""
        for q in queues:
            ref = QueueRef.from_any(q)
            kwargs = {}
            if ref.exchange:
                kwargs["exchange"] = ref.exchange
            if ref.exchange_type:
                kwargs["exchange_type"] = ref.exchange_type
            if ref.routing_key:
                kwargs["routing_key"] = ref.routing_key
            replies = self._call(
                self.app.control.add_consumer,
                ref.name,
                destination=[hostname],
                reply=True,
                timeout=self.timeout,
                limit=1,
                **kwargs,
            )
            self._one_reply(hostname, "add_consumer(%s)" % ref.name, replies)

    def shutdown(self, hostname: str) -> None:
        """Ask the worker for a warm shutdown (it finishes running tasks). No reply is sent by Celery."""
        self._call(self.app.control.shutdown, destination=[hostname])
