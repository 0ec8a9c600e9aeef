"""Live agreement on the monitoring page and in ``/metrics``.

The page shows, for the drafting model, each CheXpert observation's agreement, precision
and recall over the agreement window with its alert state, and a chart of daily agreement.
``/metrics`` exports the same figures for every model with signed reports in the window.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from markupsafe import Markup, escape
from sqlalchemy.orm import Session

from node.config import Settings
from node.jobs.bundle_identity import read_bundle_identity
from node.quality.monitor import agreement_since
from node.quality.records import (
    DailySeries,
    ModelKey,
    ObservationWindow,
    daily_agreement,
    latest_model,
    window_stats,
)
from node.web.prometheus import add_family, label_set

#: Colour classes of the chart's lines (``.series.s0`` ... in app.css), used in turn.
SERIES_CLASSES = 7


def agreement_metric_lines(session: Session, settings: Settings,
                           now: dt.datetime) -> list[str]:
    """Prometheus text lines of the agreement gauges (every model in the window)."""
    quality = settings.quality
    windows = window_stats(session, agreement_since(now, quality),
                           threshold=quality.agreement_threshold,
                           min_reports=quality.agreement_min_reports)
    gauges: list[tuple[str, str, Any]] = [
        ("radnode_observation_agreement",
         "Share of signed drafts whose signed report agrees on the observation "
         "(agreement window).", lambda w: w.counts.agreement),
        ("radnode_observation_precision",
         "Share of draft positives the signed report confirms (agreement window).",
         lambda w: w.counts.precision),
        ("radnode_observation_recall",
         "Share of signed positives the draft found (agreement window).",
         lambda w: w.counts.recall),
        ("radnode_observation_agreement_reports",
         "Signed drafts counted in the agreement window.", lambda w: w.counts.reports),
        ("radnode_observation_agreement_alert",
         "1 when agreement is below the threshold over at least the minimum reports.",
         lambda w: int(w.low)),
    ]
    lines: list[str] = []
    for name, help_text, value_of in gauges:
        add_family(lines, name, "gauge", help_text, [
            (label_set(observation=w.observation.value, model=w.model.name,
                       model_version=w.model.version), value_of(w))
            for w in windows])
    add_family(lines, "radnode_observation_agreement_threshold", "gauge",
               "Alert threshold of agreement.", [("", float(quality.agreement_threshold))])
    return lines


def agreement_chart(days: Sequence[dt.date], series: DailySeries, *, threshold: float,
                    title: str, width: int = 1240, height: int = 240) -> Markup:
    """Daily agreement per observation as lines over a 0-100 % axis, as an ``<svg>``.

    Days without signed reports break a line; a lone day is drawn as a dot. The threshold
    is a dashed line.
    """
    left, right, top, bottom = 44, 8, 10, 26
    plot_w, plot_h = width - left - right, height - top - bottom
    step = plot_w / max(len(days) - 1, 1)

    def x_of(index: int) -> float:
        return left + index * step

    def y_of(value: float) -> float:
        return top + plot_h * (1 - value)

    parts = [f'<svg class="chart agreement" viewBox="0 0 {width} {height}" role="img" '
             f'aria-label="{escape(title)}"><title>{escape(title)}</title>']
    for tick in range(5):
        y = y_of(tick / 4)
        parts.append(f'<line class="grid" x1="{left}" x2="{width - right}" y1="{y:.1f}" '
                     f'y2="{y:.1f}"/><text class="axis" x="{left - 6}" y="{y + 4:.1f}" '
                     f'text-anchor="end">{tick * 25}%</text>')
    label_every = max(1, math.ceil(len(days) / 10))
    for index, day in enumerate(days):
        if index % label_every == 0 or index == len(days) - 1:
            parts.append(f'<text class="axis" x="{x_of(index):.1f}" y="{height - 8}" '
                         f'text-anchor="middle">{day.strftime("%d %b")}</text>')
    y = y_of(threshold)
    parts.append(f'<line class="threshold" x1="{left}" x2="{width - right}" y1="{y:.1f}" '
                 f'y2="{y:.1f}"><title>threshold {threshold:.0%}</title></line>')
    for number, (observation, values) in enumerate(series.items()):
        css = f"series s{number % SERIES_CLASSES}"
        runs: list[list[tuple[int, float]]] = [[]]
        for index, value in enumerate(values):
            if value is None:
                runs.append([])
            else:
                runs[-1].append((index, value))
        for run in (r for r in runs if r):
            tip = escape(observation.value)
            if len(run) == 1:
                index, value = run[0]
                parts.append(f'<circle class="{css}" cx="{x_of(index):.1f}" '
                             f'cy="{y_of(value):.1f}" r="3"><title>{tip}: '
                             f'{value:.0%}</title></circle>')
            else:
                points = " ".join(f"{x_of(i):.1f},{y_of(v):.1f}" for i, v in run)
                parts.append(f'<polyline class="{css}" points="{points}"><title>{tip}'
                             f'</title></polyline>')
    parts.append(f'<line class="baseline" x1="{left}" x2="{width - right}" '
                 f'y1="{top + plot_h}" y2="{top + plot_h}"/></svg>')
    return Markup("".join(parts))


@dataclass(frozen=True)
class AgreementPanel:
    """What the monitoring page shows of live agreement."""

    model: ModelKey | None
    rows: list[ObservationWindow]
    alerts: int
    chart: Markup | None
    legend: list[tuple[str, str]]
    """``(observation, css class)`` of each line in the chart."""
    window_days: float
    threshold: float
    min_reports: int
    chart_days: int


def _drafting_model(session: Session, settings: Settings) -> ModelKey | None:
    try:
        identity = read_bundle_identity(settings.model.bundle)
    except ValueError:
        identity = None
    if identity is not None:
        return ModelKey(identity.name[:64], identity.version[:64])
    return latest_model(session)


def agreement_panel(session: Session, settings: Settings, now: dt.datetime) -> AgreementPanel:
    """The agreement of the drafting model (the installed bundle, else the last one seen)."""
    quality = settings.quality
    model = _drafting_model(session, settings)
    rows: list[ObservationWindow] = []
    chart: Markup | None = None
    legend: list[tuple[str, str]] = []
    if model is not None:
        rows = window_stats(session, agreement_since(now, quality),
                            threshold=quality.agreement_threshold,
                            min_reports=quality.agreement_min_reports, model=model)
        days, series = daily_agreement(session, model, quality.chart_days, now)
        if series:
            chart = agreement_chart(days, series, threshold=quality.agreement_threshold,
                                    title=f"Daily agreement of {model.name} {model.version}")
            legend = [(o.value, f"s{n % SERIES_CLASSES}") for n, o in enumerate(series)]
    return AgreementPanel(model, rows, sum(1 for r in rows if r.low), chart, legend,
                          quality.agreement_window_days, quality.agreement_threshold,
                          quality.agreement_min_reports, quality.chart_days)


__all__ = ["AgreementPanel", "agreement_chart", "agreement_metric_lines", "agreement_panel"]
