"""Hierarchical semantic tags such as ``vision/digits/uci``."""

from __future__ import annotations

import re
from urllib.parse import quote

from mycelium.errors import RoutingError

_TAG_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_.-]*(/[a-z0-9][a-z0-9_.-]*)*$")


def normalize_tag(tag: str) -> str:
    """Return ``tag`` lower-cased without surrounding slashes, or raise RoutingError."""
    cleaned = tag.strip().strip("/").lower()
    if not _TAG_PATTERN.match(cleaned):
        raise RoutingError(
            f"Invalid tag {tag!r}: use lower-case path segments of letters, digits, '_', '.' "
            "or '-' separated by '/', for example 'vision/digits/uci'."
        )
    return cleaned


def tag_ancestors(tag: str) -> list[str]:
    """Return ``tag`` and its parents, most specific first: a/b/c, a/b, a."""
    parts = normalize_tag(tag).split("/")
    return ["/".join(parts[:end]) for end in range(len(parts), 0, -1)]


def safe_name(tag: str) -> str:
    """Return a folder name for ``tag`` (``vision/digits`` -> ``vision%2Fdigits``).

    Percent-encoding is one-to-one, so two tags never share a folder.
    """
    return quote(normalize_tag(tag), safe="")
