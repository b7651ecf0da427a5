# -*- coding: utf-8 -*-
# Copyright: elastic_airflow developers
# Apache License 2.0 (see LICENSE)
"""Stand-in for the get-pip.py that ansible-test downloads.

ansible-test creates each sanity test's virtualenv without pip and bootstraps
pip with a get-pip.py it fetches from ci-files.testing.ansible.com, which this
machine cannot reach. It uses a cached copy instead when one exists
(~/.ansible/test/cache/get_pip_<version>.py); `make sanity` puts this file
there. It does what get-pip.py does with ansible-test's arguments: pip from
the standard library's ensurepip (offline), then the pinned pip that
ansible-test asks for, from PyPI, with its other options.
"""
import subprocess
import sys


def main(argv):
    # get-pip.py's own flags; every other argument is pip's.
    own = {"--no-setuptools", "--no-wheel"}
    args = [a for a in argv if a not in own]
    subprocess.run([sys.executable, "-m", "ensurepip", "--default-pip"], check=True, stdout=subprocess.DEVNULL)
    subprocess.run([sys.executable, "-m", "pip", "install", "--upgrade", "--force-reinstall", *args], check=True)
    # ensurepip of Python < 3.12 also installs setuptools; get-pip.py would not.
    if "--no-setuptools" in argv:
        subprocess.run([sys.executable, "-m", "pip", "uninstall", "--yes", "--quiet", "setuptools"], check=True)


if __name__ == "__main__":
    main(sys.argv[1:])
