# -*- coding: utf-8 -*-
# Copyright: elastic_airflow developers
# Apache License 2.0 (see LICENSE)
"""Extra Celery worker pools (the airflow role's airflow_worker_pools): what is wrong with them.

Pure Python (no Ansible imports), exposed by the filter worker_pool_errors
(plugins/filter/validation.py) to the airflow role's tasks/validate.yml.

A pool is a set of Celery workers of its own: a StatefulSet (modes `none`,
`hpa`) or an ElasticWorker (mode `elastic`) named <cluster>-worker-<name>,
whose workers consume only the pool's queues. Each setting a pool leaves out
is the main workers' (the role gives those as `defaults`); the checks run on
the values in effect, so an inherited value that does not fit is named too.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import re

from .pod_settings import _scheduling_errors
from .validation import resource_errors

POOL_KEYS = ("name", "queues", "concurrency", "resources", "replicas", "min_replicas", "max_replicas", "target",
             "termination_grace_period_seconds", "scheduling")
MODES = ("elastic", "hpa", "none")
# A DNS-1123 label that starts with a letter: the pool's objects are <cluster>-worker-<name>.
_POOL_NAME = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
# The workers get them as `--queues q1,q2` (and Airflow stores a task's queue in 256
# characters): no comma, no space, nothing a shell would read.
_QUEUE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,199}$")
# A StatefulSet's pods carry the label controller-revision-hash=<name>-<10 characters>,
# at most 63: so a StatefulSet name of at most 52 (pod names, <name>-<ordinal>, fit too).
MAX_WORKLOAD_NAME = 52


def _int(value):
    """An integer setting (an int, or a string of digits as `-e key=value` gives), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.match(r"^-?[0-9]+$", value.strip()):
        return int(value)
    return None


def _number(value):
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return float(value) if isinstance(value, str) else None
    except ValueError:
        return None


def _pool_errors(where, pool, mode):
    """The checks of one pool's settings in effect (the pool's own over the defaults)."""
    errors = []
    concurrency = _int(pool["concurrency"])
    if concurrency is None or concurrency < 1:
        errors.append("%s: concurrency must be a whole number of task slots, at least 1 (got %r)."
                      % (where, pool["concurrency"]))
    errors.extend(resource_errors({where + ": resources": pool["resources"]}))
    grace = _int(pool["termination_grace_period_seconds"])
    if grace is None or grace < 0:
        errors.append("%s: termination_grace_period_seconds must be a whole number of seconds, 0 or more (got %r)."
                      % (where, pool["termination_grace_period_seconds"]))
    errors.extend(_scheduling_errors(where + ": scheduling", pool["scheduling"]))
    if mode == "none":
        replicas = _int(pool["replicas"])
        if replicas is None or replicas < 0:
            errors.append("%s: replicas must be a whole number, 0 or more (got %r)." % (where, pool["replicas"]))
        return errors
    low, high = _int(pool["min_replicas"]), _int(pool["max_replicas"])
    floor = 1 if mode == "hpa" else 0
    if low is None or high is None or low < floor or high < 1 or low > high:
        why = " (an HPA cannot scale to 0)" if mode == "hpa" else ""
        errors.append("%s: min_replicas must be at least %d%s and at most max_replicas, which must be at least 1 "
                      "(got %r and %r)." % (where, floor, why, pool["min_replicas"], pool["max_replicas"]))
    target = _number(pool["target"])
    if mode == "elastic" and (target is None or not 0 < target <= 1000):
        errors.append("%s: target must be the wanted load in percent of the pool's task slots, more than 0 and at "
                      "most 1000 (got %r)." % (where, pool["target"]))
    if mode == "hpa":
        if target is None or target < 1 or target != int(target):
            errors.append("%s: target must be the HPA's average CPU utilization in percent of the CPU requests, a "
                          "whole number from 1 (got %r)." % (where, pool["target"]))
        requests = pool["resources"].get("requests") if isinstance(pool["resources"], dict) else None
        if not isinstance(requests, dict) or requests.get("cpu") in (None, "", 0, "0"):
            errors.append("%s: resources.requests.cpu must be set in mode hpa: the pool's HPA scales on CPU "
                          "utilization, a share of that request." % where)
    return errors


def worker_pool_errors(pools, defaults, cluster_name, mode, main_queue="default", variable="airflow_worker_pools"):
    """What is wrong with the worker pools, one sentence per problem naming the pool ([] when nothing).

    `defaults` are the main workers' settings in effect for this autoscaling `mode` (`elastic`, `hpa`
    or `none`), keyed as a pool's; `main_queue` is the queue the main workers consume ([operators]
    default_queue), which no pool may take."""
    if not isinstance(pools, list) or not all(isinstance(pool, dict) for pool in pools):
        return ["%s must be a list of pools, each a mapping with at least name and queues (got %r)."
                % (variable, pools)]
    if mode not in MODES:
        return ["%s needs elastic_airflow_worker_autoscaling to be one of %s (got %r)."
                % (variable, ", ".join(MODES), mode)]
    errors = []
    names, owners = [], {}
    for index, given in enumerate(pools):
        name = given.get("name")
        where = "%s[%d]%s" % (variable, index, " (%s)" % name if isinstance(name, str) and name else "")
        unknown = sorted(str(key) for key in given if key not in POOL_KEYS)
        if unknown:
            errors.append("%s: unknown keys %s; a pool takes only %s."
                          % (where, ", ".join(unknown), ", ".join(POOL_KEYS)))
        if not isinstance(name, str) or not _POOL_NAME.match(name):
            errors.append("%s: name must be lower-case letters, digits and '-', starting with a letter and not "
                          "ending with '-' (got %r)." % (where, name))
        elif len("%s-worker-%s" % (cluster_name, name)) > MAX_WORKLOAD_NAME:
            errors.append("%s: name is too long: the pool's StatefulSet or ElasticWorker %s-worker-%s must have at "
                          "most %d characters." % (where, cluster_name, name, MAX_WORKLOAD_NAME))
        elif name in names:
            errors.append("%s: name %r is used by another pool; names must be unique." % (where, name))
        names.append(name)
        queues = given.get("queues")
        if not isinstance(queues, list) or not queues:
            errors.append("%s: queues must be a non-empty list of Celery queue names (got %r)." % (where, queues))
            queues = []
        for queue in queues:
            if not isinstance(queue, str) or not _QUEUE.match(queue):
                errors.append("%s: queue %r must be letters, digits, '_', '.' and '-' (no comma or space), not "
                              "starting with '.' or '-', at most 200 characters." % (where, queue))
            elif queue == main_queue:
                errors.append("%s: queue %r is the main workers' queue ([operators] default_queue): a task without "
                              "queue= runs there; give the pool queues of its own." % (where, queue))
            elif queue in owners:
                errors.append("%s: queue %r is listed twice." % (where, queue) if owners[queue] == where else
                              "%s: queue %r is also a queue of %s; each queue belongs to one pool."
                              % (where, queue, owners[queue]))
            else:
                owners[queue] = where
        pool = dict(defaults)
        pool.update((key, value) for key, value in given.items() if key in POOL_KEYS)
        errors.extend(_pool_errors(where, pool, mode))
    return errors
