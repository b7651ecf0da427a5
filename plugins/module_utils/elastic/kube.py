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

import collections
import datetime
import json
import logging
import threading
import time

try:
    from kubernetes import client as k8s_client
    from kubernetes import config as k8s_config
    from kubernetes.client.rest import ApiException
    HAS_KUBERNETES = True
except ImportError:  # pragma: no cover - reported by the callers
    HAS_KUBERNETES = False
    ApiException = Exception

from . import reconcile as R

LOG = logging.getLogger("elastic_worker.kube")


def load_client(kubeconfig=None, context=None):
    """An ApiClient from a kubeconfig, else the in-cluster service account."""
    if kubeconfig:
        return k8s_config.new_client_from_config(config_file=kubeconfig, context=context or None)
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


def _parse_time(value):
    if value is None:
        return None
    if isinstance(value, datetime.datetime):
        return value.timestamp()
    text = str(value).replace("Z", "+00:00")
    return datetime.datetime.fromisoformat(text).timestamp()


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


class Informer:
    """A local cache of one kind of object, fed by LIST + WATCH in a thread.

    ``list_call(**kw)`` must be a *raw* list function (``_preload_content=False``
    is passed so objects stay plain dicts, and no model classes are built).
    ``on_change(event_type, obj)`` is called for every change after the
    initial list (and once with ("SYNCED", None) after each full list).
    """

    def __init__(self, name, list_call, on_change=None, watch_timeout=300, slim=_slim, page_size=250):
        self.name = name
        self._list_call = list_call
        self._slim = slim
        self._page_size = page_size
        self._on_change = on_change or (lambda t, o: None)
        self._watch_timeout = watch_timeout
        self._items = {}
        self._lock = threading.Lock()
        self.synced = threading.Event()
        self._stop = threading.Event()
        self._thread = None
        self._response = None
        self.lists = 0
        self.watches = 0

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

    def stop(self):
        self._stop.set()
        response = self._response
        if response is not None:
            try:
                response.close()
            except Exception:  # pragma: no cover
                pass

    def update(self, obj):
        """Write-through: put an object we just wrote, unless the cache already has a newer one."""
        obj = self._slim(obj)
        key = self.key(obj)
        with self._lock:
            old = self._items.get(key)
            try:
                newer = old is None or int(obj["metadata"]["resourceVersion"]) >= int(old["metadata"]["resourceVersion"])
            except (KeyError, ValueError):
                newer = True
            if newer:
                self._items[key] = obj

    def _list(self):
        """A paged LIST (``limit``/``continue``): only one page of raw JSON is held at a time."""
        items = {}
        token = None
        while True:
            kw = {"limit": self._page_size} if self._page_size else {}
            if token:
                kw["_continue"] = token
            response = self._list_call(_preload_content=False, **kw)
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
        self.synced.set()
        self._on_change("SYNCED", None)
        return version

    def _run(self):
        version = None
        while not self._stop.is_set():
            try:
                if version is None:
                    version = self._list()
                version = self._watch(version)
            except Exception as exc:  # connection lost, 410 Gone, ...
                if self._stop.is_set():
                    return
                gone = isinstance(exc, ApiException) and getattr(exc, "status", None) == 410
                LOG.info("%s watch ended (%s); %s", self.name, exc, "re-listing" if gone else "retrying")
                if gone:
                    version = None
                time.sleep(0.5)

    def _watch(self, version):
        self.watches += 1
        response = self._list_call(
            watch=True, resource_version=version, allow_watch_bookmarks=True,
            timeout_seconds=self._watch_timeout, _preload_content=False,
        )
        self._response = response
        buffer = b""
        try:
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
                    if kind == "ERROR":
                        if obj.get("code") == 410:
                            return None  # expired: list again
                        raise RuntimeError("watch error: %s" % obj.get("message"))
                    version = obj["metadata"].get("resourceVersion", version)
                    if kind == "BOOKMARK":
                        continue
                    obj = self._slim(obj)
                    with self._lock:
                        if kind == "DELETED":
                            self._items.pop(self.key(obj), None)
                        else:
                            self._items[self.key(obj)] = obj
                    self._on_change(kind, obj)
        finally:
            self._response = None
            response.release_conn()
        return version


class Kube:
    """The controller's writes, plus informers for its three kinds of object."""

    def __init__(self, api_client, namespace=None):
        self.api_client = api_client
        self.counter = ApiCounter(api_client)
        self.core = k8s_client.CoreV1Api(api_client)
        self.custom = k8s_client.CustomObjectsApi(api_client)
        self.coordination = k8s_client.CoordinationV1Api(api_client)
        self.namespace = namespace or None  # None: every namespace

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

    def informers(self, on_change):
        return dict(
            (kind, Informer(kind, self._lister(kind), lambda t, o, k=kind: on_change(k, t, o),
                            slim=self.slimmer(kind)))
            for kind in ("pods", "elasticworkers", "elasticworkerautoscalers")
        )

    def list_once(self, kind, name=None):
        """One (paged) LIST (the Ansible modules use this instead of a watch)."""
        informer = Informer(kind, self._lister(kind), slim=self.slimmer(kind))
        informer._list()
        return informer.items()

    # ---------------------------------------------------------- writes

    def create_pod(self, manifest):
        try:
            return self.core.create_namespaced_pod(manifest["metadata"]["namespace"], manifest,
                                                   _preload_content=False)
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
            self.core.delete_namespaced_pod(name, namespace, body=body, _preload_content=False)
            return True
        except ApiException as exc:
            if exc.status in (404, 409):  # gone already / replaced by another pod of that name
                return False
            raise

    def patch_pod_annotations(self, namespace, name, annotations):
        """Merge-patch annotations; a value of None removes the annotation."""
        body = {"metadata": {"annotations": annotations}}
        return json.loads(self.merge_patch("/api/v1/namespaces/%s/pods/%s" % (namespace, name), body).data)

    def merge_patch(self, path, body):
        """A JSON merge patch (the generated client would send a JSON patch for a dict body)."""
        response = self.api_client.call_api(
            path, "PATCH", body=body, auth_settings=["BearerToken"], _preload_content=False,
            header_params={"Content-Type": "application/merge-patch+json", "Accept": "application/json"})
        return response[0] if isinstance(response, tuple) else response

    def patch_status(self, plural, namespace, name, status):
        return self.custom.patch_namespaced_custom_object_status(
            R.GROUP, R.VERSION, namespace, plural, name, {"status": status}, _preload_content=False)

    def scale(self, namespace, name, replicas):
        return self.custom.patch_namespaced_custom_object_scale(
            R.GROUP, R.VERSION, namespace, R.EW_PLURAL, name, {"spec": {"replicas": int(replicas)}},
            _preload_content=False)

    def read_secret_key(self, namespace, name, key):
        secret = json.loads(self.core.read_namespaced_secret(name, namespace, _preload_content=False).data)
        import base64
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
            self.core.create_namespaced_event(meta["namespace"], body, _preload_content=False)
        except ApiException as exc:  # events are advisory
            LOG.debug("event not recorded: %s", exc)


class LeaderElector:
    """Leader election on a coordination.k8s.io/v1 Lease.

    The holder renews every ``renew_seconds``; another candidate takes the
    Lease only when ``renewTime + leaseDurationSeconds`` has passed. Every
    write carries the resourceVersion it read, so two candidates can never
    both win (the API server rejects the second write with 409).
    """

    def __init__(self, kube, namespace, name, identity, duration=15, renew_seconds=None):
        self.kube = kube
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.duration = int(duration)
        self.renew_seconds = renew_seconds or max(1.0, self.duration / 5.0)
        self._leader_until = 0.0
        self.transitions = 0

    @property
    def is_leader(self):
        return time.monotonic() < self._leader_until

    def _spec(self, old_spec, transitions):
        now = _now_micro()
        spec = {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": self.duration,
            "renewTime": now,
            "leaseTransitions": transitions,
        }
        if not old_spec or old_spec.get("holderIdentity") != self.identity:
            spec["acquireTime"] = now
        else:
            spec["acquireTime"] = old_spec.get("acquireTime") or now
        return spec

    def try_acquire_or_renew(self):
        """One attempt; returns True while this process holds the Lease."""
        started = time.monotonic()
        coordination = self.kube.coordination
        try:
            lease = json.loads(coordination.read_namespaced_lease(
                self.name, self.namespace, _preload_content=False).data)
        except ApiException as exc:
            if exc.status != 404:
                raise
            body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": self.name, "namespace": self.namespace},
                    "spec": self._spec(None, 0)}
            try:
                coordination.create_namespaced_lease(self.namespace, body, _preload_content=False)
            except ApiException as exc2:
                if exc2.status == 409:
                    return False
                raise
            self._leader_until = started + self.duration
            return True
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity")
        renewed = _parse_time(spec.get("renewTime")) or 0
        duration = spec.get("leaseDurationSeconds") or self.duration
        expired = time.time() > renewed + duration
        if holder and holder != self.identity and not expired:
            self._leader_until = 0.0
            return False
        transitions = int(spec.get("leaseTransitions") or 0) + (0 if holder == self.identity else 1)
        lease["spec"] = self._spec(spec, transitions)
        try:
            coordination.replace_namespaced_lease(self.name, self.namespace, lease, _preload_content=False)
        except ApiException as exc:
            if exc.status == 409:  # someone else wrote first
                self._leader_until = 0.0
                return False
            raise
        if holder != self.identity:
            self.transitions += 1
        # Keep a safety margin: stop acting before anyone else may take over.
        self._leader_until = started + self.duration * 0.8
        return True

    def release(self):
        """Give the Lease up at shutdown so a peer takes over at once."""
        if not self.is_leader:
            return
        try:
            lease = json.loads(self.kube.coordination.read_namespaced_lease(
                self.name, self.namespace, _preload_content=False).data)
            if (lease.get("spec") or {}).get("holderIdentity") == self.identity:
                lease["spec"]["holderIdentity"] = None
                lease["spec"]["leaseDurationSeconds"] = 1
                self.kube.coordination.replace_namespaced_lease(
                    self.name, self.namespace, lease, _preload_content=False)
        except ApiException:
            pass
        self._leader_until = 0.0
