# -*- coding: utf-8 -*-
# Copyright: elastic_airflow developers
# Apache License 2.0 (see LICENSE)
"""Checks of Kubernetes values that every layer's settings use: quantities,
container resources, object names and image references.

Pure Python (no Ansible imports): the collection's filter and test plugins
expose these to the roles' validate tasks, so that every layer rejects bad
input with the same rules and the same wording, before anything is applied.
The rules follow the API server's (apimachinery's resource.Quantity,
validation.IsDNS1123Label/Subdomain, the distribution reference grammar).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import re
from decimal import Decimal, InvalidOperation

# <number><suffix>: a decimal number, then a binary-SI suffix, a decimal-SI
# suffix or a decimal exponent. No sign: no setting of ours may be negative.
_QUANTITY = re.compile(r"^(?P<number>[0-9]+(\.[0-9]*)?|\.[0-9]+)"
                       r"(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]|[eE][+-]?[0-9]+)?$")
_BINARY = dict(Ki=2 ** 10, Mi=2 ** 20, Gi=2 ** 30, Ti=2 ** 40, Pi=2 ** 50, Ei=2 ** 60)
_DECIMAL = dict(n=Decimal("1e-9"), u=Decimal("1e-6"), m=Decimal("1e-3"), k=Decimal("1e3"), M=Decimal("1e6"),
                G=Decimal("1e9"), T=Decimal("1e12"), P=Decimal("1e15"), E=Decimal("1e18"))

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")

# The distribution reference grammar: [host[:port]/]path[:tag][@digest].
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_HOST = r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*(?::[0-9]+)?/)"
_IMAGE = re.compile(r"^(?P<name>%s?%s(?:/%s)*)(?::(?P<tag>[\w][\w.-]{0,127}))?(?:@(?P<digest>sha256:[a-f0-9]{64}))?$"
                    % (_HOST, _PATH_COMPONENT, _PATH_COMPONENT))

QUANTITY_EXAMPLES = "such as 250m, 1 or 512Mi"


def quantity_value(value):
    """The number a Kubernetes quantity stands for (a Decimal), or None if it is not one.

    Integers and floats count as plain numbers (YAML gives `cpu: 1` as an int)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return Decimal(str(value)) if value >= 0 else None
    if not isinstance(value, str):
        return None
    match = _QUANTITY.match(value)
    if not match:
        return None
    try:
        number = Decimal(match.group("number"))
    except InvalidOperation:  # pragma: no cover - the pattern admits only decimals
        return None
    suffix = match.group("suffix") or ""
    if suffix in _BINARY:
        return number * _BINARY[suffix]
    if suffix in _DECIMAL:
        return number * _DECIMAL[suffix]
    if suffix:
        return number.scaleb(int(suffix[1:]))
    return number


def is_quantity(value, positive=False):
    """A non-negative Kubernetes quantity (positive=True: greater than zero)."""
    number = quantity_value(value)
    return number is not None and (number > 0 or not positive)


def resource_errors(resources_by_name):
    """What is wrong with container resources, one sentence each ([] when nothing is).

    `resources_by_name` maps variable names to their values, each a mapping with
    `requests` and/or `limits`, which map resource names to quantities. A request
    above its limit is refused too (the API server would reject the pod)."""
    errors = []
    for name, resources in resources_by_name.items():
        if not isinstance(resources, dict):
            errors.append("%s must be a mapping with 'requests' and/or 'limits' (got %r)." % (name, resources))
            continue
        unknown = sorted(str(key) for key in resources if key not in ("requests", "limits"))
        if unknown:
            errors.append("%s must be a mapping with only 'requests' and 'limits' (got %s)."
                          % (name, ", ".join(repr(key) for key in unknown)))
        values = {}
        for kind in ("requests", "limits"):
            entries = resources.get(kind) or {}
            if not isinstance(entries, dict):
                errors.append("%s.%s must map resource names to quantities %s (got %r)."
                              % (name, kind, QUANTITY_EXAMPLES, entries))
                continue
            for resource, quantity in entries.items():
                number = quantity_value(quantity)
                if number is None:
                    errors.append("%s.%s.%s must be a non-negative Kubernetes quantity %s (got %r)."
                                  % (name, kind, resource, QUANTITY_EXAMPLES, quantity))
                values[kind, resource] = number
        for (kind, resource), request in sorted(values.items()):
            limit = values.get(("limits", resource))
            if kind == "requests" and request is not None and limit is not None and request > limit:
                errors.append("%s.requests.%s (%s) must not exceed %s.limits.%s (%s)."
                              % (name, resource, resources["requests"][resource], name, resource,
                                 resources["limits"][resource]))
    return errors


def is_dns_label(value):
    """A DNS-1123 label: a namespace, a Service, most object names' parts."""
    return isinstance(value, str) and len(value) <= 63 and bool(_DNS_LABEL.match(value))


def is_dns_subdomain(value):
    """A DNS-1123 subdomain: the name of a Secret, a claim, a StorageClass, ..."""
    return (isinstance(value, str) and 0 < len(value) <= 253
            and all(_DNS_LABEL.match(part) for part in value.split(".")))


def image_parts(value):
    """(name, tag, digest) of an image reference, or None if it is not one."""
    if not isinstance(value, str):
        return None
    match = _IMAGE.match(value)
    if not match:
        return None
    return match.group("name"), match.group("tag"), match.group("digest")


def is_pinned_image(value):
    """An image reference pinned by a tag other than `latest`, or by a digest:
    a re-run, or a node pulling it later, gets the same image."""
    parts = image_parts(value)
    if parts is None:
        return False
    _name, tag, digest = parts
    return bool(digest) or (bool(tag) and tag != "latest")


# scheme://userinfo@ : the userinfo (user, password or token) goes.
_URL_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/?#\s]*@")
# Query parameters and key=value pairs whose name says they carry a secret.
_SECRET_PARAM = re.compile(r"(?i)(?P<key>[?&;]?[A-Za-z0-9_.-]*"
                           r"(?:token|passw(?:or)?d|pwd|secret|key|auth|signature|credential)"
                           r"[A-Za-z0-9_.-]*=)[^&#\s]*")
REDACTED = "<redacted>"


def redact_url(value):
    """The text of a URL (or any setting) fit to print in a message: the
    userinfo of every scheme://user:password@host and the values of
    password/token/secret/key parameters are replaced by <redacted>. Other
    text is kept, so the message still shows what was wrong."""
    text = value if isinstance(value, str) else str(value)
    text = _URL_USERINFO.sub(lambda m: m.group("scheme") + REDACTED + "@", text)
    return _SECRET_PARAM.sub(lambda m: m.group("key") + REDACTED, text)


_DEFAULT_CLASS_ANNOTATIONS = ("storageclass.kubernetes.io/is-default-class",
                              "storageclass.beta.kubernetes.io/is-default-class")


def storage_class_errors(claims, storage_classes):
    """What is wrong with the StorageClasses of the claims a layer creates.

    claims: [{var, class, access_modes}] (var: the variable naming the
    class; class: its value, empty for the cluster's default).
    storage_classes: StorageClass objects as the API returns them.
    Returns one sentence per problem, naming the variable."""
    names = sorted((sc.get("metadata") or {}).get("name", "") for sc in storage_classes)
    defaults = sorted(
        (sc.get("metadata") or {}).get("name", "") for sc in storage_classes
        if any(((sc.get("metadata") or {}).get("annotations") or {}).get(a) == "true"
               for a in _DEFAULT_CLASS_ANNOTATIONS))
    known = ", ".join(names) or "none"
    errors = []
    for claim in claims:
        var, name = claim["var"], claim.get("class") or ""
        modes = claim.get("access_modes") or ["ReadWriteOnce"]
        if name and name not in names:
            errors.append("%s: StorageClass '%s' does not exist (StorageClasses of this cluster: %s)."
                          % (var, name, known))
        elif not name and "ReadWriteMany" in modes:
            errors.append("%s is empty, but the claim asks for ReadWriteMany, which the default StorageClass "
                          "(%s) cannot be assumed to serve (local-path and EBS cannot): name a class that can, "
                          "such as an NFS or EFS one (StorageClasses of this cluster: %s)."
                          % (var, ", ".join(defaults) or "none", known))
        elif not name and not defaults:
            errors.append("%s is empty, which means the cluster's default StorageClass, and this cluster has "
                          "none (EKS 1.30 and later have none): the claim would stay Pending. Name a StorageClass "
                          "(StorageClasses of this cluster: %s) or mark one as the default." % (var, known))
    return errors
