"""The one rule for names a stranger can choose: stream ids, app names, node ids, renditions.

1-128 characters from ``A-Z a-z 0-9 _ -``. Every boundary checks it from here: RTMP ``connect``
(app) and ``publish`` (stream), HTTP paths, REST bodies, bus topics and the config. A name that
passes can be used in a URL, a bus topic and a log line as it is.
"""
from __future__ import annotations

import re
from typing import Any

NAME_MAX = 128
NAME_PATTERN = rf"[A-Za-z0-9_-]{{1,{NAME_MAX}}}"  # for embedding in larger patterns
NAME_RULE = f"1-{NAME_MAX} characters from A-Z a-z 0-9 _ -"
_NAME = re.compile(NAME_PATTERN)


def is_name(value: Any) -> bool:
    """True for a string that follows the rule (whole string: no trailing newline slips by)."""
    return isinstance(value, str) and _NAME.fullmatch(value) is not None
