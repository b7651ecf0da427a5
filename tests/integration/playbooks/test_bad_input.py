"""Bad input fails before anything in the cluster changes, with an error that
names the variable. The cases live in tests/integration/bad_input/*.yml, one
file per layer: `- name: ..., vars: {...}, expect: "<text of the error>"`."""

from __future__ import annotations

import pathlib

import pytest
import yaml

from conftest import cluster_snapshot, run_playbook

CASES_DIR = pathlib.Path(__file__).resolve().parents[1] / "bad_input"


def _cases():
    for path in sorted(CASES_DIR.glob("*.yml")):
        for case in yaml.safe_load(path.read_text()):
            yield pytest.param(case, id=f"{path.stem}:{case['name']}")


CASES = list(_cases())


def test_there_are_enough_cases():
    assert len(CASES) >= 20


@pytest.mark.parametrize("case", CASES)
def test_bad_input_fails_before_any_change(converged, case):
    before = cluster_snapshot()
    run = run_playbook("site.yml", extra_vars=case["vars"])
    assert run.rc != 0, f"accepted bad input {case['vars']}"
    assert case["expect"] in run.output, run.output[-3000:]
    assert "changed=0" in run.output or "PLAY RECAP" not in run.output, run.output[-3000:]
    after = cluster_snapshot()
    assert after == before, {k for k in set(before) | set(after) if before.get(k) != after.get(k)}
