"""Drain state kept on the worker's pod, as the annotation ``elastic-airflow.io/drain``.

Pure Python over the ``kubernetes`` client (no Ansible). The record travels
with the pod: when the pod is deleted the record goes with it, and a new pod
of the same name (a StatefulSet replacement) starts clean.

    from kubernetes import client, config
    config.load_kube_config()            # or load_incluster_config()
    store = PodAnnotationStore(client.CoreV1Api(), "airflow")
"""

from __future__ import annotations

import abc
import json
from typing import Optional

from .drain import DrainError, StateStore, WorkerGone

ANNOTATION = "elastic-airflow.io/drain"

__all__ = ["ANNOTATION", "AnnotationStore", "PodAnnotationStore", "pod_uid"]


def _status(exc) -> Optional[int]:
    return getattr(exc, "status", None)


class AnnotationStore(StateStore):
    """What every store of the record on a pod annotation shares: the write.

    A subclass sends the merge patch in ``_send(pod, {annotation: value})``
    (a null value removes the annotation; it returns what the API returned)
    and reads the record in ``get``/``exists``.
    """

    annotation = ANNOTATION

    @abc.abstractmethod
    def _send(self, pod: str, annotations: dict):
        """Send the merge patch of the pod's annotations; return the API's answer."""

    def _patch(self, pod: str, value: Optional[str]):
        try:
            return self._send(pod, {self.annotation: value})
        except Exception as exc:
            if _status(exc) == 404:
                raise WorkerGone(pod) from exc
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

    def __init__(self, api, namespace: str, annotation: str = ANNOTATION):
        if not namespace:
            raise DrainError("namespace is required for the pod annotation store")
        self.api = api
        self.namespace = namespace
        self.annotation = annotation

    def _read(self, pod: str):
        try:
            return self.api.read_namespaced_pod(pod, self.namespace)
        except Exception as exc:
            if _status(exc) == 404:
                raise WorkerGone(pod) from exc
            raise

    def _send(self, pod: str, annotations: dict):
        # The generated client sends a dict body as a strategic merge patch
        # (it has no _content_type argument); for metadata.annotations that is
        # a plain merge, and a null value removes the key.
        return self.api.patch_namespaced_pod(pod, self.namespace, {"metadata": {"annotations": annotations}})

    def get(self, worker):
        obj = self._read(worker)
        annotations = (obj.metadata.annotations or {}) if obj.metadata else {}
        raw = annotations.get(self.annotation)
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise DrainError("annotation %s of pod %s/%s is not JSON: %r" % (self.annotation, self.namespace, worker, raw)) from exc

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
