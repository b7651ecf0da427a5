# -*- coding: utf-8 -*-
# Copyright: elastic_airflow developers
# Apache License 2.0 (see LICENSE)
"""Drain state kept on the worker's pod, as the annotation ``elastic-airflow.io/drain``.

Pure Python over the ``kubernetes`` client (no Ansible). The record travels
with the pod: when the pod is deleted the record goes with it, and a new pod
of the same name (a StatefulSet replacement) starts clean.

Writes are optimistic: a store sends the resourceVersion of the pod it last
read with the patch, and turns the API server's 409 into ``Conflict`` (the
drain reads again and steps from there). Given the pods' uids, a store is
keyed to them: a pod of the same name with another uid is a different worker,
and the drain of the first one is ``gone``.

    from kubernetes import client, config
    config.load_kube_config()            # or load_incluster_config()
    store = PodAnnotationStore(client.CoreV1Api(), "airflow")
"""

from __future__ import annotations

import abc
import json
from typing import Optional

from .drain import Conflict, DrainError, StateStore, WorkerGone, parse_record

ANNOTATION = "elastic-airflow.io/drain"

__all__ = ["ANNOTATION", "AnnotationStore", "PodAnnotationStore", "pod_record", "pod_uid"]


def _status(exc) -> Optional[int]:
    return getattr(exc, "status", None)


def pod_record(pod: dict) -> Optional[dict]:
    """The drain record on a pod given as a dict (what the API returns); DrainError if unreadable."""
    meta = pod.get("metadata") or {}
    raw = (meta.get("annotations") or {}).get(ANNOTATION)
    return parse_record(raw, "annotation %s of pod %s/%s" % (ANNOTATION, meta.get("namespace"), meta.get("name")))


class AnnotationStore(StateStore):
    """What every store of the record on a pod annotation shares: the write.

    A subclass sends the merge patch in ``_send(pod, {annotation: value},
    resource_version)`` (a null value removes the annotation; it returns what
    the API returned), tells the resourceVersion of the pod it last read in
    ``_version`` and reads the record in ``get``/``exists``. ``uids``
    ({pod name: uid}) keys the store to those pods.
    """

    annotation = ANNOTATION
    uids: dict = {}

    @abc.abstractmethod
    def _send(self, pod: str, annotations: dict, resource_version: Optional[str]):
        """Send the merge patch of the pod's annotations; return the API's answer."""

    def _version(self, pod: str) -> Optional[str]:
        return None

    def _reread(self, pod: str) -> None:
        """Called after a 409: refresh what the next read sees."""

    def uid(self, worker):
        return (self.uids or {}).get(worker)

    def _patch(self, pod: str, value: Optional[str]):
        try:
            return self._send(pod, {self.annotation: value}, self._version(pod))
        except Exception as exc:
            if _status(exc) == 404:
                raise WorkerGone(pod) from exc
            if _status(exc) == 409:
                self._reread(pod)
                raise Conflict("pod %s changed since it was read" % pod) from exc
            raise

    def put(self, worker, record):
        self._patch(worker, json.dumps(record, sort_keys=True, separators=(",", ":")))

    def delete(self, worker):
        try:
            self._patch(worker, None)
        except WorkerGone:
            pass


class PodAnnotationStore(AnnotationStore):
    """A :class:`~.drain.StateStore` keyed by pod name in one namespace.

    ``api``: a ``kubernetes.client.CoreV1Api``. Patches touch
    ``metadata.annotations`` only (a null value removes the annotation), so
    nothing else of the pod is touched.
    """

    def __init__(self, api, namespace: str, annotation: str = ANNOTATION, uids: Optional[dict] = None):
        if not namespace:
            raise DrainError("namespace is required for the pod annotation store")
        self.api = api
        self.namespace = namespace
        self.annotation = annotation
        self.uids = dict(uids or {})
        self._versions = {}  # pod name -> resourceVersion of the last read

    def _read(self, pod: str):
        try:
            obj = self.api.read_namespaced_pod(pod, self.namespace)
        except Exception as exc:
            if _status(exc) == 404:
                raise WorkerGone(pod) from exc
            raise
        uid = self.uids.get(pod)
        if uid and obj.metadata and obj.metadata.uid != uid:
            raise WorkerGone(pod)  # replaced by another pod of that name
        self._versions[pod] = getattr(obj.metadata, "resource_version", None) if obj.metadata else None
        return obj

    def _version(self, pod):
        return self._versions.get(pod)

    def _send(self, pod: str, annotations: dict, resource_version: Optional[str]):
        # The generated client sends a dict body as a strategic merge patch
        # (it has no _content_type argument); for metadata.annotations that is
        # a plain merge, and a null value removes the key. A resourceVersion in
        # the patch is a precondition: 409 if the pod changed since.
        metadata = {"annotations": annotations}
        if resource_version:
            metadata["resourceVersion"] = resource_version
        obj = self.api.patch_namespaced_pod(pod, self.namespace, {"metadata": metadata})
        meta = getattr(obj, "metadata", None)
        self._versions[pod] = getattr(meta, "resource_version", None) if meta else None
        return obj

    def get(self, worker):
        obj = self._read(worker)
        annotations = (obj.metadata.annotations or {}) if obj.metadata else {}
        return parse_record(annotations.get(self.annotation),
                            "annotation %s of pod %s/%s" % (self.annotation, self.namespace, worker))

    def exists(self, worker):
        try:
            obj = self._read(worker)
        except WorkerGone:
            return False
        # a pod being deleted is as good as gone for a drain
        return not (obj.metadata and obj.metadata.deletion_timestamp)


def pod_uid(api, namespace: str, pod: str) -> Optional[str]:
    """The pod's uid, or None if it does not exist (for delete preconditions)."""
    try:
        return api.read_namespaced_pod(pod, namespace).metadata.uid
    except Exception as exc:
        if _status(exc) == 404:
            return None
        raise
