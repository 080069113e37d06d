"""Names that Prefect accepts, derived from domain names such as ``vision/digits``."""

from __future__ import annotations

import hashlib
import re


def slug(text: str) -> str:
    """Return ``text`` as lowercase letters, digits and dashes, with a short hash of the original.

    Prefect artifact keys and concurrency-limit names reject ``/``. The hash keeps two
    domains apart whose names differ only in such characters (``a/b`` and ``a-b``).
    """
    readable = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "x"
    return f"{readable}-{hashlib.sha1(text.encode()).hexdigest()[:6]}"
