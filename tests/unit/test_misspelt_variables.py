"""The misspelt_variables lookup (plugins/lookup/misspelt_variables.py) on this collection's own roles."""
import pathlib
import sys

import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "plugins" / "lookup"))

import misspelt_variables as mv  # noqa: E402


@pytest.fixture(scope="module")
def known():
    return mv.documented_variables(str(ROOT)), mv.mentioned_variables(str(ROOT))


def test_a_typo_is_reported_with_the_closest_documented_variable(known):
    found = mv.misspelt(["airflow_workr_replicas", "airflow_worker_replicas", "broker_engine"], *known)
    assert found == [{"name": "airflow_workr_replicas", "closest": "airflow_worker_replicas"}]


def test_a_name_the_collection_reads_outside_the_defaults_is_not_a_typo(known):
    # set by playbooks/site.yml and by the layer playbooks, documented nowhere as a default
    assert mv.misspelt(["elastic_airflow_only_layers", "elastic_airflow_skip_layers"], *known) == []


def test_the_strict_switch_is_a_documented_setting_of_the_base_role(known):
    documented, _mentioned = known
    assert "elastic_airflow_strict_variables" in documented
    specs = yaml.safe_load((ROOT / "roles/elastic_airflow/meta/argument_specs.yml").read_text())["argument_specs"]
    assert specs["main"]["options"]["elastic_airflow_strict_variables"]["type"] == "bool"
    defaults = yaml.safe_load((ROOT / "roles/elastic_airflow/defaults/main.yml").read_text())
    assert defaults["elastic_airflow_strict_variables"] is False
    # and a typo of the switch itself is caught like any other
    found = mv.misspelt(["elastic_airflow_strict_variable"], *known)
    assert found == [{"name": "elastic_airflow_strict_variable", "closest": "elastic_airflow_strict_variables"}]


def test_a_typo_shown_in_a_comment_is_still_a_typo(known):
    # site.yml's comment uses airflow_workr_replicas as its example
    assert "airflow_workr_replicas" not in known[1]


@pytest.mark.parametrize("inventory", sorted(p.name for p in (ROOT / "inventories").iterdir() if p.is_dir()))
def test_the_shipped_inventories_and_molecule_vars_have_no_unknown_variable(known, inventory):
    names = set()
    for path in (ROOT / "inventories" / inventory).rglob("*.yml"):
        data = yaml.safe_load(path.read_text()) or {}
        if "group_vars" in path.parts or "host_vars" in path.parts:
            names.update(data)
    for path in (ROOT / "molecule").glob("*/vars.yml"):
        names.update(yaml.safe_load(path.read_text()) or {})
    names = [n for n in names if mv.NAME.fullmatch(n)]
    assert mv.misspelt(names, *known) == []
