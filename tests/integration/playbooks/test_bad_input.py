"""Bad input fails before anything in the cluster changes, with an error that
names the variable. The cases live in tests/integration/bad_input/*.yml, one
file per layer: `- name: ..., vars: {...}, expect: "<text of the error>"`,
and optionally `secret: "<text>"`: the case then runs with -vvv, and that text
(a credential inside the bad value) must appear nowhere in the output.

The first case of each file runs through site.yml (so a bad late layer stops
the run before the first layer is applied); the others run through the
layer's own playbook, which validates the same way and is faster."""

from __future__ import annotations

import pathlib

import pytest
import yaml

from conftest import REPO, cluster_snapshot, run_playbook

CASES_DIR = pathlib.Path(__file__).resolve().parents[1] / "bad_input"


def _cases():
    for path in sorted(CASES_DIR.glob("*.yml")):
        layer_playbook = f"{path.stem}.yml" if (REPO / "playbooks" / f"{path.stem}.yml").exists() else "site.yml"
        for index, case in enumerate(yaml.safe_load(path.read_text())):
            playbook = "site.yml" if index == 0 else layer_playbook
            yield pytest.param(playbook, case, id=f"{path.stem}:{case['name']}")


CASES = list(_cases())


def test_there_are_enough_cases():
    assert len(CASES) >= 20


@pytest.fixture(scope="module")
def snapshots(converged):
    """The last snapshot taken: each case's 'after' is the next case's 'before'."""
    return [cluster_snapshot()]


@pytest.mark.parametrize(("playbook", "case"), CASES)
def test_bad_input_fails_before_any_change(snapshots, playbook, case):
    before = snapshots[-1]
    run = run_playbook(playbook, *(["-vvv"] if "secret" in case else []), extra_vars=case["vars"])
    after = cluster_snapshot()
    snapshots.append(after)
    assert run.rc != 0, f"accepted bad input {case['vars']}"
    assert case["expect"] in run.output, run.output[-3000:]
    if "secret" in case:
        assert case["secret"] not in run.output, "a credential was printed"
    assert run.changed == 0, run.changed_tasks
    assert after == before, {k for k in set(before) | set(after) if before.get(k) != after.get(k)}
