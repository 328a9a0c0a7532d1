"""A hostile coordinator for the deployment tests: its installation is changed so that the hello
carries what `$PETITE_TEST_HOSTILE_HELLO` (a JSON file of section → {key: value}) says, whatever the
run's own configuration holds — what an operator who edits their own petite-fl can send. Started
on the coordinator's PYTHONPATH only; does nothing while the file is absent."""

import os

_FILE = os.environ.get("PETITE_TEST_HOSTILE_HELLO")
if _FILE:
    import json

    import petite_fl.runconfig as _runconfig

    _honest = _runconfig.site_sections

    def _hostile(cfg):
        sections = _honest(cfg)
        if os.path.isfile(_FILE):
            with open(_FILE) as fh:
                for section, values in json.load(fh).items():
                    sections[section].update(values)
        return sections

    _runconfig.site_sections = _hostile
