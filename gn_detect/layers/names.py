"""canonical_name: the one spelling rule for norm and activation names (case, '-' and ' ')."""
from __future__ import annotations


def canonical_name(name: str | None) -> str:
    """``"GN-WS" -> "gn_ws"``; None and "" -> "none"."""
    if name is None:
        return "none"
    return str(name).strip().lower().replace("-", "_").replace(" ", "_") or "none"
