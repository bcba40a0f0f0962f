"""What an adapter file holds, as plain facts (for `inspect`, the UI library and reports)."""

from __future__ import annotations

from pathlib import Path

from .apply import rank_summary
from .file import META_PREFIX, AdapterFile
from .naming import component_of


def describe(adapter: AdapterFile, path: Path) -> dict:
    """The facts `inspect` reports, as a JSON-ready dict."""
    per_component: dict[str, int] = {}
    for name in adapter.modules:
        role = component_of(name) or "?"
        per_component[role] = per_component.get(role, 0) + 1
    writer = adapter.metadata.get(META_PREFIX + "version")
    alpha = adapter.alpha
    return {
        "file": str(path),
        "format": adapter.layout,
        "network": "+".join(adapter.networks) or "lora",
        "dora": adapter.dora,
        "writer": f"lora-diffusion {writer}" if writer else "unknown",
        "rank": adapter.rank,
        "ranks": {str(k): v for k, v in sorted(rank_summary(adapter).items())},
        "alpha": alpha if alpha is None or not float(alpha).is_integer() else int(alpha),
        "modules": len(adapter.modules),
        "components": per_component,
        "base": adapter.architecture(),
        "size_bytes": path.stat().st_size,
        "metadata": dict(sorted(adapter.metadata.items())),
    }
