# -*- coding: utf-8 -*-
# Copyright: elastic_airflow developers
# Apache License 2.0 (see LICENSE)
"""Action behind elastic_airflow.cluster.apply_manifests (documented in plugins/modules/).

Runs on the controller, in the process Ansible forks for the task: render the
templates, server-side apply every object, delete what is switched off, wait
for all objects at once, prune what an earlier run left behind.

Why an action and not a module: a module call starts a Python interpreter and
imports the kubernetes client (about 0.8 s) for every task. This file imports
kubernetes.core's client at load time; Ansible loads action classes in its
main process (the linear strategy looks them up), so every later fork starts
with the client already imported.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import datetime
import os

from ansible.errors import AnsibleError
from ansible.module_utils.common.text.converters import to_native
from ansible.plugins.action import ActionBase

from ansible_collections.elastic_airflow.cluster.plugins.module_utils.elastic.manifests import (
    ManifestError,
    ManifestRun,
    api_error,
    join_label_selectors,
)

try:
    import yaml
except ImportError:  # pragma: no cover - ansible-core requires PyYAML
    yaml = None

# libyaml's parser when PyYAML has it: parsing a layer's rendered manifests
# with the pure-Python one costs a noticeable part of a no-op run.
YAML_LOADER = getattr(yaml, "CSafeLoader", None) or getattr(yaml, "SafeLoader", None)

try:
    from ansible.template import trust_as_template
except ImportError:  # ansible-core < 2.19 templates every string
    def trust_as_template(value):
        return value

try:
    from ansible_collections.kubernetes.core.plugins.module_utils.args_common import AUTH_ARG_SPEC
    from ansible_collections.kubernetes.core.plugins.module_utils.k8s.client import get_api_client
    from ansible_collections.kubernetes.core.plugins.module_utils.k8s.exceptions import CoreException
    from kubernetes.client import VersionApi
    from kubernetes.dynamic.exceptions import NotFoundError, ResourceNotFoundError
    K8S_IMPORT_ERROR = None
except ImportError as exc:  # reported when the task runs
    K8S_IMPORT_ERROR = exc
    AUTH_ARG_SPEC = {}

ARGUMENT_SPEC = dict(
    templates=dict(type="list", elements="str", default=[]),
    definitions=dict(type="list", elements="dict", default=[]),
    namespace=dict(type="str"),
    absent=dict(type="list", elements="dict", default=[]),
    prune=dict(type="list", elements="dict", default=[]),
    wait=dict(type="bool", default=True),
    wait_for=dict(type="list", elements="dict", default=[]),
    wait_timeout=dict(type="int"),
    wait_sleep=dict(type="float", default=0.5),
    field_manager=dict(type="str"),
    force_conflicts=dict(type="bool", default=True),
    render_dir=dict(type="path"),
)

# Options left out take the collection's shared settings when the play
# defines them (the roles' defaults do), else these values.
SHARED_SETTINGS = dict(
    namespace=("elastic_airflow_namespace", None),
    wait_timeout=("elastic_airflow_wait_timeout", 600),
    field_manager=("elastic_airflow_field_manager", "elastic-airflow"),
    kubeconfig=("elastic_airflow_kubeconfig", None),
    context=("elastic_airflow_context", None),
    render_dir=("elastic_airflow_render_dir", None),
)


class ActionModule(ActionBase):

    TRANSFERS_FILES = False
    _requires_connection = False

    def run(self, tmp=None, task_vars=None):
        result = super(ActionModule, self).run(tmp, task_vars)
        del tmp
        if K8S_IMPORT_ERROR is not None:
            return dict(result, failed=True, msg="apply_manifests needs the kubernetes.core collection and the "
                        "kubernetes Python package on the controller: %s" % to_native(K8S_IMPORT_ERROR))
        spec = dict(ARGUMENT_SPEC, **dict((k, v) for k, v in AUTH_ARG_SPEC.items() if k not in ARGUMENT_SPEC))
        _validation, args = self.validate_argument_spec(argument_spec=spec)
        for option, (variable, fallback) in SHARED_SETTINGS.items():
            if args.get(option) is None:
                args[option] = self._shared_setting(variable, task_vars) or fallback
        for key in ("absent", "prune", "wait_for"):
            for ref in args[key]:
                needed = ["api_version", "kind", "name" if key == "absent" else "label_selectors"]
                if key == "wait_for" and ref.get("name"):
                    needed[2] = "name"
                missing = [field for field in needed if not ref.get(field)]
                if missing:
                    return dict(result, failed=True, msg="%s: every item needs %s; %s lacks %s" % (
                        key, ", ".join(needed), ref, ", ".join(missing)))
                if key != "absent" and ref.get("label_selectors"):
                    try:  # before anything is applied
                        join_label_selectors(ref["label_selectors"])
                    except ManifestError as exc:
                        return dict(result, failed=True, msg="%s: %s" % (key, to_native(exc)))

        try:
            definitions = self._render(args["templates"], task_vars) + [d for d in args["definitions"] if d]
        except AnsibleError as exc:
            return dict(result, failed=True, msg="rendering the manifests failed: %s" % to_native(exc))
        if args["render_dir"]:
            self._save(args["render_dir"])

        auth = dict((key, args[key]) for key in AUTH_ARG_SPEC if args.get(key) is not None)
        try:
            client = get_api_client(**auth).client
        except CoreException as exc:
            return dict(result, failed=True, msg=to_native(exc))
        if not (definitions or args["absent"] or args["prune"] or args["wait_for"]):
            return self._server_version(result, client)
        try:
            args["wait_timeout"] = int(args["wait_timeout"])
        except (TypeError, ValueError):
            return dict(result, failed=True, msg="wait_timeout (elastic_airflow_wait_timeout) must be a whole number "
                        "of seconds, got %r" % (args["wait_timeout"],))
        run = ManifestRun(client, NotFoundError, ResourceNotFoundError, args["field_manager"],
                          force_conflicts=args["force_conflicts"], check_mode=self._play_context.check_mode)
        try:
            run.apply(definitions, args["namespace"])
            run.delete(args["absent"], args["namespace"])
            run.watch(args["wait_for"], args["namespace"])
            if args["wait"] or args["wait_for"]:
                run.wait(args["wait_timeout"], args["wait_sleep"], applied=args["wait"])
            run.prune(args["prune"], args["namespace"])
        except ManifestError as exc:
            result.update(failed=True, msg=to_native(exc))
        except Exception as exc:  # an API error on a read: the client raises one type per HTTP status
            result.update(failed=True, msg="Kubernetes API error: %s" % api_error(exc))
        result.update(changed=run.changed, objects=run.objects())
        if self._play_context.diff and run.changed:
            result["diff"] = run.diffs()
        return result

    @staticmethod
    def _server_version(result, client):
        """Nothing to do but check that the API server answers."""
        try:
            version = VersionApi(client.client).get_code()  # a request, not the discovery cache
        except Exception as exc:  # connection refused, TLS or credentials: the client raises many types
            return dict(result, failed=True, msg="The Kubernetes API server does not answer: %s" % api_error(exc))
        return dict(result, changed=False, objects=[], server_version=version.git_version)

    def _shared_setting(self, variable, task_vars):
        if variable not in task_vars:
            return None
        return self._templar.template(trust_as_template("{{ %s }}" % variable))

    def _render(self, templates, task_vars):
        """Render each template like the template module does: found in the calling role's
        templates/ first, with the task's variables, `{% import %}` relative to its directory.

        No copy of the variables per template (the template lookup deep-copies them for each
        one; a layer's dozen templates would pay that each time), and one Jinja environment per
        template directory: its cache compiles a shared `{% import %}` such as _macros.j2 once
        per task instead of once per template.
        """
        if not templates:
            return []
        paths = [self._find_needle("templates", name) for name in templates]
        searchpath = []
        for path in task_vars.get("ansible_search_path", []):
            searchpath.extend([os.path.join(path, "templates"), path])
        self._rendered = []
        docs = []
        templars = {}
        for path in paths:
            directory = os.path.dirname(path)
            if directory not in templars:
                templars[directory] = self._templar.copy_with_new_env(searchpath=[directory] + searchpath)
            templar = templars[directory]
            source = trust_as_template(self._loader.get_text_file_contents(path))
            # A plain str: libyaml refuses str subclasses such as Ansible's tagged strings.
            # A template that renders nothing (a layer without NetworkPolicies) is None under Ansible 2.19.
            rendered = templar.template(source, escape_backslashes=False)
            text = "" if rendered is None else str.__str__(rendered)
            self._rendered.append((path, text))
            try:
                docs.extend(doc for doc in yaml.load_all(text, Loader=YAML_LOADER) if doc)
            except yaml.YAMLError as exc:
                raise AnsibleError("%s does not render to valid YAML: %s" % (path, exc)) from exc
        return docs

    def _save(self, render_dir):
        """Keep a copy of what is applied, one file per template, in apply order (secrets included: mode 0600)."""
        os.makedirs(render_dir, exist_ok=True)
        stamp = datetime.datetime.now().strftime("%H%M%S%f")
        for index, (name, text) in enumerate(getattr(self, "_rendered", [])):
            # .../roles/<role>/templates/<name>.j2 -> <stamp>-<index>-<role>-<name>
            role = os.path.basename(os.path.dirname(os.path.dirname(os.path.abspath(name))))
            base = os.path.basename(name).replace(".j2", "")
            path = os.path.join(render_dir, "%s-%02d-%s-%s" % (stamp, index, role, base))
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(text)
