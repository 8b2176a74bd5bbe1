"""matplotlib without a display, and PNG files written atomically: shared by every plot we save."""

from __future__ import annotations

from pathlib import Path

from moe_compile.atomic import atomic_path


def pyplot():
    """matplotlib.pyplot on the Agg backend (imported on first use: it is slow to import)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(figure, path: str | Path) -> None:
    with atomic_path(Path(path)) as tmp:
        figure.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    pyplot().close(figure)
