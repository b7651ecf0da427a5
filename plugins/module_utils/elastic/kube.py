# -*- coding: utf-8 -*-
# Copyright: elastic_airflow developers
# Apache License 2.0 (see LICENSE)
"""Kubernetes adapter of the ElasticWorker controller.

Everything that talks to the API server lives here: a list+watch cache
(``Informer``: one LIST, then one long WATCH, re-listed only when the watch
expires), the few writes the controller makes (create/delete a pod, patch an
annotation, patch a status, scale an ElasticWorker) and the Lease used for
leader election. Objects are handled as plain dicts (what the API returns), so
the pure logic in ``reconcile`` can consume them directly.

An ``ApiCounter`` wraps the client so a benchmark (or a test) can tell how
many requests of each kind were made.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import base64
import collections
import datetime
import json
import logging
import math
import random
import socket
import threading
import time

try:
    from kubernetes import client as k8s_client
    from kubernetes import config as k8s_config
    from kubernetes.client.rest import ApiException
except ImportError:  # pragma: no cover - reported by the callers
    ApiException = Exception

from . import reconcile as R

LOG = logging.getLogger("elastic_worker.kube")


def load_client(kubeconfig=None, context=None):
    """An ApiClient from a kubeconfig, else the in-cluster service account.

    The one kube-config loader of the collection's Python code: a kubeconfig
    or a context given chooses the kubeconfig (the default file for a context
    alone); else the in-cluster service account, falling back to the default
    kubeconfig ($KUBECONFIG, ~/.kube/config).
    """
    if kubeconfig or context:
        return k8s_config.new_client_from_config(config_file=kubeconfig or None, context=context or None)
    try:
        k8s_config.load_incluster_config()
        return k8s_client.ApiClient()
    except k8s_config.ConfigException:
        return k8s_config.new_client_from_config(context=context or None)


class ApiCounter:
    """Counts requests by (verb, resource) on an ApiClient; thread-safe."""

    def __init__(self, api_client):
        self.counts = collections.Counter()
        self._lock = threading.Lock()
        original = api_client.call_api

        def counted(resource_path, method, path_params=None, query_params=None, *args, **kwargs):
            query = dict(query_params or [])
            verb = method.upper()
            if verb == "GET":
                verb = "WATCH" if query.get("watch") else ("GET" if resource_path.endswith("{name}") else "LIST")
            path = resource_path
            for name, value in (path_params or {}).items():
                if name not in ("name", "namespace"):
                    path = path.replace("{%s}" % name, str(value))
            parts = [p for p in path.split("/") if p and not p.startswith("{")]
            key = "%s %s" % (verb, "/".join(parts[-2:]) if parts and parts[-1] in ("status", "scale") else parts[-1])
            with self._lock:
                self.counts[key] += 1
            return original(resource_path, method, path_params, query_params, *args, **kwargs)

        api_client.call_api = counted

    def total(self, verb=None):
        with self._lock:
            return sum(n for k, n in self.counts.items() if verb is None or k.startswith(verb + " "))

    def snapshot(self):
        with self._lock:
            return dict(self.counts)


def _now_micro():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def now_rfc3339():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _slim(obj):
    """Drop what the controller never reads (managedFields are most of an object's size)."""
    obj.get("metadata", {}).pop("managedFields", None)
    return obj


# The only pod fields the reconcile, the drain store and the status read.
_POD_METADATA = ("name", "namespace", "uid", "resourceVersion", "creationTimestamp", "deletionTimestamp",
                 "labels", "ownerReferences")
# Pod annotations the controller reads: its drain record and the template hash.
POD_ANNOTATIONS = ("elastic-airflow.io/drain", R.TEMPLATE_HASH_ANNOTATION)


def slim_pod(obj):
    """A pod reduced to what the controller reads (a KWOK/real pod is ~5-10 KB of JSON; this is ~0.5 KB).

    Keeps metadata name/namespace/uid/resourceVersion/timestamps/labels/ownerReferences,
    the controller's own annotations, status.phase and the Ready condition; the
    spec is never read (pods are created from the ElasticWorker's template).
    """
    meta = obj.get("metadata") or {}
    out = dict((k, meta[k]) for k in _POD_METADATA if k in meta)
    if out.get("ownerReferences"):
        out["ownerReferences"] = [dict((k, ref[k]) for k in ("uid", "controller", "kind", "name") if k in ref)
                                  for ref in out["ownerReferences"]]
    annotations = meta.get("annotations") or {}
    kept = dict((k, annotations[k]) for k in POD_ANNOTATIONS if k in annotations)
    if kept:
        out["annotations"] = kept
    status = obj.get("status") or {}
    slim_status = {}
    if "phase" in status:
        slim_status["phase"] = status["phase"]
    ready = [{"type": "Ready", "status": c.get("status")} for c in status.get("conditions") or []
             if c.get("type") == "Ready"]
    if ready:
        slim_status["conditions"] = ready
    return {"metadata": out, "status": slim_status}


# Watch timeouts as client-go's reflector: the server ends each watch after a
# random 5-10 minutes, and the client gives up reading after that plus a margin
# (a half-open connection is noticed instead of blocking forever).
MIN_WATCH_SECONDS = 300
WATCH_READ_MARGIN = 30.0
REQUEST_TIMEOUT = 30.0  # seconds for every other API call


class Relist(Exception):
    """The watch cannot go on from its resourceVersion (410 Gone, an ERROR event): list again."""


class NotLeader(Exception):
    """A write was refused because this process no longer holds the Lease (see ``Kube.fence``)."""


class Backoff:
    """Exponential backoff as client-go's reflector uses it between failed list/watch attempts.

    ``next()`` returns the delay before the next attempt: ``initial``, doubling
    up to ``cap``, with up to ``jitter`` x the delay added at random; the
    sequence restarts at ``initial`` once ``reset_after`` seconds passed
    without a failure.
    """

    def __init__(self, initial=0.8, cap=30.0, factor=2.0, reset_after=120.0, jitter=1.0, clock=time.monotonic,
                 rng=None):
        self.initial, self.cap, self.factor = float(initial), float(cap), float(factor)
        self.reset_after, self.jitter = float(reset_after), float(jitter)
        self.clock = clock
        self.rng = rng or random.Random()
        self._current = self.initial
        self._last = None

    def next(self):
        now = self.clock()
        if self._last is not None and now - self._last >= self.reset_after:
            self._current = self.initial
        delay = self._current
        self._current = min(self.cap, self._current * self.factor)
        self._last = now
        return min(self.cap, delay * (1.0 + self.jitter * self.rng.random()))


def _socket_of(response):
    """The socket under a urllib3 response (None if it has none any more)."""
    connection = getattr(response, "_connection", None) or getattr(response, "connection", None)
    return getattr(connection, "sock", None)


class Informer:
    """A local cache of one kind of object, fed by LIST + WATCH in a thread.

    ``list_call(**kw)`` must be a *raw* list function (``_preload_content=False``
    is passed so objects stay plain dicts, and no model classes are built).
    ``on_change(event_type, obj)`` is called for every change after the
    initial list (and once with ("SYNCED", None) after each full list).

    The cache contract:

    - it never goes backwards. resourceVersions are opaque and are never
      compared by order; instead the cache keeps, per object, the versions the
      watch delivered (in order) and the version of its own last write-through
      (``update``). A watch event that precedes a write-through is dropped
      until the watch delivers the written version itself; a write-through of
      a version the watch already delivered, or of an object the watch saw
      deleted, is ignored. (A write-through the watch never confirms, for
      example a patch that changed nothing, stops holding events back after
      ``pending_timeout`` seconds.)
    - a 410 Gone (watch too old) or any ERROR event re-lists; other failures
      (refused, 429, 5xx, timeouts) watch again from the same version after an
      exponential backoff (``Backoff``).
    - every request has a client-side timeout; a watch asks the server to end
      it after a random 5-10 minutes and stops reading ``WATCH_READ_MARGIN``
      seconds after that, so a half-open connection is noticed.
    - ``progressing()`` is False when neither a list nor a watch event nor a
      new watch happened for ``progress_timeout`` seconds (feeds /readyz).
    - ``stop()`` returns at once: it shuts the watch's socket down, which
      wakes the informer thread from its blocking read.
    """

    def __init__(self, name, list_call, on_change=None, watch_timeout=None, slim=_slim, page_size=250,
                 request_timeout=REQUEST_TIMEOUT, read_margin=WATCH_READ_MARGIN, backoff=None,
                 progress_timeout=None, pending_timeout=60.0, clock=time.monotonic, rng=None):
        self.name = name
        self._list_call = list_call
        self._slim = slim
        self._page_size = page_size
        self._on_change = on_change or (lambda t, o: None)
        self._watch_timeout = watch_timeout  # None: random in [MIN_WATCH_SECONDS, 2 x MIN_WATCH_SECONDS)
        self._request_timeout = request_timeout
        self._read_margin = float(read_margin)
        self._clock = clock
        self._rng = rng or random.Random()
        self._backoff = backoff or Backoff(clock=clock, rng=self._rng)
        longest = float(watch_timeout or 2 * MIN_WATCH_SECONDS)
        self.progress_timeout = progress_timeout or (longest + self._read_margin + self._backoff.cap)
        self._pending_timeout = float(pending_timeout)
        self._items = {}
        self._seen = {}  # key -> recent resourceVersions the list/watch delivered, in order
        self._pending = {}  # key -> (resourceVersion of a write-through, monotonic expiry)
        self._deleted = collections.deque(maxlen=1024)  # uids the watch saw deleted
        self._lock = threading.Lock()
        self.synced = threading.Event()
        self._stop = threading.Event()
        self._thread = None
        self._response = None
        self.last_progress = clock()
        self.last_error = None
        self.lists = 0
        self.watches = 0
        self.errors = 0

    @staticmethod
    def key(obj):
        meta = obj["metadata"]
        return "%s/%s" % (meta.get("namespace", ""), meta["name"])

    def items(self):
        with self._lock:
            return list(self._items.values())

    def get(self, namespace, name):
        with self._lock:
            return self._items.get("%s/%s" % (namespace or "", name))

    def start(self):
        self._thread = threading.Thread(target=self._run, name="informer-" + self.name, daemon=True)
        self._thread.start()
        return self

    def stop(self, wait=1.0):
        """Stop the thread; returns within ``wait`` seconds even while a watch is open."""
        self._stop.set()
        self._interrupt()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(wait)

    def _interrupt(self):
        # Closing the response from this thread would wait for the lock of the
        # buffered reader that the informer thread holds in its blocking read;
        # shutting the socket down needs no lock and ends that read at once.
        sock = _socket_of(self._response) if self._response is not None else None
        if sock is not None:
            try:
                socket.socket.shutdown(sock, socket.SHUT_RDWR)
            except OSError:
                pass

    def progressing(self):
        """False when the cache has not moved (list, watch start or event) for ``progress_timeout``."""
        return self._clock() - self.last_progress < self.progress_timeout

    def _progress(self):
        self.last_progress = self._clock()

    def update(self, obj):
        """Write-through: put an object we just wrote, unless the watch already delivered it or later."""
        obj = self._slim(obj)
        key = self.key(obj)
        meta = obj["metadata"]
        rv = meta.get("resourceVersion")
        with self._lock:
            if meta.get("uid") and meta["uid"] in self._deleted:
                return False
            if rv and rv in self._seen.get(key, ()):
                return False  # the cache holds this version or a later one
            self._items[key] = obj
            if rv:
                self._pending[key] = (rv, self._clock() + self._pending_timeout)
            return True

    def _apply(self, kind, obj):
        """Apply one watch event under the cache contract; False when it was dropped as stale."""
        key = self.key(obj)
        meta = obj["metadata"]
        rv, uid = meta.get("resourceVersion"), meta.get("uid")
        with self._lock:
            if rv:
                self._seen.setdefault(key, collections.deque(maxlen=16)).append(rv)
            if kind == "DELETED":
                current = self._items.get(key)
                if uid:
                    self._deleted.append(uid)
                if current is not None and uid and current["metadata"].get("uid") not in (None, uid):
                    return False  # an earlier object of that name
                self._items.pop(key, None)
                self._pending.pop(key, None)
                self._seen.pop(key, None)
                return True
            pending = self._pending.get(key)
            if pending is not None:
                written, expiry = pending
                current = self._items.get(key)
                if rv == written or self._clock() > expiry or (
                        current is not None and current["metadata"].get("uid") != uid):
                    del self._pending[key]
                else:
                    return False  # older than what we wrote: the watch will deliver that next
            self._items[key] = obj
            return True

    def _list(self):
        """A paged LIST (``limit``/``continue``): only one page of raw JSON is held at a time."""
        items = {}
        token = None
        while True:
            kw = {"limit": self._page_size} if self._page_size else {}
            if token:
                kw["_continue"] = token
            response = self._list_call(_preload_content=False, _request_timeout=self._request_timeout, **kw)
            body = json.loads(response.data)
            response.release_conn()
            del response
            for obj in body.get("items") or []:
                obj = self._slim(obj)
                items[self.key(obj)] = obj
            self.lists += 1
            meta = body.get("metadata") or {}
            token = meta.get("continue")
            version = meta.get("resourceVersion")
            del body
            if not token:
                break
        with self._lock:
            self._items = items
            self._pending = {}
            self._seen = dict((k, collections.deque([o["metadata"].get("resourceVersion")], maxlen=16))
                              for k, o in items.items())
        self._progress()
        self.synced.set()
        self._on_change("SYNCED", None)
        return version

    def _watch_seconds(self):
        if self._watch_timeout:
            return int(self._watch_timeout)
        return int(MIN_WATCH_SECONDS * (1.0 + self._rng.random()))

    def _run(self):
        version = None
        while not self._stop.is_set():
            try:
                if version is None:
                    version = self._list()
                version = self._watch(version)  # ended by the server's timeout: watch again
            except Exception as exc:
                if self._stop.is_set():
                    return
                self.errors += 1
                self.last_error = "%s: %s" % (type(exc).__name__, exc)
                relist = isinstance(exc, Relist) or (isinstance(exc, ApiException) and exc.status == 410)
                if relist:
                    version = None
                delay = self._backoff.next()
                LOG.info("%s list/watch failed (%s); %s in %.1fs", self.name, self.last_error,
                         "re-listing" if relist else "watching again", delay)
                self._stop.wait(delay)

    def _watch(self, version):
        self.watches += 1
        seconds = self._watch_seconds()
        connect = self._request_timeout[0] if isinstance(self._request_timeout, tuple) else self._request_timeout
        response = self._list_call(
            watch=True, resource_version=version, allow_watch_bookmarks=True,
            timeout_seconds=seconds, _preload_content=False,
            _request_timeout=(connect, seconds + self._read_margin),
        )
        self._response = response
        clean = False
        self._progress()
        buffer = b""
        try:
            if self._stop.is_set():
                return version
            for chunk in response.stream(amt=65536, decode_content=True):
                if self._stop.is_set():
                    return version
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    kind, obj = event["type"], event["object"]
                    self._progress()
                    if kind == "ERROR":
                        raise Relist("watch ERROR %s: %s" % (obj.get("code"), obj.get("message")))
                    version = obj["metadata"].get("resourceVersion", version)
                    if kind == "BOOKMARK":
                        continue
                    obj = self._slim(obj)
                    if self._apply(kind, obj):
                        self._on_change(kind, obj)
            clean = True
        finally:
            self._response = None
            if clean:
                response.release_conn()
            else:  # the connection is in an unknown state: do not reuse it
                try:
                    response.close()
                except Exception:  # pragma: no cover
                    pass
        return version


class Kube:
    """The controller's writes, plus informers for its three kinds of object.

    Every request carries a client-side timeout (``request_timeout``). While
    ``fence`` is set (the controller sets it to its elector's ``is_leader``),
    every write first asks it and raises ``NotLeader`` when it says no, so a
    pass that outlives the Lease stops at its next write.
    """

    def __init__(self, api_client, namespace=None, request_timeout=REQUEST_TIMEOUT):
        self.api_client = api_client
        self.counter = ApiCounter(api_client)
        self.core = k8s_client.CoreV1Api(api_client)
        self.custom = k8s_client.CustomObjectsApi(api_client)
        self.coordination = k8s_client.CoordinationV1Api(api_client)
        self.namespace = namespace or None  # None: every namespace
        self.request_timeout = request_timeout
        self.fence = None

    def _write(self):
        """Called before every write: raises NotLeader when the fence says this process may not write."""
        if self.fence is not None and not self.fence():
            raise NotLeader("not the leader any more: write refused")
        return {"_preload_content": False, "_request_timeout": self.request_timeout}

    # ---------------------------------------------------------- informers

    def _lister(self, kind):
        ns = self.namespace
        if kind == "pods":
            selector = R.OWNER_LABEL
            if ns:
                return lambda **kw: self.core.list_namespaced_pod(ns, label_selector=selector, **kw)
            return lambda **kw: self.core.list_pod_for_all_namespaces(label_selector=selector, **kw)
        plural = R.EW_PLURAL if kind == "elasticworkers" else R.EWA_PLURAL
        if ns:
            return lambda **kw: self.custom.list_namespaced_custom_object(R.GROUP, R.VERSION, ns, plural, **kw)
        return lambda **kw: self.custom.list_cluster_custom_object(R.GROUP, R.VERSION, plural, **kw)

    @staticmethod
    def slimmer(kind):
        return slim_pod if kind == "pods" else _slim

    def informers(self, on_change, **options):
        return dict(
            (kind, Informer(kind, self._lister(kind), lambda t, o, k=kind: on_change(k, t, o),
                            slim=self.slimmer(kind), request_timeout=self.request_timeout, **options))
            for kind in ("pods", "elasticworkers", "elasticworkerautoscalers")
        )

    def list_once(self, kind, name=None):
        """One (paged) LIST (the Ansible modules use this instead of a watch)."""
        informer = Informer(kind, self._lister(kind), slim=self.slimmer(kind), request_timeout=self.request_timeout)
        informer._list()
        return informer.items()

    def read_pod(self, namespace, name):
        """GET one pod (slimmed); None when it does not exist."""
        try:
            return slim_pod(json.loads(self.core.read_namespaced_pod(
                name, namespace, _preload_content=False, _request_timeout=self.request_timeout).data))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    # ---------------------------------------------------------- writes

    def create_pod(self, manifest):
        try:
            return self.core.create_namespaced_pod(manifest["metadata"]["namespace"], manifest, **self._write())
        except ApiException as exc:
            if exc.status == 409:  # already created by an earlier pass
                return None
            raise

    def delete_pod(self, namespace, name, uid=None, grace_seconds=None):
        body = {"kind": "DeleteOptions", "apiVersion": "v1"}
        if uid:
            body["preconditions"] = {"uid": uid}
        if grace_seconds is not None:
            body["gracePeriodSeconds"] = grace_seconds
        try:
            self.core.delete_namespaced_pod(name, namespace, body=body, **self._write())
            return True
        except ApiException as exc:
            if exc.status in (404, 409):  # gone already / replaced by another pod of that name
                return False
            raise

    def patch_pod_annotations(self, namespace, name, annotations, resource_version=None):
        """Merge-patch annotations; a value of None removes the annotation.

        With ``resource_version`` the patch only applies to that version of the
        pod (optimistic concurrency): the API server answers 409 Conflict if the
        pod changed since, or was replaced by another pod of that name.
        """
        metadata = {"annotations": annotations}
        if resource_version:
            metadata["resourceVersion"] = resource_version
        return json.loads(self.merge_patch("/api/v1/namespaces/%s/pods/%s" % (namespace, name),
                                           {"metadata": metadata}).data)

    def merge_patch(self, path, body):
        """A JSON merge patch (the generated client would send a JSON patch for a dict body)."""
        response = self.api_client.call_api(
            path, "PATCH", body=body, auth_settings=["BearerToken"],
            header_params={"Content-Type": "application/merge-patch+json", "Accept": "application/json"},
            **self._write())
        return response[0] if isinstance(response, tuple) else response

    def patch_status(self, plural, namespace, name, status):
        return self.custom.patch_namespaced_custom_object_status(
            R.GROUP, R.VERSION, namespace, plural, name, {"status": status}, **self._write())

    def scale(self, namespace, name, replicas):
        return self.custom.patch_namespaced_custom_object_scale(
            R.GROUP, R.VERSION, namespace, R.EW_PLURAL, name, {"spec": {"replicas": int(replicas)}},
            **self._write())

    def read_secret_key(self, namespace, name, key):
        secret = json.loads(self.core.read_namespaced_secret(
            name, namespace, _preload_content=False, _request_timeout=self.request_timeout).data)
        return base64.b64decode((secret.get("data") or {})[key]).decode()

    def event(self, obj, reason, message, type_="Normal"):
        """Record a core/v1 Event on ``obj`` (best effort)."""
        meta = obj["metadata"]
        body = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"generateName": meta["name"] + ".", "namespace": meta["namespace"]},
            "involvedObject": {"apiVersion": obj.get("apiVersion", R.API_VERSION), "kind": obj.get("kind", R.EW_KIND),
                               "name": meta["name"], "namespace": meta["namespace"], "uid": meta.get("uid")},
            "reason": reason, "message": message[:1000], "type": type_,
            "source": {"component": "elastic-worker-controller"},
            "firstTimestamp": now_rfc3339(), "lastTimestamp": now_rfc3339(), "count": 1,
        }
        try:
            self.core.create_namespaced_event(meta["namespace"], body, **self._write())
        except ApiException as exc:  # events are advisory
            LOG.debug("event not recorded: %s", exc)


class LeaderElector:
    """Leader election on a coordination.k8s.io/v1 Lease, judged on locally observed time.

    As client-go's leaderelection.go: the Lease's timestamps are written for
    humans and never compared with this process's clock (clocks of two nodes
    may differ by more than a lease). The elector keeps the last record it
    observed and the local monotonic time at which that record changed
    (``observed_time``); another holder's lease has expired only when the
    record has not changed for its ``leaseDurationSeconds`` of *our* clock.

    ``lease_duration`` > ``renew_deadline`` > ``JITTER_FACTOR`` x
    ``retry_period`` (checked). A leader stays leader until ``renew_deadline``
    after the start of its last successful acquire or renew, both the same
    way; so it stops acting at least ``lease_duration - renew_deadline``
    seconds before any candidate can take over. Every write carries the
    resourceVersion it read, so two candidates never both win a round (409).
    ``clock`` is injectable (monotonic seconds); ``check()`` feeds /healthz.
    """

    JITTER_FACTOR = 1.2

    def __init__(self, kube, namespace, name, identity, lease_duration=15.0, renew_deadline=10.0,
                 retry_period=2.0, clock=time.monotonic, rng=None):
        lease_duration, renew_deadline, retry_period = float(lease_duration), float(renew_deadline), float(retry_period)
        if retry_period <= 0:
            raise ValueError("retry_period must be > 0, got %r" % retry_period)
        if lease_duration <= renew_deadline:
            raise ValueError("lease_duration (%s) must be greater than renew_deadline (%s)"
                             % (lease_duration, renew_deadline))
        if not renew_deadline > self.JITTER_FACTOR * retry_period:
            raise ValueError("renew_deadline (%s) must be greater than %s x retry_period (%s)"
                             % (renew_deadline, self.JITTER_FACTOR, retry_period))
        self.kube = kube
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.lease_duration = lease_duration
        self.renew_deadline = renew_deadline
        self.retry_period = retry_period
        self.clock = clock
        self.rng = rng or random.Random()
        self.observed_record = None
        self.observed_time = None
        self._leader_until = None  # monotonic deadline of the current term, None when not leading
        self._renewed_at = None  # start of the last successful acquire/renew

    @property
    def is_leader(self):
        return self._leader_until is not None and self.clock() < self._leader_until

    def is_leader_now(self):
        """``is_leader`` as a callable: the fence of every write (``Kube.fence``)."""
        return self.is_leader

    def leader_deadline(self):
        """Monotonic time until which this process may act as leader (None: not leading)."""
        return self._leader_until if self.is_leader else None

    def next_wait(self):
        """Seconds until the next attempt: retry_period while leading, jittered while waiting."""
        if self.is_leader:
            return self.retry_period
        return self.retry_period * (1.0 + self.JITTER_FACTOR * self.rng.random())

    def check(self, tolerance=20.0):
        """(ok, message) for /healthz: not ok when this process thinks it leads but stopped renewing."""
        if self._renewed_at is None or self._leader_until is None:
            return True, "not leading"
        late = self.clock() - self._renewed_at - self.lease_duration
        if late > tolerance:
            return False, "lease not renewed for %.1fs past its duration" % late
        return True, "leading"

    def _spec(self, old_spec, transitions):
        now = _now_micro()
        spec = {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": int(math.ceil(self.lease_duration)),
            "renewTime": now,
            "leaseTransitions": transitions,
        }
        if not old_spec or old_spec.get("holderIdentity") != self.identity:
            spec["acquireTime"] = now
        else:
            spec["acquireTime"] = old_spec.get("acquireTime") or now
        return spec

    def _observe(self, spec, now):
        if spec != self.observed_record:
            self.observed_record = dict(spec)
            self.observed_time = now

    def _won(self, spec, started):
        self.observed_record = dict(spec)
        self.observed_time = started
        self._renewed_at = started
        self._leader_until = started + self.renew_deadline
        return True

    def _lost(self):
        self._leader_until = None
        self._renewed_at = None
        return False

    def try_acquire_or_renew(self):
        """One attempt; returns True while this process holds the Lease."""
        started = self.clock()
        coordination = self.kube.coordination
        timeout = getattr(self.kube, "request_timeout", REQUEST_TIMEOUT)
        try:
            lease = json.loads(coordination.read_namespaced_lease(
                self.name, self.namespace, _preload_content=False, _request_timeout=timeout).data)
        except ApiException as exc:
            if exc.status != 404:
                raise
            spec = self._spec(None, 0)
            body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": self.name, "namespace": self.namespace}, "spec": spec}
            try:
                coordination.create_namespaced_lease(self.namespace, body, _preload_content=False,
                                                     _request_timeout=timeout)
            except ApiException as exc2:
                if exc2.status == 409:
                    return self._lost()
                raise
            return self._won(spec, started)
        spec = lease.get("spec") or {}
        self._observe(spec, started)
        holder = spec.get("holderIdentity")
        duration = float(spec.get("leaseDurationSeconds") or self.lease_duration)
        if holder and holder != self.identity and self.observed_time + duration > started:
            return self._lost()  # held by another, and its record changed within its lease duration
        transitions = int(spec.get("leaseTransitions") or 0) + (0 if holder == self.identity else 1)
        lease["spec"] = self._spec(spec, transitions)
        try:
            coordination.replace_namespaced_lease(self.name, self.namespace, lease, _preload_content=False,
                                                  _request_timeout=timeout)
        except ApiException as exc:
            if exc.status == 409:  # someone else wrote first
                return self._lost()
            raise
        return self._won(lease["spec"], started)

    def release(self):
        """Give the Lease up at shutdown so a peer takes over at once."""
        if not self.is_leader:
            return
        timeout = min(2.0, getattr(self.kube, "request_timeout", REQUEST_TIMEOUT))  # shutting down: do not linger
        try:
            lease = json.loads(self.kube.coordination.read_namespaced_lease(
                self.name, self.namespace, _preload_content=False, _request_timeout=timeout).data)
            if (lease.get("spec") or {}).get("holderIdentity") == self.identity:
                lease["spec"]["holderIdentity"] = None
                lease["spec"]["leaseDurationSeconds"] = 1
                self.kube.coordination.replace_namespaced_lease(
                    self.name, self.namespace, lease, _preload_content=False, _request_timeout=timeout)
        except Exception as exc:  # best effort: the Lease expires anyway
            LOG.info("lease not released: %s", exc)
        self._lost()
