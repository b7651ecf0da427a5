# -*- coding: utf-8 -*-
# Copyright: elastic_airflow developers
# Apache License 2.0 (see LICENSE)
"""The user's pod settings, applied to and checked for every pod of the collection.

Pure Python (no Ansible imports), exposed by the filters with_pod_settings,
pod_settings_errors and pod_extension_errors (plugins/filter/pod.py).

Settings come as one mapping keyed by the variable names of the base role
(roles/elastic_airflow/vars/main.yml, elastic_airflow_pod_settings): a global
value for every pod (elastic_airflow_scheduling, elastic_airflow_pod_labels,
...) and one per component (elastic_airflow_component_scheduling,
elastic_airflow_component_pod_labels, ...), keyed by component. A component's
value replaces the global one (scheduling: field by field, as before).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import re

from .validation import is_dns_label, is_dns_subdomain

SCHEDULING_FIELDS = ("nodeSelector", "tolerations", "affinity", "topologySpreadConstraints", "priorityClassName")
# Fields of a PodSecurityContext and a SecurityContext (core/v1).
POD_SECURITY_FIELDS = ("appArmorProfile", "fsGroup", "fsGroupChangePolicy", "runAsGroup", "runAsNonRoot",
                       "runAsUser", "seLinuxChangePolicy", "seLinuxOptions", "seccompProfile", "supplementalGroups",
                       "supplementalGroupsPolicy", "sysctls", "windowsOptions")
CONTAINER_SECURITY_FIELDS = ("allowPrivilegeEscalation", "appArmorProfile", "capabilities", "privileged",
                             "procMount", "readOnlyRootFilesystem", "runAsGroup", "runAsNonRoot", "runAsUser",
                             "seLinuxOptions", "seccompProfile", "windowsOptions")
# What `platform` leaves to the platform (OpenShift's SCCs assign them).
PLATFORM_ASSIGNED = ("runAsUser", "runAsGroup", "fsGroup")
MODES = ("fixed", "platform")

# Labels and annotations the collection sets itself: selectors, NetworkPolicies
# and the ElasticWorker controller depend on them.
RESERVED_LABELS = ("app.kubernetes.io/instance", "app.kubernetes.io/component", "app.kubernetes.io/name",
                   "app.kubernetes.io/part-of", "app.kubernetes.io/managed-by")
RESERVED_PREFIXES = ("elastic-airflow.io/",)
RESERVED_ANNOTATION_PREFIXES = ("elastic-airflow.io/", "checksum/")

# Variable names in the settings mapping.
MODE = "elastic_airflow_security_context_mode"
PAIRS = (  # (global, per component)
    ("elastic_airflow_scheduling", "elastic_airflow_component_scheduling"),
    ("elastic_airflow_pod_annotations", "elastic_airflow_component_pod_annotations"),
    ("elastic_airflow_pod_labels", "elastic_airflow_component_pod_labels"),
    ("elastic_airflow_pod_security_context", "elastic_airflow_component_pod_security_context"),
    ("elastic_airflow_container_security_context", "elastic_airflow_component_container_security_context"),
)

_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?"
_QUALIFIED_NAME = re.compile(r"^(?:(?P<prefix>[^/]+)/)?(?P<name>%s)$" % _NAME)
_LABEL_VALUE = re.compile(r"^(%s)?$" % _NAME)
_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
_RESTRICTED_VOLUMES = ("configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "image", "persistentVolumeClaim",
                       "projected", "secret")


def _copy(value):
    """A copy of the mappings and lists (not copy.deepcopy: Ansible's templated values may not support it)."""
    if isinstance(value, dict):
        return dict((key, _copy(item)) for key, item in value.items())
    if isinstance(value, list):
        return [_copy(item) for item in value]
    return value


def _merge(base, override):
    """base with override's keys over it, mappings merged recursively, lists replaced."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = _copy(value)
    return merged


def _pick(settings, pair, component):
    """The component's value of a setting if it has one, else the global value."""
    overall, per_component = pair
    by_component = settings.get(per_component) or {}
    if component in by_component:
        return by_component[component] or {}
    return settings.get(overall) or {}


def _security_context(own, mode, fields, override):
    context = dict(own or {})
    if mode == "platform":
        for field in fields:
            context.pop(field, None)
    return _merge(context, override)


def with_pod_settings(template, component, settings):
    """The PodTemplateSpec `template` of `component` with the user's settings applied.

    Scheduling fields: the global ones, each replaced by the component's.
    Labels and annotations: the user's under the template's own (the
    collection's win). Security contexts: in mode `platform` the template's
    runAsUser, runAsGroup and fsGroup go; then the user's context is merged
    over the pod's and over every container's (init containers included)."""
    pod = _copy(template)
    meta = pod.setdefault("metadata", {})
    spec = pod.setdefault("spec", {})
    scheduling = dict(settings.get(PAIRS[0][0]) or {})
    scheduling.update((settings.get(PAIRS[0][1]) or {}).get(component) or {})
    spec.update(_copy(scheduling))
    for pair, key in ((PAIRS[1], "annotations"), (PAIRS[2], "labels")):
        mine = meta.get(key) or {}
        theirs = _pick(settings, pair, component)
        if theirs:
            merged = dict(theirs)
            merged.update(mine)
            meta[key] = merged
    mode = settings.get(MODE) or "fixed"
    pod_context = _security_context(spec.get("securityContext"), mode, PLATFORM_ASSIGNED,
                                    _pick(settings, PAIRS[3], component))
    if pod_context or "securityContext" in spec:
        spec["securityContext"] = pod_context
    container_override = _pick(settings, PAIRS[4], component)
    for kind in ("initContainers", "containers"):
        for container in spec.get(kind) or []:
            context = _security_context(container.get("securityContext"), mode, PLATFORM_ASSIGNED[:2],
                                        container_override)
            if context or "securityContext" in container:
                container["securityContext"] = context
    return pod


# -- validation -------------------------------------------------------------------------


def _is_list_of_mappings(value):
    return isinstance(value, list) and all(isinstance(item, dict) for item in value)


def _qualified_name_problem(key):
    if not isinstance(key, str):
        return "is not a string"
    match = _QUALIFIED_NAME.match(key)
    if not match or len(match.group("name")) > 63 or (
            match.group("prefix") is not None and not is_dns_subdomain(match.group("prefix"))):
        return ("is no qualified name ([prefix/]name: name at most 63 letters, digits, '-', '_', '.', starting and "
                "ending with a letter or digit; prefix a DNS subdomain)")
    return None


def _metadata_errors(where, value, labels):
    kind = "labels" if labels else "annotations"
    if not isinstance(value, dict):
        return ["%s must be a mapping of %s (got %r)." % (where, kind, value)]
    errors = []
    reserved_prefixes = RESERVED_PREFIXES if labels else RESERVED_ANNOTATION_PREFIXES
    for key, item in value.items():
        problem = _qualified_name_problem(key)
        if problem:
            errors.append("%s: key %r %s." % (where, key, problem))
            continue
        if (labels and key in RESERVED_LABELS) or key.startswith(reserved_prefixes):
            own = (list(RESERVED_LABELS) if labels else []) + [prefix + "*" for prefix in reserved_prefixes]
            kind_name = "label" if labels else "annotation"
            errors.append("%s: %r is the collection's own %s (%s): selectors, NetworkPolicies and the controller "
                          "rely on those; choose another key." % (where, key, kind_name, ", ".join(own)))
            continue
        if not isinstance(item, str):
            errors.append("%s: the value of %r must be a string (quote it; got %r)." % (where, key, item))
        elif labels and (len(item) > 63 or not _LABEL_VALUE.match(item)):
            errors.append("%s: the value of %r is no label value (at most 63 letters, digits, '-', '_', '.', "
                          "starting and ending with a letter or digit, or empty; got %r)." % (where, key, item))
    return errors


def _scheduling_errors(where, value):
    if not isinstance(value, dict):
        fields = ", ".join(SCHEDULING_FIELDS)
        return ["%s must be a mapping of pod spec fields (%s) (got %r)." % (where, fields, value)]
    errors = []
    unknown = sorted(str(key) for key in value if key not in SCHEDULING_FIELDS)
    if unknown:
        errors.append("%s takes only the pod spec fields %s (unknown: %s)."
                      % (where, ", ".join(SCHEDULING_FIELDS), ", ".join(unknown)))
    selector = value.get("nodeSelector", {})
    if not isinstance(selector, dict) or not all(isinstance(v, str) for v in selector.values()):
        errors.append("%s.nodeSelector must map label keys to strings (quote numbers and booleans; got %r)."
                      % (where, selector))
    for field in ("tolerations", "topologySpreadConstraints"):
        if not _is_list_of_mappings(value.get(field, [])):
            errors.append("%s.%s must be a list of mappings, as in a pod spec (got %r)." % (where, field,
                                                                                            value[field]))
    if not isinstance(value.get("affinity", {}), dict):
        errors.append("%s.affinity must be a mapping, as in a pod spec (got %r)." % (where, value["affinity"]))
    if "priorityClassName" in value and not is_dns_subdomain(value["priorityClassName"]):
        errors.append("%s.priorityClassName must name a PriorityClass (a DNS-1123 subdomain; got %r)."
                      % (where, value["priorityClassName"]))
    return errors


def _security_context_errors(where, value, fields, restricted):
    if not isinstance(value, dict):
        return ["%s must be a mapping of securityContext fields (got %r)." % (where, value)]
    errors = []
    unknown = sorted(str(key) for key in value if key not in fields)
    if unknown:
        errors.append("%s takes only the securityContext fields %s (unknown: %s)."
                      % (where, ", ".join(fields), ", ".join(unknown)))
    for field in ("runAsUser", "runAsGroup", "fsGroup"):
        if field in value and (isinstance(value[field], bool) or not isinstance(value[field], int)
                               or value[field] < 0):
            errors.append("%s.%s must be a number, 0 or more (got %r)." % (where, field, value[field]))
    if not restricted:
        return errors
    refused = []
    if value.get("runAsNonRoot") is False:
        refused.append("runAsNonRoot false")
    if value.get("runAsUser") == 0:
        refused.append("runAsUser 0")
    if value.get("privileged"):
        refused.append("privileged")
    if value.get("allowPrivilegeEscalation") is True:
        refused.append("allowPrivilegeEscalation true")
    if (value.get("seccompProfile") or {}).get("type") not in (None, "RuntimeDefault", "Localhost"):
        refused.append("seccompProfile %s" % value["seccompProfile"].get("type"))
    capabilities = value.get("capabilities") or {}
    if "drop" in capabilities and "ALL" not in (capabilities.get("drop") or []):
        refused.append("capabilities.drop without ALL")
    if set(capabilities.get("add") or []) - {"NET_BIND_SERVICE"}:
        refused.append("capabilities.add other than NET_BIND_SERVICE")
    if value.get("procMount", "Default") != "Default":
        refused.append("procMount %s" % value["procMount"])
    if (value.get("windowsOptions") or {}).get("hostProcess"):
        refused.append("windowsOptions.hostProcess")
    if value.get("sysctls"):
        refused.append("sysctls")
    if refused:
        errors.append("%s: the namespace enforces the Pod Security Standard 'restricted' "
                      "(namespace_pod_security_enforce), which refuses %s; leave them out, or lower "
                      "namespace_pod_security_enforce." % (where, ", ".join(refused)))
    return errors


def pod_settings_errors(settings, components, restricted=True):
    """What is wrong with the pod settings, one sentence per problem naming the variable ([] when nothing).

    `settings` is keyed by variable name (see the module's docstring); `components` are the names the
    per-component settings may use; `restricted`: whether the namespace enforces the Pod Security
    Standard `restricted`, which the security contexts must then keep."""
    checks = {
        PAIRS[0]: _scheduling_errors,
        PAIRS[1]: lambda where, value: _metadata_errors(where, value, labels=False),
        PAIRS[2]: lambda where, value: _metadata_errors(where, value, labels=True),
        PAIRS[3]: lambda where, value: _security_context_errors(where, value, POD_SECURITY_FIELDS, restricted),
        PAIRS[4]: lambda where, value: _security_context_errors(where, value, CONTAINER_SECURITY_FIELDS,
                                                                restricted),
    }
    errors = []
    mode = settings.get(MODE, "fixed")
    if mode not in MODES:
        errors.append("%s must be one of %s (got %r)." % (MODE, ", ".join(MODES), mode))
    for pair in PAIRS:
        overall, per_component = pair
        errors.extend(checks[pair](overall, settings.get(overall, {})))
        by_component = settings.get(per_component, {})
        if not isinstance(by_component, dict):
            errors.append("%s must be a mapping keyed by component (got %r)." % (per_component, by_component))
            continue
        unknown = sorted(str(key) for key in by_component if key not in components)
        if unknown:
            errors.append("%s is keyed by component, one of %s (unknown: %s)."
                          % (per_component, ", ".join(components), ", ".join(unknown)))
        for component, value in by_component.items():
            if component in components:
                errors.extend(checks[pair]("%s['%s']" % (per_component, component), value))
    return errors


# -- the Airflow components' extension points ----------------------------------------------

EXTENSION_KINDS = ("env", "env_from", "volumes", "volume_mounts", "containers", "init_containers")


def _env_errors(where, value):
    errors = []
    for index, env in enumerate(value):
        item = "%s[%d]" % (where, index)
        name = env.get("name")
        if not isinstance(name, str) or not _ENV_NAME.match(name):
            errors.append("%s.name must be an environment variable name (letters, digits, '_', '-', '.', not "
                          "starting with a digit; got %r)." % (item, name))
        if set(env) - {"name", "value", "valueFrom"}:
            errors.append("%s takes only name, value and valueFrom (got %s)." % (item, ", ".join(sorted(env))))
        if "value" in env and "valueFrom" in env:
            errors.append("%s must have value or valueFrom, not both." % item)
        if "value" in env and not isinstance(env["value"], str):
            errors.append("%s.value must be a string (quote it; got %r)." % (item, env["value"]))
        if "valueFrom" in env and not isinstance(env["valueFrom"], dict):
            errors.append("%s.valueFrom must be a mapping, an EnvVarSource (got %r)." % (item, env["valueFrom"]))
    return errors


def _env_from_errors(where, value):
    errors = []
    for index, source in enumerate(value):
        refs = [key for key in ("configMapRef", "secretRef") if key in source]
        if (len(refs) != 1 or set(source) - {"configMapRef", "secretRef", "prefix"}
                or not isinstance(source[refs[0]], dict) or not is_dns_subdomain(source[refs[0]].get("name"))):
            errors.append("%s[%d] must be {configMapRef: {name: <ConfigMap>}} or {secretRef: {name: <Secret>}}, "
                          "with an optional prefix (got %r)." % (where, index, source))
    return errors


def _named_errors(where, value, reserved, what):
    errors = []
    names = [item.get("name") for item in value]
    for index, name in enumerate(names):
        if not is_dns_label(name):
            errors.append("%s[%d].name must be a DNS-1123 label (got %r)." % (where, index, name))
        elif name in reserved:
            errors.append("%s[%d].name %r is taken by one of the collection's own %s (%s)."
                          % (where, index, name, what, ", ".join(sorted(reserved))))
    duplicates = sorted(set(n for n in names if isinstance(n, str) and names.count(n) > 1))
    if duplicates:
        errors.append("%s: the names must be unique (%s appear more than once)." % (where, ", ".join(duplicates)))
    return errors


def pod_extension_errors(extensions, reserved_volumes=(), reserved_containers=(), restricted=True):
    """What is wrong with extension points, one sentence per problem naming the variable ([] when nothing).

    `extensions` maps variable names `<prefix>_extra_<kind>` to their values, <kind> one of
    EXTENSION_KINDS; the mounts of `<prefix>_extra_volume_mounts` must name volumes of
    `<prefix>_extra_volumes`. `reserved_volumes` and `reserved_containers` are the names the
    collection's pods use themselves; `restricted`: whether only the volume sources that the Pod
    Security Standard `restricted` admits may be used."""
    errors = []
    for var, value in extensions.items():
        kind = next((k for k in sorted(EXTENSION_KINDS, key=len, reverse=True) if var.endswith("_extra_" + k)),
                    None)
        if kind is None:
            errors.append("%s is no extension point (<prefix>_extra_<%s>)." % (var, "|".join(EXTENSION_KINDS)))
            continue
        if not _is_list_of_mappings(value):
            # Not the value itself: an environment may hold a secret.
            errors.append("%s must be a list of mappings, as in a pod spec (got a %s%s)." % (
                var, type(value).__name__, "" if not isinstance(value, list) else " with a non-mapping item"))
            continue
        if kind == "env":
            errors.extend(_env_errors(var, value))
        elif kind == "env_from":
            errors.extend(_env_from_errors(var, value))
        elif kind == "volumes":
            errors.extend(_named_errors(var, value, reserved_volumes, "volumes"))
            for index, volume in enumerate(value):
                sources = sorted(set(volume) - {"name"})
                if len(sources) != 1:
                    errors.append("%s[%d] must have a name and one volume source (got %s)."
                                  % (var, index, ", ".join(sources) or "none"))
                elif restricted and sources[0] not in _RESTRICTED_VOLUMES:
                    errors.append("%s[%d]: the namespace enforces the Pod Security Standard 'restricted' "
                                  "(namespace_pod_security_enforce), which admits only %s volumes, not %s: use a "
                                  "PersistentVolumeClaim, or lower namespace_pod_security_enforce."
                                  % (var, index, ", ".join(_RESTRICTED_VOLUMES), sources[0]))
        elif kind == "volume_mounts":
            volumes = extensions.get(var[:-len("volume_mounts")] + "volumes") or []
            names = [v.get("name") for v in volumes if isinstance(v, dict)]
            for index, mount in enumerate(value):
                if not isinstance(mount.get("mountPath"), str) or not mount["mountPath"].startswith("/"):
                    errors.append("%s[%d].mountPath must be an absolute path (got %r)."
                                  % (var, index, mount.get("mountPath")))
                if mount.get("name") not in names:
                    errors.append("%s[%d].name must be the name of one of %s (%s; got %r)."
                                  % (var, index, var[:-len("volume_mounts")] + "volumes",
                                     ", ".join(str(n) for n in names) or "none", mount.get("name")))
        else:
            errors.extend(_named_errors(var, value, reserved_containers, "containers"))
            other = extensions.get(var[:-len(kind)] + ("init_containers" if kind == "containers" else "containers"))
            if kind == "containers" and _is_list_of_mappings(other):
                clash = sorted(set(c.get("name") for c in value) & set(c.get("name") for c in other) - {None})
                if clash:
                    errors.append("%s and %s: a pod's containers and init containers need distinct names (%s "
                                  "appear in both)." % (var, var[:-len(kind)] + "init_containers",
                                                        ", ".join(str(n) for n in clash)))
            for index, container in enumerate(value):
                if not isinstance(container.get("image"), str) or not container["image"]:
                    errors.append("%s[%d].image must be an image reference (got %r)."
                                  % (var, index, container.get("image")))
                if "securityContext" in container:
                    errors.extend(_security_context_errors("%s[%d].securityContext" % (var, index),
                                                           container["securityContext"],
                                                           CONTAINER_SECURITY_FIELDS, restricted))
    return errors
