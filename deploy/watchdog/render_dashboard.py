"""Draws the Watchdog dashboard's layout to a PNG without Grafana: each panel at its gridPos, with
its title and made-up sample series named as its legends would name them (the values are not
real; the layout, titles, legends and stat panels are the JSON's).

    pip install matplotlib   # not a dependency of the worker (it brings Pillow)
    python deploy/watchdog/render_dashboard.py [OUT.png]
"""

from __future__ import annotations

import io
import json
import math
import random
import re
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from PIL import Image  # matplotlib depends on Pillow

HERE = Path(__file__).resolve().parent
DASHBOARD = HERE / "grafana" / "provisioning" / "dashboards" / "CHT" / "cht_rapidpro_worker.json"
OUT = HERE / "dashboard.png"
BACKGROUND, PANEL, TEXT, GRID = "#111217", "#181b1f", "#ccccdc", "#2c3235"
COLORS = ["#73bf69", "#f2cc0c", "#8ab8ff", "#ff780a", "#f2495c", "#5794f2", "#b877d9"]
STAT_SAMPLES = {"Workers answering": 2, "Active workers": 1, "In doubt, for an operator": 1,
                "Parked changes": 0, "Sending off": 0, "CHT's sender on": 0, "Channels active": 2,
                "Feed backlog": 3}
SAMPLE_LABELS = {"outcome": ["sent", "rejected", "in_doubt"], "reason": ["rapidpro_unreachable"],
                 "status": ["200", "201", "429"], "channel_name": ["Phone A", "Phone B"],
                 "part": ["status_tracking", "in_doubt"], "instance": ["worker-a:5989", "worker-b:5989"],
                 "scope": [""]}
UNIT_W, UNIT_H = 0.62, 0.32  # inches per grid column / row


def legends(target: dict[str, Any]) -> list[str]:
    """The legend names a target would show: one per sample value of each {{label}} it uses."""
    legend = target.get("legendFormat") or ""
    labels = re.findall(r"\{\{\s*(\w+)\s*\}\}", legend)
    names = [legend]
    for label in labels:
        names = [n.replace("{{" + label + "}}", v) for n in names for v in SAMPLE_LABELS.get(label, [label])]
    return [" ".join(n.split()) for n in names]


def series(rng: random.Random, index: int, expr: str, points: int = 96) -> list[float]:
    """Smooth made-up values; 0/1 gauges (the lease, a pause) as steps."""
    if "lease_active" in expr or "sending_paused" in expr:
        start, length = rng.randrange(10, 60), rng.randrange(4, 20)
        on = index == 0 and "lease_active" in expr
        return [float(on != (start <= i < start + length)) for i in range(points)]
    base = rng.uniform(4, 20) / (index + 1)
    period, phase = rng.uniform(10, 30), rng.uniform(0, 6)
    return [max(0.0, base * (1 + 0.35 * math.sin(i / period + phase)) + rng.gauss(0, base * 0.04))
            for i in range(points)]


def render(dashboard: dict[str, Any], out: Path) -> None:
    height = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in dashboard["panels"])
    fig = plt.figure(figsize=(24 * UNIT_W, height * UNIT_H + 0.6), facecolor=BACKGROUND)
    total_h = height + 0.6 / UNIT_H
    fig.text(0.01, 1 - 0.3 / (total_h * UNIT_H), f"CHT / {dashboard['title']}    Worker: All",
             color=TEXT, fontsize=13, va="center")
    rng = random.Random(36)

    def box(pos: dict[str, int], left_pad: float = 0.1, top_pad: float = 0.1) -> list[float]:
        """Figure coordinates of a grid position, less the padding (grid units)."""
        left = (pos["x"] + left_pad) / 24
        bottom = 1 - (pos["y"] + pos["h"] + 0.6 / UNIT_H - 0.1) / total_h
        return [left, bottom, (pos["w"] - left_pad - 0.1) / 24, (pos["h"] - top_pad - 0.1) / total_h]

    for panel in dashboard["panels"]:
        pos = panel["gridPos"]
        if panel["type"] == "row":
            left, bottom, _, height_ = box(pos, top_pad=0)
            fig.text(left, bottom + height_ / 2, panel["title"], color=TEXT, fontsize=11,
                     fontweight="bold", va="center")
            continue
        stat = panel["type"] == "stat"
        ax = fig.add_axes(box(pos, left_pad=0.1 if stat else 0.9, top_pad=0.9), facecolor=PANEL)
        for spine in ax.spines.values():
            spine.set_color(GRID)
        ax.set_title(panel["title"], color=TEXT, fontsize=9, loc="left")
        if panel["type"] == "stat":
            value = STAT_SAMPLES.get(panel["title"], 0)
            steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
            color = [s["color"] for s in steps if s["value"] is None or value >= s["value"]][-1]
            ax.set_facecolor({"green": "#1a7f4b", "orange": "#c4610a", "red": "#c4162a"}.get(color, color))
            ax.text(0.5, 0.45, str(value), color="white", fontsize=22, ha="center", va="center",
                    transform=ax.transAxes)
            ax.set_xticks([])
            ax.set_yticks([])
            continue
        index = 0
        for target in panel["targets"]:
            for name in legends(target):
                ax.plot(series(rng, index, target["expr"]), color=COLORS[index % len(COLORS)],
                        linewidth=1.2, label=name)
                index += 1
        ax.tick_params(colors=TEXT, labelsize=7)
        ax.set_xticks([0, 24, 48, 72, 95], ["-24h", "-18h", "-12h", "-6h", "now"])
        ax.grid(color=GRID, linewidth=0.5)
        ax.legend(loc="upper left", fontsize=6.5, frameon=False, labelcolor=TEXT, ncol=2)
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=80, facecolor=BACKGROUND)
    # A 64-colour palette: a fraction of the size, to keep the repository small.
    Image.open(buffer).convert("RGB").quantize(64).save(out, optimize=True)


def main(argv: list[str]) -> int:
    render(json.loads(DASHBOARD.read_text()), Path(argv[1]) if len(argv) > 1 else OUT)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
