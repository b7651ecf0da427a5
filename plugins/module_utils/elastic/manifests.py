# -*- coding: utf-8 -*-
# Copyright: elastic_airflow developers
# Apache License 2.0 (see LICENSE)
"""Apply a layer's manifests in one go, then wait for what matters.

The engine behind the ``apply_manifests`` action. The rules are pure
functions over plain dicts (what the API returns), so they are unit tested
without a cluster:

- ``comparable`` / ``differs``: whether an apply changed an object. Status and
  the fields the API server maintains are ignored, so a controller updating a
  Deployment's status between the read and the apply is not a change.
- ``readiness``: when an object is done. The rules of kubernetes.core's
  waiter (rollout complete for Deployments, StatefulSets and DaemonSets) plus
  conditions: Job Complete (Failed fails at once instead of running out the
  timeout), CRD Established, APIService Available.
- ``redacted``: a Secret as it may be shown in a diff: keys, never values.

``ManifestRun`` drives a kubernetes ``DynamicClient`` (the one
kubernetes.core's ``get_api_client`` builds): a read and a server-side apply
per object, deletions, a prune by label selector, and one wait loop for all
objects at once, so rollouts proceed in parallel instead of one after the
other.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import copy
import time

# Maintained by the API server, never by the manifest.
SERVER_METADATA = ("managedFields", "resourceVersion", "generation", "creationTimestamp", "uid", "selfLink")

READY = "ready"
WAITING = "waiting"
FAILED = "failed"

HIDDEN = "<hidden>"


def plain(_client, data):
    """Serializer for the client's requests: the response as the dict the API sent.

    The client's default wraps every response in a ResourceInstance (a tree of
    ResourceFields) that ``to_dict()`` then copies back: about 1 ms of CPU per
    response on the local cluster (a GET of a StatefulSet is about 7 ms), paid
    two to three times per object of every layer.
    """
    return data


class ManifestError(Exception):
    """A manifest could not be applied, or an object failed or timed out."""


def identity(obj):
    """(apiVersion, kind, namespace, name) of an object."""
    meta = obj.get("metadata") or {}
    return obj.get("apiVersion", ""), obj.get("kind", ""), meta.get("namespace") or "", meta.get("name", "")


def describe(obj):
    api_version, kind, namespace, name = identity(obj)
    return "%s %s" % (kind, "%s/%s" % (namespace, name) if namespace else name)


def comparable(obj):
    """The part of an object a manifest owns: no status, no server metadata."""
    if obj is None:
        return None
    out = copy.deepcopy(obj)
    out.pop("status", None)
    meta = out.get("metadata") or {}
    for key in SERVER_METADATA:
        meta.pop(key, None)
    return out


def differs(before, after):
    return comparable(before) != comparable(after)


def redacted(obj):
    """The object as it may be printed: a Secret keeps its keys, not its values."""
    if obj is None:
        return None
    out = comparable(obj)
    if out.get("kind") == "Secret":
        for field in ("data", "stringData"):
            if isinstance(out.get(field), dict):
                out[field] = dict((key, HIDDEN) for key in out[field])
    annotations = (out.get("metadata") or {}).get("annotations") or {}
    # kubectl client-side apply copies the whole object, values included, here.
    if "kubectl.kubernetes.io/last-applied-configuration" in annotations:
        annotations["kubectl.kubernetes.io/last-applied-configuration"] = HIDDEN
    return out


def _condition(obj, kind):
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == kind:
            return cond
    return None


def _condition_true(obj, kind):
    cond = _condition(obj, kind)
    return bool(cond) and cond.get("status") == "True"


def _rollout(obj):
    """Deployment / StatefulSet / DaemonSet rollout: (done, progress text)."""
    kind = obj.get("kind")
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    generation = (obj.get("metadata") or {}).get("generation") or 0
    if (status.get("observedGeneration") or 0) < generation:
        return False, "the controller has not seen generation %s yet" % generation
    if kind == "DaemonSet":
        desired = status.get("desiredNumberScheduled")
        updated = status.get("updatedNumberScheduled") or 0
        ready = status.get("numberReady") or 0
        done = desired is not None and updated == desired and ready == desired and not status.get("numberUnavailable")
        return done, "%s of %s pods updated and ready" % (min(updated, ready), desired)
    wanted = spec.get("replicas", 1)
    replicas = status.get("replicas") or 0
    updated = status.get("updatedReplicas") or 0
    if kind == "Deployment":
        available = status.get("availableReplicas") or 0
        done = (updated == wanted and replicas == wanted and available == wanted
                and not status.get("unavailableReplicas"))
        return done, "%s of %s replicas updated, %s available, %s in all" % (updated, wanted, available, replicas)
    ready = status.get("readyReplicas") or 0
    if (spec.get("updateStrategy") or {}).get("type") == "OnDelete":
        return replicas == wanted and ready == wanted, "%s of %s replicas ready" % (ready, wanted)
    revision_done = status.get("updateRevision") == status.get("currentRevision") or wanted == 0
    done = revision_done and updated == wanted and ready == wanted and replicas == wanted
    return done, "%s of %s replicas updated, %s ready" % (updated, wanted, ready)


def readiness(obj):
    """(state, detail) of an object, or None for kinds with nothing to wait for."""
    kind = obj.get("kind")
    if kind in ("Deployment", "StatefulSet", "DaemonSet"):
        done, detail = _rollout(obj)
        return (READY if done else WAITING), detail
    if kind == "Job":
        failed = _condition(obj, "Failed")
        if failed and failed.get("status") == "True":
            return FAILED, "failed: %s %s" % (failed.get("reason", ""), failed.get("message", ""))
        if _condition_true(obj, "Complete"):
            return READY, "complete"
        status = obj.get("status") or {}
        return WAITING, "%s active, %s failed pods" % (status.get("active") or 0, status.get("failed") or 0)
    if kind == "CustomResourceDefinition":
        names = _condition(obj, "NamesAccepted")
        if names and names.get("status") == "False":
            return FAILED, "names not accepted: %s" % names.get("message", "")
        return (READY, "established") if _condition_true(obj, "Established") else (WAITING, "not established yet")
    if kind == "APIService":
        if _condition_true(obj, "Available"):
            return READY, "available"
        cond = _condition(obj, "Available") or {}
        return WAITING, "not available: %s" % (cond.get("message") or cond.get("reason") or "no status yet")
    return None


def join_label_selectors(requirements):
    """One label selector from an item's ``label_selectors``: its list of
    requirements such as ``app=web`` joined with commas (a single string is
    taken as it is)."""
    if isinstance(requirements, str):
        return requirements
    if isinstance(requirements, (list, tuple)) and all(isinstance(r, str) for r in requirements):
        return ",".join(requirements)
    raise ManifestError("label_selectors must be a list of key=value strings, got %r" % (requirements,))


class ManifestRun:
    """One task's worth of applies, deletions and waits.

    ``client`` is a kubernetes ``DynamicClient``; ``not_found`` and
    ``resource_missing`` are the exception types that mean "no such object"
    and "no such kind" (passed in so this module imports no client library).
    """

    def __init__(self, client, not_found, resource_missing, field_manager, force_conflicts=True,
                 check_mode=False, sleep=time.sleep, clock=time.monotonic):
        self.client = client
        self.not_found = not_found
        self.resource_missing = resource_missing
        self.field_manager = field_manager
        self.force_conflicts = force_conflicts
        self.check_mode = check_mode
        self.sleep = sleep
        self.clock = clock
        self.outcomes = []
        self._watched = []
        self._namespaces = {}

    # -- reading -------------------------------------------------------------

    def resource(self, api_version, kind):
        try:
            return self.client.resources.get(api_version=api_version, kind=kind)
        except self.resource_missing:
            return None

    def read(self, resource, name, namespace):
        try:
            return resource.get(name=name, namespace=namespace if resource.namespaced else None, serializer=plain)
        except self.not_found:
            return None

    def namespace_exists(self, name):
        if name not in self._namespaces:
            resource = self.resource("v1", "Namespace")
            self._namespaces[name] = self.read(resource, name, None) is not None
        return self._namespaces[name]

    def _record(self, obj, action, before=None, after=None):
        api_version, kind, namespace, name = identity(obj)
        outcome = {"api_version": api_version, "kind": kind, "namespace": namespace, "name": name, "action": action}
        self.outcomes.append((outcome, before, after))
        return outcome

    # -- applying ------------------------------------------------------------

    def apply(self, definitions, namespace):
        """Server-side apply every definition, in order."""
        for definition in definitions:
            definition = copy.deepcopy(definition)
            api_version, kind, obj_ns, name = identity(definition)
            if not (api_version and kind and name):
                raise ManifestError("every manifest needs apiVersion, kind and metadata.name; got %s"
                                    % describe(definition))
            resource = self.resource(api_version, kind)
            if resource is None:
                if self.check_mode:
                    # Its CRD is applied by this run and not served yet.
                    self._record(definition, "would create (its API is not served yet)")
                    continue
                raise ManifestError("%s: the cluster does not serve kind %s of %s"
                                    % (describe(definition), kind, api_version))
            if resource.namespaced:
                obj_ns = obj_ns or namespace
                definition["metadata"]["namespace"] = obj_ns
            else:
                definition["metadata"].pop("namespace", None)
                obj_ns = None
            if self.check_mode and obj_ns and not self.namespace_exists(obj_ns):
                # The API server refuses a dry run into a namespace that does not exist yet.
                self._record(definition, "would create (namespace %s does not exist yet)" % obj_ns, None, definition)
                continue
            before = self.read(resource, name, obj_ns)
            after = self._server_side_apply(resource, definition, name, obj_ns)
            if before is None:
                action = "would create" if self.check_mode else "created"
            elif differs(before, after):
                action = "would change" if self.check_mode else "configured"
            else:
                action = "unchanged"
            self._record(definition, action, before, after)

    def _server_side_apply(self, resource, definition, name, namespace):
        params = {"field_manager": self.field_manager, "force_conflicts": self.force_conflicts}
        if self.check_mode:
            params["dry_run"] = "All"
        try:
            return self.client.server_side_apply(resource, body=definition, name=name, namespace=namespace,
                                                 serializer=plain, **params)
        except Exception as exc:  # the client raises one type per HTTP status
            raise ManifestError(
                "%s: %s" % (describe(definition), api_error(exc, secret=definition.get("kind") == "Secret"))) from exc

    # -- deleting ------------------------------------------------------------

    def delete(self, refs, namespace):
        """Delete each {api_version, kind, name[, namespace]} that exists."""
        for ref in refs:
            resource = self.resource(ref["api_version"], ref["kind"])
            if resource is None:
                continue
            obj_ns = (ref.get("namespace") or namespace) if resource.namespaced else None
            existing = self.read(resource, ref["name"], obj_ns)
            if existing is not None:
                self._delete(resource, existing)

    def prune(self, selectors, namespace):
        """Delete the objects matching each selector that this run did not apply."""
        applied = set((o["api_version"], o["kind"], o["namespace"], o["name"]) for o, _b, _a in self.outcomes)
        for sel in selectors:
            resource = self.resource(sel["api_version"], sel["kind"])
            if resource is None:
                continue
            obj_ns = (sel.get("namespace") or namespace) if resource.namespaced else None
            label_selector = join_label_selectors(sel["label_selectors"])
            try:
                listed = resource.get(namespace=obj_ns, label_selector=label_selector, serializer=plain)
            except Exception as exc:  # the client raises one type per HTTP status
                raise ManifestError("listing %s to prune: %s" % (sel["kind"], api_error(exc))) from exc
            for item in listed.get("items") or []:
                item.setdefault("apiVersion", sel["api_version"])
                item.setdefault("kind", sel["kind"])
                if identity(item) not in applied:
                    self._delete(resource, item)

    def _delete(self, resource, existing):
        _v, _k, obj_ns, name = identity(existing)
        if not self.check_mode:
            try:
                resource.delete(name=name, namespace=obj_ns or None,
                                body={"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": "Background"})
            except self.not_found:
                return
        self._record(existing, "would delete" if self.check_mode else "deleted", existing, None)

    # -- waiting -------------------------------------------------------------

    def watch(self, selectors, namespace):
        """Also wait for existing objects: each {api_version, kind} with a name or label_selectors."""
        for sel in selectors:
            resource = self.resource(sel["api_version"], sel["kind"])
            if resource is None:
                raise ManifestError("cannot wait for %s: the cluster does not serve kind %s of %s" % (
                    sel.get("name") or sel["kind"], sel["kind"], sel["api_version"]))
            obj_ns = (sel.get("namespace") or namespace) if resource.namespaced else None
            if sel.get("name"):
                found = self.read(resource, sel["name"], obj_ns)
                items = [found] if found is not None else []
                if not items and not self.check_mode:
                    raise ManifestError("cannot wait for %s %s: it does not exist" % (sel["kind"], sel["name"]))
            else:
                label_selector = join_label_selectors(sel["label_selectors"])
                try:
                    listed = resource.get(namespace=obj_ns, label_selector=label_selector, serializer=plain)
                    items = listed["items"] or []
                except Exception as exc:  # the client raises one type per HTTP status
                    raise ManifestError("listing %s to wait for: %s" % (sel["kind"], api_error(exc))) from exc
            for item in items:
                item.setdefault("apiVersion", sel["api_version"])
                item.setdefault("kind", sel["kind"])
                self._watched.append(item)

    def wait(self, timeout, max_interval=0.5, applied=True):
        """Wait until every applied (or watched) object with a readiness rule is ready.

        Reads start 0.1 s apart and slow down to max_interval: a rollout on a
        small cluster is over in about a second, a long one costs few reads.
        """
        if self.check_mode:
            return
        pending = {}
        for outcome, _before, after in self.outcomes if applied else []:
            if outcome["action"] in ("deleted",) or after is None or readiness(after) is None:
                continue
            pending[identity(after)] = after
        for obj in self._watched:
            if readiness(obj) is not None:
                pending[identity(obj)] = obj
        deadline = self.clock() + timeout
        interval = 0.1
        while pending:
            for key, obj in list(pending.items()):
                state, detail = readiness(obj)
                if state == READY:
                    del pending[key]
                elif state == FAILED:
                    raise ManifestError("%s %s" % (describe(obj), detail))
            if not pending:
                return
            if self.clock() >= deadline:
                raise ManifestError("timed out after %s s waiting for %s" % (
                    timeout, "; ".join("%s (%s)" % (describe(obj), readiness(obj)[1]) for obj in pending.values())))
            self.sleep(interval)
            interval = min(max_interval, interval + 0.1)
            for key, obj in list(pending.items()):
                api_version, kind, obj_ns, name = key
                fresh = self.read(self.resource(api_version, kind), name, obj_ns or None)
                if fresh is None:
                    raise ManifestError("%s was deleted while waiting for it" % describe(obj))
                pending[key] = fresh

    # -- results -------------------------------------------------------------

    @property
    def changed(self):
        return any(outcome["action"] != "unchanged" for outcome, _b, _a in self.outcomes)

    def objects(self):
        return [outcome for outcome, _b, _a in self.outcomes]

    def diffs(self):
        """Ansible diffs of what changed, Secrets without their values."""
        out = []
        for outcome, before, after in self.outcomes:
            if outcome["action"] == "unchanged":
                continue
            header = "%s %s (%s)" % (outcome["kind"], outcome["name"], outcome["action"])
            out.append({
                "before_header": header,
                "after_header": header,
                "before": redacted(before) if before is not None else {},
                "after": redacted(after) if after is not None else {},
            })
        return out


def api_error(exc, secret=False):
    """A short message for an API error; for a Secret, never its body (values could be echoed)."""
    status = getattr(exc, "status", None)
    reason = getattr(exc, "reason", None) or type(exc).__name__
    if secret:
        return "HTTP %s %s (details hidden: the object is a Secret)" % (status, reason)
    summary = getattr(exc, "summary", None)
    if callable(summary):
        try:
            return summary()
        except Exception:  # the body may not be JSON
            pass
    body = getattr(exc, "body", None)
    return "HTTP %s %s %s" % (status, reason, body or exc)
