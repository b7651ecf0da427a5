# -*- coding: utf-8 -*-
# Copyright: elastic_airflow developers
# Apache License 2.0 (see LICENSE)
"""Airflow pools, variables and connections declared in Ansible variables
(the airflow role's airflow_pools, airflow_variables, airflow_connections).

Pure Python (no Ansible imports), exposed by the filters airflow_objects_errors
and airflow_objects_import (plugins/filter/airflow_objects.py):

- ``objects_errors``: what is wrong with the declarations, one sentence per
  problem, naming the variable and the entry; with the key names of the
  Secrets the cluster holds, also which referenced Secret or key is missing.
  A value that may be secret (an inline password or URI) is never quoted.
- ``import_spec``: what the role's objects Job imports. The non-secret part
  (``spec``) goes into the Job's manifest; each value that comes from a
  Secret is only named there, as the environment variable the Job gets from
  a secretKeyRef (``secrets``).

The names follow what Airflow 3 accepts: `airflow connections import`
refuses connection ids other than letters, digits, '_', '.', '-' (at most
200, no '..'); variable keys are at most 250 characters and pool names at
most 256, and both are kept to the same characters so they fit a REST API
path. A pool has at least 0 slots, or -1 for unlimited.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import re

from .validation import is_dns_subdomain

POOL_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,256}$")
VARIABLE_KEY = re.compile(r"^[A-Za-z0-9_.-]{1,250}$")
CONN_ID = re.compile(r"^[A-Za-z0-9_.-]{1,200}$")
CONN_TYPE = re.compile(r"^[A-Za-z0-9_.-]{1,500}$")
# A Secret's data key (the API server's rule).
SECRET_KEY = re.compile(r"^[-._a-zA-Z0-9]{1,253}$")

POOL_FIELDS = ("name", "slots", "description", "include_deferred")
VARIABLE_FIELDS = ("key", "value", "secret", "description")
# A connection's own fields, given in the declaration (none is secret).
CONNECTION_VALUE_FIELDS = ("conn_type", "host", "port", "schema", "login", "extra")
CONNECTION_FIELDS = ("conn_id", "secret", "description", "password_secret") + CONNECTION_VALUE_FIELDS
# Keys that would put a secret into Ansible's variables: refused, never quoted.
INLINE_SECRETS = {
    "password": "put the password in a Kubernetes Secret and give password_secret: {name, key}, or the whole "
                "connection as a URI or JSON in a Secret with secret: {name, key}",
    "uri": "a connection URI may carry a password: put it in a Kubernetes Secret and give secret: {name, key}",
}

# The environment variable of the n-th Secret value the objects Job reads.
# Not AIRFLOW_CONN_* or AIRFLOW_VAR_*: Airflow would read those as connections and variables.
SECRET_ENV = "OBJECTS_SECRET_%d"

_KINDS = (  # variable, id field, what the id must be, its pattern
    ("airflow_pools", "name", "letters, digits, '_', '.', '-', at most 256", POOL_NAME),
    ("airflow_variables", "key", "letters, digits, '_', '.', '-', at most 250", VARIABLE_KEY),
    ("airflow_connections", "conn_id", "letters, digits, '_', '.', '-', at most 200, no '..'", CONN_ID),
)


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _where(var, index, entry, id_field):
    ident = entry.get(id_field) if isinstance(entry, dict) else None
    if isinstance(ident, str) and ident:
        return "%s[%d] (%s '%s')" % (var, index, id_field, ident)
    return "%s[%d]" % (var, index)


def _secret_ref_errors(where, ref):
    if not isinstance(ref, dict) or set(ref) != {"name", "key"}:
        return ["%s must be {name: <Secret name>, key: <key in it>} (got %s)."
                % (where, "the keys " + ", ".join(sorted(map(str, ref))) if isinstance(ref, dict)
                   else "a " + type(ref).__name__)]
    errors = []
    if not is_dns_subdomain(ref["name"]):
        errors.append("%s.name must name a Secret of the namespace (a DNS-1123 subdomain; got '%s')."
                      % (where, ref["name"]))
    if not (isinstance(ref["key"], str) and SECRET_KEY.match(ref["key"])):
        errors.append("%s.key must be a key of the Secret (letters, digits, '-', '_', '.'; got '%s')."
                      % (where, ref["key"]))
    return errors


def _unknown(where, entry, allowed, refused=()):
    unknown = sorted(str(k) for k in entry if k not in allowed and k not in refused)
    if not unknown:
        return []
    return ["%s has unknown keys %s; allowed: %s." % (where, ", ".join(unknown), ", ".join(allowed))]


def _pool_errors(where, pool):
    errors = _unknown(where, pool, POOL_FIELDS)
    slots = pool.get("slots")
    if not (_is_int(slots) and slots >= -1):
        errors.append("%s.slots must be a whole number of slots from 0, or -1 for unlimited (got %r)."
                      % (where, slots))
    if pool.get("description") is not None and not isinstance(pool["description"], str):
        errors.append("%s.description must be a string." % where)
    if not isinstance(pool.get("include_deferred", False), bool):
        errors.append("%s.include_deferred must be true or false (got %r)." % (where, pool.get("include_deferred")))
    return errors


def _variable_errors(where, variable):
    errors = _unknown(where, variable, VARIABLE_FIELDS)
    if ("value" in variable) == ("secret" in variable):
        errors.append("%s must have either a value or a secret: {name, key} to take the value from, not %s."
                      % (where, "both" if "value" in variable else "neither"))
    elif "secret" in variable:
        errors.extend(_secret_ref_errors(where + ".secret", variable["secret"]))
    elif variable["value"] is None or not isinstance(variable["value"], (str, int, float, bool, list, dict)):
        errors.append("%s.value must be a string (stored as it is) or a number, boolean, list or mapping "
                      "(stored as JSON), not %s." % (where, "null" if variable["value"] is None
                                                     else "a " + type(variable["value"]).__name__))
    if variable.get("description") is not None and not isinstance(variable["description"], str):
        errors.append("%s.description must be a string." % where)
    return errors


def _connection_errors(where, conn):
    errors = _unknown(where, conn, CONNECTION_FIELDS, refused=INLINE_SECRETS)
    for key in sorted(INLINE_SECRETS):
        if key in conn:
            errors.append("%s: an inline '%s' is refused, secrets never go into Ansible variables: %s."
                          % (where, key, INLINE_SECRETS[key]))
    if "secret" in conn:
        errors.extend(_secret_ref_errors(where + ".secret", conn["secret"]))
        given = [k for k in CONNECTION_VALUE_FIELDS + ("password_secret",) if k in conn]
        if given:
            errors.append("%s takes the whole connection from its secret (a URI or JSON), so it must not also "
                          "have %s." % (where, ", ".join(given)))
    elif not INLINE_SECRETS.keys() & set(conn):
        if not (isinstance(conn.get("conn_type"), str) and CONN_TYPE.match(conn["conn_type"])):
            errors.append("%s needs a conn_type (such as postgres, http, aws; letters, digits, '_', '.', '-'), "
                          "or secret: {name, key} holding the connection as a URI or JSON." % where)
        port = conn.get("port")
        if port is not None and not (_is_int(port) and 1 <= port <= 65535):
            errors.append("%s.port must be a port number, 1-65535 (got %r)." % (where, port))
        for key in ("host", "schema", "login"):
            if conn.get(key) is not None and not isinstance(conn[key], str):
                errors.append("%s.%s must be a string." % (where, key))
        if conn.get("extra") is not None and not isinstance(conn["extra"], dict):
            errors.append("%s.extra must be a mapping (Airflow stores it as JSON); a secret one goes into the "
                          "Secret of secret: {name, key} with the whole connection as JSON." % where)
        if "password_secret" in conn:
            errors.extend(_secret_ref_errors(where + ".password_secret", conn["password_secret"]))
    if conn.get("description") is not None and not isinstance(conn["description"], str):
        errors.append("%s.description must be a string." % where)
    return errors


_CHECKS = {"airflow_pools": _pool_errors, "airflow_variables": _variable_errors,
           "airflow_connections": _connection_errors}


def secret_refs(variables, connections):
    """[{var, secret, key}]: each Secret key the declarations take a value from, in order
    (only well-formed references)."""
    refs = []
    entries = [("airflow_variables", "key", i, v, "secret") for i, v in enumerate(variables or [])]
    for i, conn in enumerate(connections or []):
        entries.append(("airflow_connections", "conn_id", i, conn, "secret"))
        entries.append(("airflow_connections", "conn_id", i, conn, "password_secret"))
    for var, id_field, index, entry, field in entries:
        ref = entry.get(field) if isinstance(entry, dict) else None
        if isinstance(ref, dict) and isinstance(ref.get("name"), str) and isinstance(ref.get("key"), str):
            refs.append({"var": "%s.%s" % (_where(var, index, entry, id_field), field),
                         "secret": ref["name"], "key": ref["key"]})
    return refs


def objects_errors(pools, variables, connections, secrets=None, namespace=None):
    """One sentence per problem with the declarations, each naming the variable ([] when none).

    secrets: when given, {Secret name: [its keys]} of the Secrets the cluster holds
    (of those referenced): a reference to a missing Secret or key is a problem too."""
    errors = []
    for (var, id_field, rule, pattern), value in zip(_KINDS, (pools, variables, connections)):
        if not isinstance(value, list):
            errors.append("%s must be a list (got a %s)." % (var, type(value).__name__))
            continue
        seen = set()
        for index, entry in enumerate(value):
            where = _where(var, index, entry, id_field)
            if not isinstance(entry, dict):
                errors.append("%s must be a mapping (got a %s)." % (where, type(entry).__name__))
                continue
            ident = entry.get(id_field)
            if not (isinstance(ident, str) and pattern.match(ident) and ".." not in ident):
                errors.append("%s needs a %s of %s (got %s)."
                              % (where, id_field, rule, "'%s'" % ident if isinstance(ident, str) else repr(ident)))
            elif ident in seen:
                errors.append("%s: %s '%s' is declared twice." % (var, id_field, ident))
            else:
                seen.add(ident)
            errors.extend(_CHECKS[var](where, entry))
    if secrets is not None:
        for ref in secret_refs(variables if isinstance(variables, list) else [],
                               connections if isinstance(connections, list) else []):
            keys = secrets.get(ref["secret"])
            if keys is None:
                errors.append("%s: Secret '%s' does not exist in namespace %s; create it before the run."
                              % (ref["var"], ref["secret"], namespace or "of the cluster"))
            elif ref["key"] not in keys:
                errors.append("%s: Secret '%s' has no key '%s' (it has the keys %s)."
                              % (ref["var"], ref["secret"], ref["key"], ", ".join(sorted(keys)) or "none"))
    return errors


def import_spec(pools, variables, connections):
    """What the objects Job imports: {spec, secrets}, for valid declarations.

    spec: {pools: {name: {slots, description, include_deferred}},
           variables: {key: {value | value_from, description}},
           connections: {conn_id: {fields | from, password_from?, description?}}}
    where value_from, from and password_from name environment variables;
    secrets: [{env, secret, key, var}], each a secretKeyRef the Job gets as env.
    """
    secrets = []

    def from_secret(where, ref):
        env = SECRET_ENV % len(secrets)
        secrets.append({"env": env, "secret": ref["name"], "key": ref["key"], "var": where})
        return env

    spec = {"pools": {}, "variables": {}, "connections": {}}
    for pool in pools:
        spec["pools"][pool["name"]] = {"slots": pool["slots"], "description": pool.get("description") or "",
                                       "include_deferred": bool(pool.get("include_deferred", False))}
    for index, variable in enumerate(variables):
        where = _where("airflow_variables", index, variable, "key")
        item = {"description": variable.get("description")}
        if "secret" in variable:
            item["value_from"] = from_secret(where + ".secret", variable["secret"])
        else:
            item["value"] = variable["value"]
        spec["variables"][variable["key"]] = item
    for index, conn in enumerate(connections):
        where = _where("airflow_connections", index, conn, "conn_id")
        if "secret" in conn:
            item = {"from": from_secret(where + ".secret", conn["secret"])}
        else:
            item = {"fields": {k: conn[k] for k in CONNECTION_VALUE_FIELDS if conn.get(k) is not None}}
            if "password_secret" in conn:
                item["password_from"] = from_secret(where + ".password_secret", conn["password_secret"])
        if conn.get("description") is not None:
            item["description"] = conn["description"]
        spec["connections"][conn["conn_id"]] = item
    return {"spec": spec, "secrets": secrets}
