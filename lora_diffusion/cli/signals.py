"""SIGTERM — what schedulers, ``timeout``, ``docker stop`` and systemd send — handled as Ctrl-C: the trainer keeps the
steps it finished (a checkpoint and a partial LoRA) and says where, and the process exits 143 as a terminated one
should. A second SIGTERM while that is being written is ignored, so the files are not cut short."""

from __future__ import annotations

import signal

_received: list[int] = []


def _on_terminate(signum: int, frame) -> None:
    _received.append(signum)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt


def handle_termination() -> None:
    """Turn SIGTERM into the KeyboardInterrupt every command already handles (call from the main thread)."""
    signal.signal(signal.SIGTERM, _on_terminate)


def interrupted_exit_code() -> int:
    """128 + the signal number: 143 after SIGTERM, 130 after Ctrl-C."""
    return 128 + (_received[0] if _received else signal.SIGINT)
