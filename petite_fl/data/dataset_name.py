"""A data set's name: one plain folder name under the data root.

Generation replaces `<data.root>/<data.name>` whole (an atomic swap), so a name with a separator
or `..`, typed or sent by a coordinator, would replace a folder elsewhere. Kept apart from the
generator so that a site's run-config check (`federation/site/runkeys.py`) stays cheap to import.
"""

from __future__ import annotations

import re

from petite_fl.errors import ConfigError

PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def check_dataset_name(name: object) -> str:
    """The name, or one line that says why it is refused."""
    text = str(name)
    if not PATTERN.fullmatch(text) or ".." in text:
        raise ConfigError(f"data.name {text!r} is not a plain folder name (letters, digits, '.', '_', '-'; no "
                          "separators, no '..'): the data set is written to <data.root>/<data.name>")
    return text
