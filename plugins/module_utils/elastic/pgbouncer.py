# -*- coding: utf-8 -*-
# Copyright: elastic_airflow developers
# Apache License 2.0 (see LICENSE)
"""What PgBouncer needs to know of an external PostgreSQL database, read from
the user's SQLAlchemy URL (the `url` key of database_external_secret), and
whether the Celery result backend URL (`result-backend-url`) is the same
database, so that it may go through PgBouncer too.

Pure Python (no Ansible imports), exposed by the filter pgbouncer_upstream
(plugins/filter/pgbouncer.py). The URLs hold a password: no message of this
module ever repeats a URL, its user information or any query value.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import re
from urllib.parse import parse_qsl, unquote, urlsplit

# postgresql, postgres, postgresql+psycopg2, postgresql+psycopg, ...
_SCHEME = re.compile(r"^postgres(ql)?(\+[a-z0-9_]+)?$")
_RESULT_BACKEND_SCHEME = re.compile(r"^db\+postgres(ql)?(\+[a-z0-9_]+)?$")
# What pgbouncer.ini's [databases] line takes unquoted (host names, addresses,
# database and user names of letters, digits and . _ -).
_SAFE = re.compile(r"^[A-Za-z0-9._:\[\]-]+$")
# PgBouncer's server_tls_sslmode values that need no CA file of ours.
SSLMODES = ("disable", "allow", "prefer", "require")


def _split(url):
    """urlsplit, or None when the text is no URL with a host."""
    try:
        parts = urlsplit(url)
        _port = parts.port  # raises ValueError on a bad port
    except (ValueError, TypeError, AttributeError):
        return None
    return parts


def pgbouncer_upstream(url, result_backend_url=""):
    """{error, host, port, dbname, user, password, sslmode, scheme, result_backend} of `url`.

    `error` is '' when PgBouncer can serve the database, else one sentence saying what is missing
    or unsupported (never a value of the URL but its scheme). `result_backend` is 'pgbouncer' when
    `result_backend_url` is a Celery database backend on the same host, port, database and user
    (it then goes through PgBouncer as well), else 'as-is' (Airflow keeps using it directly)."""
    out = {"error": "", "host": "", "port": 5432, "dbname": "", "user": "", "password": "", "sslmode": "prefer",
           "scheme": "", "result_backend": "as-is"}
    parts = _split(url) if isinstance(url, str) else None
    if parts is None or not parts.scheme:
        out["error"] = "its url is not a URL (scheme://user:password@host:port/database)."
        return out
    scheme = parts.scheme.lower()
    if not _SCHEME.match(scheme):
        out["error"] = ("PgBouncer serves PostgreSQL only, and its url is a '%s' URL (expected postgresql or "
                        "postgresql+<driver>)." % scheme[:40])
        return out
    out["scheme"] = scheme
    host = parts.hostname or ""
    dbname = unquote(parts.path.lstrip("/"))
    user = unquote(parts.username or "")
    missing = [what for what, value in (("a host", host), ("a user", user),
                                        ("a password", parts.password), ("a database name", dbname)) if not value]
    if missing:
        out["error"] = "its url has no %s, which PgBouncer needs." % " and no ".join(missing)
        return out
    unsafe = [what for what, value in (("host", host), ("user", user), ("database name", dbname))
              if not _SAFE.match(value)]
    if unsafe:
        out["error"] = ("the %s of its url may hold only letters, digits and . _ - (PgBouncer's configuration "
                        "takes them unquoted)." % " and ".join(unsafe))
        return out
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    sslmode = query.get("sslmode", "prefer")
    if sslmode not in SSLMODES:
        out["error"] = ("its url's sslmode must be one of %s with PgBouncer, which has no CA file to verify the "
                        "server with (verify-ca and verify-full are not supported)." % ", ".join(SSLMODES))
        return out
    out.update(host=host, port=parts.port or 5432, dbname=dbname, user=user, password=unquote(parts.password),
               sslmode=sslmode)
    backend = _split(result_backend_url) if isinstance(result_backend_url, str) else None
    if (backend is not None and _RESULT_BACKEND_SCHEME.match((backend.scheme or "").lower())
            and (backend.hostname or "").lower() == host.lower() and (backend.port or 5432) == out["port"]
            and unquote(backend.path.lstrip("/")) == dbname and unquote(backend.username or "") == user):
        out["result_backend"] = "pgbouncer"
    return out
