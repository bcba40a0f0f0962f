"""Text from files and users made safe to print: control characters escaped, long values cut."""

from __future__ import annotations


def safe_text(value: object, limit: int | None = None) -> str:
    """``value`` as printable text: control characters (ANSI escapes, newlines) escaped, long text cut."""
    text = str(value)
    out = "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)
    if limit is not None and len(out) > limit:
        out = out[:limit] + f"… ({len(out) - limit} more characters)"
    return out
