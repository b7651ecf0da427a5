# -*- coding: utf-8 -*-
# Copyright: elastic_airflow developers
# Apache License 2.0 (see LICENSE)
"""lookup elastic_airflow.cluster.fernet_key: 32 bytes from os.urandom, url-safe
base64 (issue 14, item 9), not base64 of 32 printable characters."""
import base64
import os
import subprocess
import sys

import pytest

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(_ROOT, "plugins", "lookup"))

import fernet_key as F  # noqa: E402


def test_a_key_is_32_random_bytes_in_urlsafe_base64():
    keys = [F.fernet_key() for _i in range(64)]
    assert len(set(keys)) == len(keys)
    raw = [base64.urlsafe_b64decode(k) for k in keys]
    assert all(len(k) == 44 and len(r) == 32 for k, r in zip(keys, raw, strict=True))
    # base64 of printable characters never has a byte >= 0x80; 64 keys of
    # random bytes all without one: probability 2**-2048.
    assert any(b >= 0x80 for r in raw for b in r)


def test_cryptography_accepts_it():
    fernet = pytest.importorskip("cryptography.fernet")
    f = fernet.Fernet(F.fernet_key())
    assert f.decrypt(f.encrypt(b"x")) == b"x"


def test_the_bytes_come_from_os_urandom(monkeypatch):
    monkeypatch.setattr(F.os, "urandom", lambda n: bytes(range(n)))
    assert base64.urlsafe_b64decode(F.fernet_key()) == bytes(range(32))


def test_the_lookup_takes_no_terms():
    lookup = F.LookupModule()
    assert len(lookup.run([])) == 1
    with pytest.raises(Exception, match="takes no terms"):
        lookup.run(["x"])


def test_it_is_documented():
    out = subprocess.run(["ansible-doc", "-t", "lookup", "elastic_airflow.cluster.fernet_key"],
                         capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert "os.urandom" in out.stdout
