"""Names shared by the writers and readers of run folders: score-variant entries and saved figures."""

from __future__ import annotations


def variant_method(method: str, variant: str | None) -> str:
    """Leaderboard name of one scoring rule of a method: ``vae[combi]`` (``method`` itself without variants)."""
    return method if variant is None else f"{method}[{variant}]"


def qualitative_name(test_set: str, variant: str | None = None) -> str:
    """File name of a saved test grid: ``qualitative_<test set>.png`` or ``qualitative_<test set>[<variant>].png``."""
    return f"qualitative_{test_set}.png" if variant is None else f"qualitative_{test_set}[{variant}].png"
