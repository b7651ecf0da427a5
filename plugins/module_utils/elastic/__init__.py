# -*- coding: utf-8 -*-
# Copyright: elastic_airflow developers
# Apache License 2.0 (see LICENSE)
# Pure-Python building blocks of elastic_airflow.cluster (no Ansible imports).
# Used by the collection's modules and by the elastic controller.
