# -*- coding: utf-8 -*-
# Copyright: elastic_airflow developers
# Apache License 2.0 (see LICENSE)
"""Safe drain of one Celery worker: a resumable, idempotent state machine.

Pure Python, no Ansible imports. Used by the ``celery_worker_drain`` module
(blocking :meth:`Drain.run` / :func:`run_all`) and by the elastic controller
(one non-blocking :meth:`Drain.step` per reconcile).

The drain of a worker, in order::

    (no record) --begin--> cancelling --cancel_consumer--> draining
    draining --no active/reserved/scheduled task on `settle_polls` polls in a row,
               and no consumer left--> drained          (caller deletes the pod)
    draining --deadline passed, or abort()--> restoring --add_consumer--> restored
    drained  --abort()--> restoring --add_consumer--> restored
    any      --the worker/pod no longer exists--> gone  (nothing to do)

Every phase is written to a :class:`StateStore` *before* the broker is told,
so a drain whose process died can be picked up by the next run (same worker
key, same store): it resumes where it was, keeping the original deadline; a
drain whose deadline passed while nobody was watching is rolled back
(consumers restored). The record holds the queues that were cancelled so a
rollback restores exactly those. ``restored`` deletes the record; ``drained``
keeps it (the pod carries it until it is deleted).

Record (JSON-serialisable dict)::

    {"version": 1, "phase": "cancelling|draining|drained|restoring",
     "hostname": "celery@worker-0", "queues": [{"name": ..., "exchange": ...,
     "exchange_type": ..., "routing_key": ...}], "started": <epoch s>,
     "deadline": <epoch s>, "updated": <epoch s>, "tasks": [<task ids seen>],
     "reason": "timeout|aborted" (restoring only), "drained_at": <epoch s>,
     "uid": <pod uid> (stores keyed to a pod)}

Two writers (an old and a new controller leader, the module and the
controller) may step the same drain. A store that can tell raises
:class:`Conflict` when the record changed since it was read (a 409 on a
resourceVersion precondition); :meth:`Drain.step` then reads it again and
steps from what it finds. A store keyed to a pod uid reports a pod replaced
by another of the same name as gone (``exists`` is False), so its drain ends
``gone``, never ``restored``.
"""

from __future__ import annotations

import abc
import dataclasses
import fcntl
import json
import os
import tempfile
import threading
import time
from typing import Callable, Dict, Iterable, List, Optional

from .celery_control import CeleryControlError, QueueRef

__all__ = [
    "Conflict",
    "DONE_PHASES",
    "Drain",
    "DrainError",
    "DrainStatus",
    "FileStore",
    "MemoryStore",
    "StateStore",
    "WorkerGone",
    "parse_record",
    "run_all",
]

RECORD_VERSION = 1

# phases recorded in a store
CANCELLING = "cancelling"
DRAINING = "draining"
DRAINED = "drained"
RESTORING = "restoring"
RECORDED_PHASES = (CANCELLING, DRAINING, DRAINED, RESTORING)
# phases only reported
PENDING = "pending"
RESTORED = "restored"
GONE = "gone"
FAILED = "failed"
DONE_PHASES = (DRAINED, RESTORED, GONE, FAILED)


class DrainError(Exception):
    """Invalid use of the drain API (bad arguments, unreadable record)."""


class WorkerGone(Exception):
    """Raised by a store when the worker (e.g. its pod) does not exist any more."""


class Conflict(Exception):
    """Raised by a store when the record changed since it was read (optimistic concurrency)."""


def parse_record(raw, where="drain record"):
    """The one parser of a stored drain record: a JSON text (or dict) -> dict, or None when empty.

    Raises DrainError when it is not JSON, not an object or has no known phase.
    """
    if raw is None or raw == "":
        return None
    if isinstance(raw, (str, bytes)):
        try:
            raw = json.loads(raw)
        except ValueError as exc:
            raise DrainError("%s is not JSON: %r" % (where, raw)) from exc
    if not isinstance(raw, dict) or raw.get("phase") not in RECORDED_PHASES:
        raise DrainError("%s is not understood: %r" % (where, raw))
    return raw


# --- state stores ---------------------------------------------------------------


class StateStore(abc.ABC):
    """Where the record of a drain in progress lives, keyed by worker.

    ``get`` returns the record or None; ``put`` writes it (raises WorkerGone if
    the worker does not exist); ``delete`` removes it (no error if absent);
    ``exists`` tells whether the worker itself still exists (stores that cannot
    know return True).
    """

    @abc.abstractmethod
    def get(self, worker: str) -> Optional[dict]:
        """See the class docstring."""

    @abc.abstractmethod
    def put(self, worker: str, record: dict) -> None:
        """See the class docstring."""

    @abc.abstractmethod
    def delete(self, worker: str) -> None:
        """See the class docstring."""

    def exists(self, worker: str) -> bool:
        return True

    def uid(self, worker: str) -> Optional[str]:
        """The uid of the object the worker's record is keyed to (None: not keyed)."""
        return None


class MemoryStore(StateStore):
    """In-process store (tests, or a controller that keeps state itself)."""

    def __init__(self, gone: Iterable[str] = ()):
        self.records: Dict[str, dict] = {}
        self.gone = set(gone)
        self._lock = threading.Lock()

    def get(self, worker):
        with self._lock:
            rec = self.records.get(worker)
            return json.loads(json.dumps(rec)) if rec is not None else None

    def put(self, worker, record):
        if worker in self.gone:
            raise WorkerGone(worker)
        with self._lock:
            self.records[worker] = json.loads(json.dumps(record))

    def delete(self, worker):
        with self._lock:
            self.records.pop(worker, None)

    def exists(self, worker):
        return worker not in self.gone


class FileStore(StateStore):
    """All records in one JSON file ({worker: record}), updated atomically under a lock."""

    def __init__(self, path: str):
        self.path = os.path.abspath(path)
        parent = os.path.dirname(self.path)
        if parent:
            os.makedirs(parent, exist_ok=True)

    def _load(self) -> Dict[str, dict]:
        try:
            with open(self.path) as fh:
                text = fh.read()
        except FileNotFoundError:
            return {}
        if not text.strip():
            return {}
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise DrainError("drain state file %s is not valid JSON: %s" % (self.path, exc)) from exc
        if not isinstance(data, dict):
            raise DrainError("drain state file %s must hold a JSON object" % self.path)
        return data

    def _update(self, fn) -> None:
        with open(self.path + ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            data = self._load()
            fn(data)
            fd, tmp = tempfile.mkstemp(dir=os.path.dirname(self.path), prefix=".drain-state-")
            with os.fdopen(fd, "w") as fh:
                json.dump(data, fh, indent=1, sort_keys=True)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)

    def get(self, worker):
        return self._load().get(worker)

    def put(self, worker, record):
        self._update(lambda d: d.__setitem__(worker, record))

    def delete(self, worker):
        self._update(lambda d: d.pop(worker, None))


# --- the state machine ------------------------------------------------------------


@dataclasses.dataclass
class DrainStatus:
    """Where one drain stands. ``done`` is True in drained/restored/gone/failed."""

    worker: str
    hostname: str
    phase: str = PENDING
    queues: List[str] = dataclasses.field(default_factory=list)
    tasks: List[str] = dataclasses.field(default_factory=list)
    started: Optional[float] = None
    deadline: Optional[float] = None
    finished: Optional[float] = None
    resumed: bool = False
    reason: Optional[str] = None
    error: Optional[str] = None
    load: Optional[Dict[str, int]] = None

    @property
    def done(self) -> bool:
        return self.phase in DONE_PHASES

    @property
    def seconds(self) -> Optional[float]:
        if self.started is None:
            return None
        end = self.finished if self.finished is not None else time.time()
        return round(max(0.0, end - self.started), 3)

    @property
    def tasks_finished(self) -> int:
        """Tasks the worker held during the drain; all of them finished once drained."""
        return len(self.tasks)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["seconds"] = self.seconds
        d["tasks_finished"] = self.tasks_finished
        d["done"] = self.done
        return d


class Drain:
    """Drain one worker.

    ``control``: a :class:`~.celery_control.CeleryControl` (or anything with its
    ``ping``/``queues``/``workload``/``cancel_consumer``/``add_consumer``).
    ``store``: a :class:`StateStore`. ``worker``: the store key (pod name, or
    the hostname itself). ``hostname``: the Celery hostname (default: worker).
    ``timeout``: seconds from the start of the drain until it is given up and
    rolled back (> 0). ``poll_interval``: seconds between polls in :meth:`run`.
    ``settle_polls``: how many polls in a row must see the worker idle.
    ``settle_interval``: seconds between those polls once one saw it idle
    (:meth:`next_poll_in`): an idle worker is confirmed idle, and checked to
    consume nothing, in about that time rather than ``poll_interval``; a busy
    worker is still polled every ``poll_interval``.
    ``max_restore_attempts``: after that many failed restores :meth:`run`
    stops with phase ``failed`` and the record kept (the next run retries).
    """

    def __init__(
        self,
        control,
        store: StateStore,
        worker: str,
        hostname: Optional[str] = None,
        timeout: float = 600.0,
        poll_interval: float = 2.0,
        settle_polls: int = 2,
        settle_interval: float = 0.1,
        max_restore_attempts: int = 5,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ):
        if not worker:
            raise DrainError("worker must be a non-empty name")
        for name, value in (("timeout", timeout), ("poll_interval", poll_interval),
                            ("settle_interval", settle_interval)):
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
                raise DrainError("%s must be a number of seconds > 0, got %r" % (name, value))
        if not isinstance(settle_polls, int) or settle_polls < 1:
            raise DrainError("settle_polls must be an integer >= 1, got %r" % (settle_polls,))
        self.control = control
        self.store = store
        self.worker = worker
        self.hostname = hostname or worker
        self.timeout = float(timeout)
        self.poll_interval = float(poll_interval)
        self.settle_polls = settle_polls
        self.settle_interval = float(settle_interval)
        self.max_restore_attempts = max_restore_attempts
        self.clock = clock
        self.sleep = sleep
        self.status = DrainStatus(worker=worker, hostname=self.hostname)
        self._began = False  # this object created or adopted a record
        self._idle_streak = 0
        self._restore_failures = 0
        self._unrecorded_cancel = None  # queues cancelled whose DRAINING record is not written yet
        self.max_conflicts = 3

    # -- helpers ----------------------------------------------------------------

    def _put(self, record: dict) -> None:
        record["updated"] = self.clock()
        self.store.put(self.worker, record)

    def _sync(self, record: Optional[dict]) -> None:
        st = self.status
        if record is None:
            return
        st.queues = [QueueRef.from_any(q).name for q in record.get("queues", [])]
        st.tasks = list(record.get("tasks", []))
        st.started = record.get("started")
        st.deadline = record.get("deadline")
        st.reason = record.get("reason", st.reason)
        if record.get("phase") in RECORDED_PHASES:
            st.phase = record["phase"]
        if record.get("drained_at"):
            st.finished = record["drained_at"]

    def _finish(self, phase: str, reason: Optional[str] = None, error: Optional[str] = None) -> DrainStatus:
        self.status.phase = phase
        if reason is not None:
            self.status.reason = reason
        self.status.error = error
        if self.status.finished is None or phase != DRAINED:
            self.status.finished = self.clock()
        return self.status

    def _gone(self) -> DrainStatus:
        try:
            self.store.delete(self.worker)
        except WorkerGone:
            pass
        return self._finish(GONE, reason="worker no longer exists")

    def _read(self) -> Optional[dict]:
        try:
            rec = self.store.get(self.worker)
        except WorkerGone:
            return None
        rec = parse_record(rec, "drain record of %s" % self.worker)
        uid = self.store.uid(self.worker)
        if rec is not None and uid and rec.get("uid") not in (None, uid):
            return None  # a record of another pod of that name: not this drain's
        return rec

    def _after_conflict(self, exc) -> None:
        """Another writer changed the record: undo our cancel if the record no longer says we drain."""
        self.status.error = "drain record changed by another writer (%s); read again" % (exc or "409")
        self._idle_streak = 0
        queues, self._unrecorded_cancel = self._unrecorded_cancel, None
        if queues is None:
            return
        try:
            rec = self._read()
        except DrainError:
            rec = None
        if rec is None or rec.get("phase") == RESTORING:
            try:
                self.control.add_consumer(self.hostname, queues)
            except CeleryControlError:
                pass  # the worker is gone or the other writer restores it

    # -- the steps --------------------------------------------------------------

    def step(self) -> DrainStatus:
        """Advance the drain by at most one round of broker calls; never sleeps.

        Safe to call again after any exception or crash: the store says where
        the drain stands. Returns the status (``status.done`` tells whether to
        stop calling).
        """
        if self.status.done:
            return self.status
        for _i in range(self.max_conflicts):
            try:
                return self._step()
            except Conflict as exc:
                self._after_conflict(exc)
        return self.status

    def _step(self) -> DrainStatus:
        rec = self._read()
        if rec is None:
            if self._began:
                # someone else restored it (or the pod was replaced): not ours any more
                if not self.store.exists(self.worker):
                    return self._gone()
                return self._finish(RESTORED, reason="drain record removed by another run")
            return self._begin()
        if not self._began:
            self._began = True
            self.status.resumed = True
        self._sync(rec)
        phase = rec["phase"]
        try:
            if phase == CANCELLING:
                return self._cancel(rec)
            if phase == DRAINING:
                return self._poll(rec)
            if phase == DRAINED:
                return self._finish(DRAINED)
            return self._restore(rec)
        except WorkerGone:
            return self._gone()
        except CeleryControlError as exc:
            # transient: the phase is unchanged, the next step retries
            self.status.error = str(exc)
            if phase == RESTORING:
                self._restore_failures += 1
                if self._restore_failures >= self.max_restore_attempts:
                    if not self.store.exists(self.worker):
                        return self._gone()
                    return self._finish(
                        FAILED,
                        error="could not restore the consumers of %s (%s); the drain record is kept, "
                        "run again to retry the rollback" % (self.hostname, exc),
                    )
            return self.status

    def _begin(self) -> DrainStatus:
        if not self.store.exists(self.worker):
            return self._gone()
        try:
            if not self.control.ping([self.hostname]).get(self.hostname):
                return self._finish(
                    FAILED,
                    error="unknown worker: celery hostname %r did not answer ping within %.1fs; "
                    "nothing was changed" % (self.hostname, getattr(self.control, "timeout", 0)),
                )
            queues = self.control.queues(self.hostname)
        except CeleryControlError as exc:
            return self._finish(FAILED, error="%s; nothing was changed" % exc)
        now = self.clock()
        rec = {
            "version": RECORD_VERSION,
            "phase": CANCELLING,
            "hostname": self.hostname,
            "queues": [q.to_dict() for q in queues],
            "started": now,
            "deadline": now + self.timeout,
            "tasks": [],
        }
        if self.store.uid(self.worker):
            rec["uid"] = self.store.uid(self.worker)
        try:
            self._put(rec)
        except WorkerGone:
            return self._gone()
        self._began = True
        self._sync(rec)
        try:
            return self._cancel(rec)
        except CeleryControlError as exc:
            self.status.error = str(exc)
            return self.status

    def _cancel(self, rec: dict) -> DrainStatus:
        if self.clock() >= rec["deadline"]:
            return self._to_restoring(rec, "timeout")
        self._unrecorded_cancel = rec["queues"]
        self.control.cancel_consumer(self.hostname, rec["queues"])
        rec["phase"] = DRAINING
        self._put(rec)
        self._unrecorded_cancel = None
        self._sync(rec)
        self.status.error = None
        return self._poll(rec)

    def _poll(self, rec: dict) -> DrainStatus:
        if self.clock() >= rec["deadline"]:
            return self._to_restoring(rec, "timeout")
        load = self.control.workload([self.hostname]).get(self.hostname)
        if load is None:
            # no answer: unknown, never idle
            self._idle_streak = 0
            if not self.store.exists(self.worker):
                return self._gone()
            self.status.error = "worker %s did not answer inspect" % self.hostname
            return self.status
        self.status.error = None
        self.status.load = load.counts()
        seen = set(rec.get("tasks", []))
        if not seen.issuperset(load.task_ids):
            rec["tasks"] = sorted(seen | set(load.task_ids))
            self._put(rec)
            self._sync(rec)
        if not load.idle:
            self._idle_streak = 0
            return self.status
        self._idle_streak += 1
        if self._idle_streak < self.settle_polls:
            return self.status
        # idle long enough; make sure it really consumes nothing (a restarted
        # worker consumes again: cancel again and keep waiting)
        names = {QueueRef.from_any(q).name for q in rec["queues"]}
        consuming = [q.name for q in self.control.queues(self.hostname) if q.name in names]
        if consuming:
            self._idle_streak = 0
            self.control.cancel_consumer(self.hostname, consuming)
            return self.status
        rec["phase"] = DRAINED
        rec["drained_at"] = self.clock()
        self._put(rec)
        self._sync(rec)
        return self._finish(DRAINED)

    def _to_restoring(self, rec: dict, reason: str) -> DrainStatus:
        rec["phase"] = RESTORING
        rec["reason"] = reason
        self._put(rec)
        self._sync(rec)
        return self._restore(rec)

    def _restore(self, rec: dict) -> DrainStatus:
        self.control.add_consumer(self.hostname, rec["queues"])
        self.store.delete(self.worker)
        return self._finish(RESTORED, reason=rec.get("reason", "aborted"))

    def abort(self, reason: str = "aborted") -> DrainStatus:
        """Roll back: restore the recorded consumers and drop the record.

        Works on a drain in progress and on a drained worker that was not
        deleted; a no-op (phase ``restored``, reason ``nothing to roll back``)
        when there is no record. Raises CeleryControlError if the worker cannot
        be told (the record then stays in ``restoring`` for a retry).
        """
        for _i in range(self.max_conflicts - 1):
            try:
                return self._abort(reason)
            except Conflict as exc:
                self._after_conflict(exc)
        return self._abort(reason)

    def _abort(self, reason: str) -> DrainStatus:
        rec = self._read()
        if rec is None:
            if not self.store.exists(self.worker):
                return self._gone()
            return self._finish(RESTORED, reason="nothing to roll back")
        self._began = True
        self._sync(rec)
        try:
            if rec["phase"] != RESTORING:
                rec["phase"] = RESTORING
                rec["reason"] = reason
                self._put(rec)
                self._sync(rec)
            return self._restore(rec)
        except WorkerGone:
            return self._gone()

    def next_poll_in(self, poll_interval: Optional[float] = None) -> float:
        """Seconds until the next step is worth taking.

        ``settle_interval`` while the worker has been seen idle on fewer than
        ``settle_polls`` polls in a row (the same polls and the same final
        "consumes nothing?" check, only sooner), else ``poll_interval`` (the
        argument, or the drain's own).
        """
        interval = self.poll_interval if poll_interval is None else poll_interval
        if self.status.phase == DRAINING and 0 < self._idle_streak < self.settle_polls:
            return min(self.settle_interval, interval)
        return interval

    def run(self) -> DrainStatus:
        """Blocking: step until done, sleeping :meth:`next_poll_in` between steps."""
        while True:
            st = self.step()
            if st.done:
                return st
            self.sleep(self.next_poll_in())


def run_all(drains: List[Drain], poll_interval: Optional[float] = None, sleep: Callable[[float], None] = time.sleep,
            on_step: Optional[Callable[[Drain], None]] = None) -> List[DrainStatus]:
    """Drive several drains concurrently (one step each per round) until all are done.

    A round comes after the shortest :meth:`Drain.next_poll_in` of the drains
    still going (``poll_interval``, when given, replaces their own).
    """
    if not drains:
        return []
    while True:
        pending = []
        for d in drains:
            if not d.status.done:
                d.step()
                if on_step is not None:
                    on_step(d)
                if not d.status.done:
                    pending.append(d)
        if not pending:
            return [d.status for d in drains]
        sleep(min(d.next_poll_in(poll_interval) for d in pending))
