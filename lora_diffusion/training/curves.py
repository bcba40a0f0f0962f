"""Loss curves (the UI's Train tab and Library, the adapter's metadata): raw losses and a smoothed line.

Smoothing is TensorBoard's: an exponential moving average with its start-up bias removed, so the
first points are not dragged towards zero.
"""

from __future__ import annotations

SMOOTHING = 0.9  # TensorBoard's default: about the last 10 steps
MAX_POINTS = 400  # a curve kept in an adapter's metadata holds at most this many points


def smoothed(values: list[float], weight: float = SMOOTHING) -> list[float]:
    """Debiased exponential moving average of ``values``."""
    out: list[float] = []
    average, norm = 0.0, 0.0
    for value in values:
        average = weight * average + (1 - weight) * value
        norm = weight * norm + (1 - weight)
        out.append(average / norm)
    return out


def thin(points: list[tuple[int, float]], max_points: int = MAX_POINTS) -> list[tuple[int, float]]:
    """At most ``max_points`` of ``points``, evenly spread, first and last kept."""
    if len(points) <= max_points:
        return list(points)
    last = len(points) - 1
    picks = sorted({round(i * last / (max_points - 1)) for i in range(max_points)})
    return [points[i] for i in picks]


def curve_rows(points: list[tuple[int, float]], validation: list[tuple[int, float]] = ()) -> dict[str, list]:
    """Columns for a line plot with the series ``raw`` and ``smoothed`` training losses per step, and the
    held-out images' loss (``validation``) where it was evaluated."""
    steps = [int(s) for s, _ in points]
    losses = [float(v) for _, v in points]
    val_steps = [int(s) for s, _ in validation]
    return {"step": steps + steps + val_steps, "loss": losses + smoothed(losses) + [float(v) for _, v in validation],
            "series": ["raw"] * len(steps) + ["smoothed"] * len(steps) + ["validation"] * len(val_steps)}
