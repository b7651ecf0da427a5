# -*- coding: utf-8 -*-
# Copyright: elastic_airflow developers
# Apache License 2.0 (see LICENSE)
"""The collection is Apache-2.0 (galaxy.yml): LICENSE holds that text, and
every Python file it ships carries the same header (issue 14, item 10)."""
import pathlib
import subprocess

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
HEADER = ["# -*- coding: utf-8 -*-", "# Copyright: elastic_airflow developers", "# Apache License 2.0 (see LICENSE)"]


def test_license_file_matches_galaxy_yml():
    galaxy = yaml.safe_load((ROOT / "galaxy.yml").read_text())
    assert galaxy["license"] == ["Apache-2.0"]
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text


def test_every_plugin_file_has_the_one_header():
    files = subprocess.run(["git", "ls-files", "plugins/*.py"], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.split()
    assert files
    for name in files:
        lines = (ROOT / name).read_text().splitlines()
        if lines and lines[0].startswith("#!"):
            lines = lines[1:]
        assert lines[:3] == HEADER, name
        assert "General Public License" not in "\n".join(lines), name
