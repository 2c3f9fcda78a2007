"""Reports people can look at: per-face HTML + PNG card, a run report, Dagster markdown.

Everything is self-contained: images are inlined as base64 ``data:`` URIs and
the CSS is inline, so an HTML report opens from disk, from an e-mail or from
an artefact store with no network. Charts are drawn with matplotlib's Agg
canvas (no pyplot state); bars for similarity vs tau are plain HTML/CSS.

``show_sources`` decides whether donors appear as thumbnails of their aligned
source photos (``"thumbnails"``) or are withheld (``"withheld"``: id, group
and factors only) — choose ``"withheld"`` when reports leave the team that
may see the sources.
"""

from __future__ import annotations

import base64
import html
import io
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal, Mapping, Sequence

import numpy as np

from ..backbones.base import FACTOR_NAMES
from ..types import check_image
from .attribution import (AttributionMap, display_map, draw_overlay, overlay_label, overlay_png_bytes,
                          overlay_title)
from .ics import ICSResult

ShowSources = Literal["thumbnails", "withheld"]
SHOW_SOURCES: tuple[str, ...] = ("thumbnails", "withheld")

#: one colour per factor, stable across reports (colour-blind-safe Okabe-Ito order)
FACTOR_COLOURS: dict[str, str] = dict(zip(
    FACTOR_NAMES, ("#0072B2", "#56B4E9", "#E69F00", "#009E73", "#CC79A7", "#D55E00")))
GROUP_COLOURS = {"A": "#2b6cb0", "B": "#c05621"}
PASS_COLOUR, REJECT_COLOUR = "#2f855a", "#c53030"


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class DonorPanel:
    """A donor as shown in a report."""

    donor_id: str
    group: str
    factors: tuple[str, ...] = ()  # factors this donor is the primary donor of
    weights: Mapping[str, float] = field(default_factory=dict)  # its weight per factor
    thumbnail: np.ndarray | None = field(default=None, repr=False)  # aligned face [H, W, 3]


@dataclass(frozen=True)
class SimilarityBar:
    """One encoder's max similarity to any source, against its tau."""

    encoder: str
    max_similarity: float
    tau: float
    nearest_source: str | None = None
    gating: bool = True

    @property
    def passed(self) -> bool:
        return math.isfinite(self.max_similarity) and self.max_similarity < self.tau


@dataclass(frozen=True)
class AttributionPanel:
    """One attribution map (one target) to show over the face."""

    amap: AttributionMap
    target: str
    caption: str = ""


@dataclass(frozen=True)
class FaceReport:
    """Everything a per-face report shows."""

    release_id: str
    image: np.ndarray = field(repr=False)
    donors: tuple[DonorPanel, ...]
    similarities: tuple[SimilarityBar, ...]
    ics: ICSResult | None = None
    attributions: tuple[AttributionPanel, ...] = ()
    run_id: str = ""
    facts: Mapping[str, str] = field(default_factory=dict)  # recipe id, seed, file, ...
    timings: Mapping[str, float] = field(default_factory=dict)  # seconds per step


@dataclass(frozen=True)
class RunReport:
    """Everything the run-level report shows.

    ``similarities[encoder]`` holds ``(released, rejected)`` arrays of max
    similarities (NaN entries — no face, encoder error — are counted apart).
    ``gallery`` is ``(release_id, image, link)``; ``link`` is a relative path
    to the face's HTML report or empty.
    """

    run_id: str
    candidates: int
    released: int
    similarities: Mapping[str, tuple[np.ndarray, np.ndarray]]
    taus: Mapping[str, float]
    gallery: tuple[tuple[str, np.ndarray, str], ...] = ()
    rejection_reasons: Mapping[str, int] = field(default_factory=dict)
    facts: Mapping[str, str] = field(default_factory=dict)

    @property
    def pass_rate(self) -> float:
        return self.released / self.candidates if self.candidates else 0.0


@dataclass(frozen=True)
class ReportFiles:
    html: Path
    png: Path | None = None


# --------------------------------------------------------------------------- helpers


def png_bytes(image: np.ndarray, max_side: int | None = None) -> bytes:
    """PNG bytes of an RGB image ``[H, W, 3]``, shrunk to ``max_side`` when given."""
    from PIL import Image

    check_image(image)
    img = Image.fromarray(image)
    if max_side and max(img.size) > max_side:
        img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _esc(x: object) -> str:
    return html.escape(str(x), quote=True)


def _fig_png(fig, dpi: int = 110) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def _factor_colour(name: str, i: int) -> str:
    return FACTOR_COLOURS.get(name, ("#999999", "#666666", "#bbbbbb")[i % 3])


def _check_show(show_sources: str) -> None:
    if show_sources not in SHOW_SOURCES:
        raise ValueError(f"show_sources must be one of {SHOW_SOURCES}, got {show_sources!r}")


# --------------------------------------------------------------------------- charts


def draw_ics(ax, ics: ICSResult, encoder: str | None = None, donors: Sequence[str] | None = None,
             legend: bool = True) -> None:
    """Stacked horizontal bars on ``ax``: per donor, each factor's share (negative shares to the left)."""
    enc = encoder or ics.encoder_names[0]
    e = ics.encoder_names.index(enc)
    rows = [d for d in ics.donor_ids if donors is None or d in donors]
    for r, donor in enumerate(rows):
        d = ics.donor_ids.index(donor)
        pos = neg = 0.0
        for i, factor in enumerate(ics.factor_names):
            s = float(ics.share[e, d, i])
            left = pos if s >= 0 else neg + s
            ax.barh(r, abs(s), left=left, color=_factor_colour(factor, i), edgecolor="white", linewidth=0.6,
                    label=factor if r == 0 else None, height=0.7)
            if abs(s) >= 0.12:
                ax.text(left + abs(s) / 2, r, f"{s * 100:.0f}%", ha="center", va="center", fontsize=7,
                        color="white", fontweight="bold")
            if s >= 0:
                pos += s
            else:
                neg += s
        gain = float(ics.v_full[e, d] - ics.v_empty[e, d])
        ax.text(1.02, r, f"cos {ics.v_full[e, d]:.3f} ({gain:+.3f})", va="center", fontsize=7, color="#444",
                transform=ax.get_yaxis_transform())
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    ax.set_ylim(len(rows) - 0.5, -0.5)
    low = min(-0.05, float(np.min(np.clip(ics.share[e], None, 0).sum(-1))) - 0.05) if rows else -0.05
    ax.set_xlim(low, 1.0)
    ax.axvline(0, color="#333", linewidth=0.8)
    ax.set_xlabel(f"share of the likeness by factor ({enc}; phi / sum |phi|); "
                  "right: cos to the source (gain over the mean face)", fontsize=7)
    ax.tick_params(axis="x", labelsize=7)
    ax.xaxis.set_major_formatter(lambda v, _: f"{v * 100:.0f}%")
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    if legend:
        ax.legend(ncol=min(6, len(ics.factor_names)), fontsize=7, frameon=False, loc="lower center",
                  bbox_to_anchor=(0.5, 1.0), handlelength=1.2, columnspacing=1.0)


def ics_chart_png(ics: ICSResult, encoder: str | None = None, *, width_in: float = 7.2,
                  dpi: int = 110, donors: Sequence[str] | None = None) -> bytes:
    """The ICS chart (see ``draw_ics``) as PNG bytes."""
    from matplotlib.figure import Figure

    n = len([d for d in ics.donor_ids if donors is None or d in donors])
    height = 1.0 + 0.34 * n
    fig = Figure(figsize=(width_in, height), dpi=dpi)
    ax = fig.add_axes((0.19, 0.55 / height, 0.6, 1 - 0.9 / height))
    draw_ics(ax, ics, encoder, donors)
    return _fig_png(fig, dpi)


def similarity_histogram_png(released: np.ndarray, rejected: np.ndarray, tau: float, encoder: str, *,
                             dpi: int = 110) -> bytes:
    """Histogram of max similarity for released and rejected candidates, with tau."""
    from matplotlib.figure import Figure

    rel = np.asarray(released, np.float64)
    rej = np.asarray(rejected, np.float64)
    fin = np.concatenate([rel[np.isfinite(rel)], rej[np.isfinite(rej)], [tau]])
    lo, hi = float(fin.min()), float(fin.max())
    pad = max(0.02, (hi - lo) * 0.08)
    bins = np.linspace(lo - pad, hi + pad, 25)
    fig = Figure(figsize=(5.2, 2.6), dpi=dpi)
    ax = fig.add_axes((0.1, 0.2, 0.86, 0.68))
    ax.hist(rej[np.isfinite(rej)], bins=bins, color=REJECT_COLOUR, alpha=0.55, label=f"rejected ({np.isfinite(rej).sum()})")
    ax.hist(rel[np.isfinite(rel)], bins=bins, color=PASS_COLOUR, alpha=0.75, label=f"released ({np.isfinite(rel).sum()})")
    ax.axvline(tau, color="#111", linestyle="--", linewidth=1.2)
    ax.text(tau, ax.get_ylim()[1] * 0.95, f" tau {tau:.3f}", fontsize=8, va="top")
    ax.set_xlabel(f"{encoder}: max cosine similarity to any source", fontsize=8)
    ax.set_ylabel("candidates", fontsize=8)
    ax.tick_params(labelsize=7)
    from matplotlib.ticker import MaxNLocator

    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    nan = int((~np.isfinite(rej)).sum())
    title = f"{encoder}" + (f" — {nan} rejected without a score (no face / error)" if nan else "")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, frameon=False)
    return _fig_png(fig, dpi)


def _placeholder(text: str, size: int = 96) -> np.ndarray:
    """A grey tile with diagonal hatching standing in for a withheld source photo."""
    img = np.full((size, size, 3), 226, np.uint8)
    yy, xx = np.mgrid[0:size, 0:size]
    img[((xx + yy) // 6) % 2 == 0] = 214
    return img


def draw_similarity_bars(ax, bars: Sequence[SimilarityBar]) -> None:
    """One horizontal bar per encoder: max similarity (green below tau, red at/above), tau as a tick."""
    from matplotlib.patches import Rectangle

    for r, bar in enumerate(bars):
        sim = bar.max_similarity if math.isfinite(bar.max_similarity) else 0.0
        ax.add_patch(Rectangle((0, r - 0.28), 1.0, 0.56, color="#edf2f7", linewidth=0))
        ax.add_patch(Rectangle((0, r - 0.28), sim, 0.56, color=PASS_COLOUR if bar.passed else REJECT_COLOUR,
                               linewidth=0))
        ax.plot([bar.tau, bar.tau], [r - 0.42, r + 0.42], color="#111", linewidth=1.8)
        ax.text(0.02, r, f"{sim:.3f}" if math.isfinite(bar.max_similarity) else "no score", va="center",
                fontsize=8, color="white", fontweight="bold")
        ax.text(bar.tau, r - 0.46, f"tau {bar.tau:.3f}", ha="center", va="bottom", fontsize=7)
    ax.set_xlim(0, 1)
    ax.set_ylim(len(bars) - 0.4, -0.75)
    ax.set_yticks(range(len(bars)), [b.encoder for b in bars], fontsize=8)
    ax.tick_params(axis="x", labelsize=7)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def face_card_png(report: FaceReport, show_sources: ShowSources = "thumbnails", *, dpi: int = 100) -> bytes:
    """A one-image summary card: face, donors, similarity vs tau, ICS chart, first attribution map."""
    from matplotlib.figure import Figure

    _check_show(show_sources)
    check_image(report.image, "released image")
    fig = Figure(figsize=(14.0, 7.0), dpi=dpi, facecolor="white")
    passed = all(b.passed for b in report.similarities if b.gating)
    fig.text(0.015, 0.955, f"PersonC release {report.release_id}", fontsize=16, fontweight="bold", va="center")
    fig.text(0.015, 0.915, "synthetic face" + (f" · run {report.run_id}" if report.run_id else "") + " · "
             + ("below tau under every encoder" if passed else "REACHES TAU"), fontsize=9,
             color=PASS_COLOUR if passed else REJECT_COLOUR, va="center")
    # left column: face, then similarity bars
    ax = fig.add_axes((0.015, 0.33, 0.22, 0.55))
    ax.imshow(report.image)
    ax.set_axis_off()
    nb = max(1, len(report.similarities))
    sax = fig.add_axes((0.06, 0.07, 0.17, min(0.2, 0.06 + 0.05 * nb)))
    draw_similarity_bars(sax, report.similarities)
    sax.set_title("max similarity to any source vs tau", fontsize=8, loc="left")
    # middle column: donors strip, then ICS chart
    fig.text(0.265, 0.875, "donors — frame colour is the group (blue A, orange B); "
             "below each, the factors it leads", fontsize=8, color="#444")
    n = max(1, len(report.donors))
    w = min(0.075, 0.47 / n - 0.006)
    for i, donor in enumerate(report.donors):
        dax = fig.add_axes((0.265 + i * (w + 0.006), 0.64, w, w * 14.0 / 7.0))
        thumb = donor.thumbnail if (show_sources == "thumbnails" and donor.thumbnail is not None) else None
        dax.imshow(thumb if thumb is not None else _placeholder(donor.donor_id))
        if thumb is None:
            dax.text(0.5, 0.5, "withheld", transform=dax.transAxes, ha="center", va="center", fontsize=8,
                     color="#555")
        dax.set_xticks([])
        dax.set_yticks([])
        for sp in dax.spines.values():
            sp.set_color(GROUP_COLOURS.get(donor.group, "#888"))
            sp.set_linewidth(2.5)
        dax.set_title(donor.donor_id, fontsize=6.5, color=GROUP_COLOURS.get(donor.group, "#333"))
        dax.text(0.5, -0.05, "\n".join(donor.factors) or "", transform=dax.transAxes, ha="center", va="top",
                 fontsize=7)
    if report.ics is not None:
        nd = len(report.ics.donor_ids)
        h = min(0.44, 0.05 * nd + 0.04)
        iax = fig.add_axes((0.36, 0.1 + (0.44 - h) / 2, 0.31, h))
        draw_ics(iax, report.ics)
        fig.text(0.265, 0.585, "identity contribution scores", fontsize=10, fontweight="bold")
    # right column: first attribution map
    if report.attributions:
        p = report.attributions[0]
        aax = fig.add_axes((0.755, 0.22, 0.18, 0.5))
        cax = fig.add_axes((0.94, 0.27, 0.009, 0.4))
        draw_overlay(aax, cax, report.image, display_map(p.amap, p.target, report.image.shape[:2]),
                     label=overlay_label(p.amap))
        fig.text(0.845, 0.745, "which regions drive the likeness", fontsize=10, fontweight="bold", ha="center")
        fig.text(0.845, 0.715, p.caption or overlay_title(p.amap, p.target), fontsize=8, ha="center")
        fig.text(0.845, 0.19, "red: region makes the face more like this source", fontsize=7, ha="center",
                 color="#555")
    return _fig_png(fig, dpi)


# --------------------------------------------------------------------------- HTML

_CSS = """
:root{--ink:#1a202c;--muted:#5a6478;--line:#e2e8f0;--bg:#f7f8fa;--card:#fff;--pass:#2f855a;--fail:#c53030;
--a:#2b6cb0;--b:#c05621}
*{box-sizing:border-box}body{margin:0;background:var(--bg);color:var(--ink);
font:14px/1.45 -apple-system,BlinkMacSystemFont,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
main{max-width:1120px;margin:0 auto;padding:24px 20px 40px}
header{display:flex;align-items:center;gap:14px;flex-wrap:wrap;margin-bottom:18px}
h1{font-size:22px;margin:0}h2{font-size:16px;margin:0 0 10px}
.badge{display:inline-block;padding:2px 9px;border-radius:999px;font-size:12px;font-weight:600;letter-spacing:.02em}
.synthetic{background:#ebf4ff;color:#2c5282;border:1px solid #bee3f8}
.pass{background:#f0fff4;color:var(--pass);border:1px solid #c6f6d5}
.fail{background:#fff5f5;color:var(--fail);border:1px solid #fed7d7}
.muted{color:var(--muted)}.small{font-size:12px}
.card{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:16px 18px;margin-bottom:16px;
box-shadow:0 1px 2px rgba(0,0,0,.04)}
.top{display:grid;grid-template-columns:300px 1fr;gap:16px;align-items:start}
.face img{width:100%;border-radius:8px;display:block;image-rendering:auto}
.donors{display:flex;flex-wrap:wrap;gap:10px}
.donor{width:104px;text-align:center;font-size:11.5px}
.donor img{width:96px;height:96px;object-fit:cover;border-radius:8px;border:3px solid #999;display:block;margin:0 auto 4px}
.donor.A img{border-color:var(--a)}.donor.B img{border-color:var(--b)}
.group{font-weight:700}.group.A{color:var(--a)}.group.B{color:var(--b)}
.factors{display:flex;flex-wrap:wrap;gap:3px;justify-content:center;margin-top:3px}
.chip{font-size:11px;padding:0 6px;border-radius:6px;color:#fff}
table{border-collapse:collapse;width:100%;font-size:13px}
th,td{padding:5px 8px;border-bottom:1px solid var(--line);text-align:left}
th{font-weight:600;color:var(--muted);font-size:12px}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.simrow{display:grid;grid-template-columns:110px 1fr 260px;gap:12px;align-items:center;margin:8px 0}
.track{position:relative;height:16px;background:#edf2f7;border-radius:8px}
.fill{position:absolute;left:0;top:0;bottom:0;border-radius:8px}
.tau{position:absolute;top:-5px;bottom:-5px;width:2px;background:#111}
.tau span{position:absolute;top:-16px;left:-12px;font-size:10px;color:#111}
.maps{display:grid;grid-template-columns:repeat(auto-fill,minmax(260px,1fr));gap:12px}
.maps figure{margin:0}.maps img{width:100%;border:1px solid var(--line);border-radius:8px}
figcaption{font-size:12px;color:var(--muted);margin-top:4px}
.sentences li{margin:2px 0}
.kpi{display:flex;gap:28px;flex-wrap:wrap}.kpi div b{display:block;font-size:26px}
.gallery{display:grid;grid-template-columns:repeat(auto-fill,minmax(150px,1fr));gap:12px}
.gallery a,.gallery div.item{text-decoration:none;color:var(--ink);font-size:12px;text-align:center}
.gallery img{width:100%;border-radius:8px;border:1px solid var(--line)}
.hists{display:grid;grid-template-columns:repeat(auto-fill,minmax(480px,1fr));gap:12px}
.hists img{width:100%}
footer{font-size:12px;color:var(--muted);margin-top:20px}
@media (max-width:760px){.top{grid-template-columns:1fr}.simrow{grid-template-columns:1fr}}
"""


def _page(title: str, body: str) -> str:
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">"
            f"<title>{_esc(title)}</title><style>{_CSS}</style></head><body><main>{body}"
            f"<footer>Generated by PersonC on {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC. "
            "Synthetic faces; self-contained report (no external resources).</footer></main></body></html>\n")


def _factor_chips(factors: Sequence[str]) -> str:
    return "".join(f'<span class="chip" style="background:{_factor_colour(f, i)}">{_esc(f)}</span>'
                   for i, f in enumerate(factors))


def _donor_html(donor: DonorPanel, show_sources: str) -> str:
    if show_sources == "thumbnails" and donor.thumbnail is not None:
        src = data_uri(png_bytes(donor.thumbnail, 160))
        alt = f"source {donor.donor_id}"
    else:
        src = data_uri(png_bytes(_placeholder(donor.donor_id, 112)))
        alt = "source withheld"
    weights = ", ".join(f"{f} {w:.0%}" for f, w in donor.weights.items())
    return (f'<div class="donor {_esc(donor.group)}"><img src="{src}" alt="{_esc(alt)}" title="{_esc(weights)}">'
            f'<div><b>{_esc(donor.donor_id)}</b></div><div class="group {_esc(donor.group)}">group '
            f'{_esc(donor.group)}</div><div class="factors">{_factor_chips(donor.factors)}</div></div>')


def _sim_row(bar: SimilarityBar) -> str:
    sim = bar.max_similarity
    ok = bar.passed
    width = max(0.0, min(1.0, sim if math.isfinite(sim) else 0.0)) * 100
    tau = max(0.0, min(1.0, bar.tau)) * 100
    colour = "var(--pass)" if ok else "var(--fail)"
    text = (f"<b>{sim:.3f}</b> {'&lt;' if ok else '&ge;'} tau {bar.tau:.3f} "
            f"<span class='muted'>(margin {bar.tau - sim:+.3f})</span>" if math.isfinite(sim)
            else "<b>no score</b>")
    nearest = f"<div class='small muted'>nearest source {_esc(bar.nearest_source)}</div>" if bar.nearest_source else ""
    role = "" if bar.gating else " <span class='small muted'>(witness)</span>"
    return (f'<div class="simrow"><div><b>{_esc(bar.encoder)}</b>{role}</div>'
            f'<div class="track"><div class="fill" style="width:{width:.1f}%;background:{colour}"></div>'
            f'<div class="tau" style="left:{tau:.1f}%"><span>tau</span></div></div>'
            f'<div>{text}{nearest}</div></div>')


def _ics_table(ics: ICSResult, encoder: str) -> str:
    e = ics.encoder_names.index(encoder)
    head = "".join(f"<th>{_esc(f)}</th>" for f in ics.factor_names)
    rows = []
    for d, donor in enumerate(ics.donor_ids):
        cells = []
        for i in range(len(ics.factor_names)):
            s = float(ics.share[e, d, i])
            alpha = min(1.0, abs(s)) * 0.85
            rgb = "47,133,90" if s >= 0 else "197,48,48"
            cells.append(f'<td class="num" style="background:rgba({rgb},{alpha:.2f});'
                         f'color:{"#fff" if alpha > 0.45 else "inherit"}" title="phi {ics.phi[e, d, i]:+.4f}, '
                         f'drop {ics.drop[e, d, i]:+.4f}">{s * 100:.0f}%</td>')
        rows.append(f"<tr><td><b>{_esc(donor)}</b></td><td class='num'>{ics.v_full[e, d]:.3f}</td>"
                    f"<td class='num'>{ics.v_empty[e, d]:.3f}</td>{''.join(cells)}</tr>")
    return (f"<table><thead><tr><th>source</th><th>cos face</th><th>cos mean face</th>{head}</tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>")


def render_face_report_html(report: FaceReport, show_sources: ShowSources = "thumbnails") -> str:
    """The per-face report as one self-contained HTML page."""
    _check_show(show_sources)
    check_image(report.image, "released image")
    passed = all(b.passed for b in report.similarities if b.gating)
    verdict = ('<span class="badge pass">below tau under every encoder</span>' if passed
               else '<span class="badge fail">reaches tau</span>')
    facts = "".join(f"<tr><th>{_esc(k)}</th><td>{_esc(v)}</td></tr>" for k, v in report.facts.items())
    timing = ", ".join(f"{k} {v:.1f} s" for k, v in report.timings.items())
    parts = [
        f'<header><h1>Release {_esc(report.release_id)}</h1><span class="badge synthetic">Synthetic</span>{verdict}'
        + (f'<span class="muted small">run {_esc(report.run_id)}</span>' if report.run_id else "") + "</header>",
        '<div class="top"><div class="card face">'
        f'<img src="{data_uri(png_bytes(report.image))}" alt="released face {_esc(report.release_id)}">'
        + (f"<table class='small' style='margin-top:10px'>{facts}</table>" if facts else "") + "</div>",
        '<div><div class="card"><h2>Donors and the factors they lead</h2>'
        + ("" if show_sources == "thumbnails" else "<p class='small muted'>Source photos are withheld in this "
           "report; donors are named by group and hash prefix.</p>")
        + f'<div class="donors">{"".join(_donor_html(d, show_sources) for d in report.donors)}</div></div>',
        '<div class="card"><h2>Max similarity to any source, per encoder, against its tau</h2>'
        + "".join(_sim_row(b) for b in report.similarities)
        + "<p class='small muted'>Each encoder has its own scale and its own tau; a face is released only when "
          "it stays below tau under every gating encoder.</p></div></div></div>",
    ]
    if report.ics is not None:
        ics = report.ics
        sentences = "".join(f"<li>{_esc(ics.sentence(enc, d))}</li>" for enc in ics.encoder_names
                            for d in ics.donor_ids)
        charts = "".join(
            f"<h3 class='small muted'>{_esc(enc)}</h3><img style='max-width:100%' alt='ICS chart {_esc(enc)}' "
            f"src='{data_uri(ics_chart_png(ics, enc))}'>{_ics_table(ics, enc)}" for enc in ics.encoder_names)
        caveat = ("" if ics.complete else
                  f"<p class='small' style='color:var(--fail)'>{len(ics.undetected)} coalition image(s) had no "
                  "detectable face and were scored as the population-mean face (rule "
                  f"'{_esc(ics.missing_face)}').</p>")
        parts.append(
            '<div class="card"><h2>Identity contribution scores</h2>'
            "<p class='small muted'>Exact Shapley value of each factor towards the face's similarity to each "
            "source (a factor that is off takes the population mean), as a share of the sum of |values|. "
            "Negative shares move the face away from that source.</p>"
            f"<ul class='sentences'>{sentences}</ul>{charts}{caveat}</div>")
    if report.attributions:
        figs = []
        for p in report.attributions:
            heat = display_map(p.amap, p.target, report.image.shape[:2])
            png = overlay_png_bytes(report.image, heat, label=overlay_label(p.amap))
            figs.append(f"<figure><img alt='attribution {_esc(p.target)}' src='{data_uri(png)}'>"
                        f"<figcaption><b>{_esc(p.caption or p.target)}</b><br>{_esc(overlay_title(p.amap, p.target))}"
                        "</figcaption></figure>")
        parts.append('<div class="card"><h2>Which regions drive the likeness</h2>'
                     "<p class='small muted'>Red regions make the face more similar to that source, blue less.</p>"
                     f'<div class="maps">{"".join(figs)}</div></div>')
    if timing:
        parts.append(f"<p class='small muted'>Explanation cost: {_esc(timing)}.</p>")
    return _page(f"PersonC release {report.release_id}", "".join(parts))


def render_run_report_html(report: RunReport) -> str:
    """The run-level report: pass rate, similarity histograms against tau, gallery."""
    reasons = "".join(f"<tr><td>{_esc(k)}</td><td class='num'>{v}</td></tr>"
                      for k, v in sorted(report.rejection_reasons.items(), key=lambda kv: -kv[1]))
    hists = "".join(
        f"<img alt='similarity histogram {_esc(enc)}' src='"
        f"{data_uri(similarity_histogram_png(rel, rej, report.taus[enc], enc))}'>"
        for enc, (rel, rej) in report.similarities.items() if enc in report.taus)
    items = []
    for rid, image, link in report.gallery:
        img = f"<img alt='{_esc(rid)}' src='{data_uri(png_bytes(image, 192))}'><div>{_esc(rid)}</div>"
        items.append(f"<a href='{_esc(link)}'>{img}</a>" if link else f"<div class='item'>{img}</div>")
    facts = "".join(f"<tr><th>{_esc(k)}</th><td>{_esc(v)}</td></tr>" for k, v in report.facts.items())
    body = (
        f"<header><h1>PersonC run {_esc(report.run_id)}</h1><span class='badge synthetic'>Synthetic</span></header>"
        "<div class='card'><div class='kpi'>"
        f"<div><b>{report.pass_rate:.0%}</b><span class='muted'>pass rate</span></div>"
        f"<div><b>{report.released}</b><span class='muted'>released</span></div>"
        f"<div><b>{report.candidates - report.released}</b><span class='muted'>rejected</span></div>"
        f"<div><b>{report.candidates}</b><span class='muted'>candidates</span></div></div>"
        + (f"<table class='small' style='margin-top:12px'>{facts}</table>" if facts else "") + "</div>"
        + ("<div class='card'><h2>Max similarity against tau</h2>"
           f"<div class='hists'>{hists}</div></div>" if hists else "")
        + (f"<div class='card'><h2>Why candidates were rejected</h2><table>{reasons}</table></div>" if reasons else "")
        + f"<div class='card'><h2>Released faces</h2><div class='gallery'>{''.join(items)}</div></div>"
    )
    return _page(f"PersonC run {report.run_id}", body)


def write_face_report(out_dir: Path, report: FaceReport, show_sources: ShowSources = "thumbnails",
                      card: bool = True) -> ReportFiles:
    """Write ``<release_id>.html`` (and ``<release_id>.png``, the summary card) atomically."""
    from ..atomic import atomic_write_bytes, atomic_write_text

    out_dir = Path(out_dir)
    html_path = out_dir / f"{report.release_id}.html"
    atomic_write_text(html_path, render_face_report_html(report, show_sources))
    png_path = None
    if card:
        png_path = out_dir / f"{report.release_id}.png"
        atomic_write_bytes(png_path, face_card_png(report, show_sources))
    return ReportFiles(html_path, png_path)


def write_run_report(path: Path, report: RunReport) -> Path:
    """Write the run report HTML atomically."""
    from ..atomic import atomic_write_text

    atomic_write_text(Path(path), render_run_report_html(report))
    return Path(path)


# --------------------------------------------------------------------------- Dagster markdown


def gallery_markdown(items: Sequence[tuple[str, np.ndarray]], *, thumb_px: int = 96, columns: int = 5) -> str:
    """A markdown table of small inline PNG thumbnails with captions (Dagster renders data URIs)."""
    if columns < 1:
        raise ValueError(f"columns must be >= 1, got {columns}")
    if not items:
        return "_no released faces_"
    cells = [f"![{rid}]({data_uri(png_bytes(img, thumb_px))})<br>`{rid}`" for rid, img in items]
    width = min(columns, len(cells))
    rows = [cells[i:i + width] for i in range(0, len(cells), width)]
    rows[-1] += [" "] * (width - len(rows[-1]))
    header = "| " + " | ".join([" "] * width) + " |\n|" + "---|" * width + "\n"
    return header + "\n".join("| " + " | ".join(r) + " |" for r in rows)


def ics_markdown(ics: ICSResult, *, encoder: str | None = None, donors: Sequence[str] | None = None,
                 chart: bool = True, chart_width_in: float = 5.0) -> str:
    """ICS shares as a markdown table (+ sentences and, optionally, a small inline chart)."""
    encs = [encoder] if encoder else list(ics.encoder_names)
    out = []
    for enc in encs:
        e = ics.encoder_names.index(enc)
        rows = [d for d in ics.donor_ids if donors is None or d in donors]
        out.append(f"**{enc}** — share of the likeness to each source by factor (phi / sum |phi|)\n")
        out.append("| source | cos | " + " | ".join(ics.factor_names) + " |")
        out.append("|---|---:|" + "---:|" * len(ics.factor_names))
        for donor in rows:
            d = ics.donor_ids.index(donor)
            shares = " | ".join(f"{ics.share[e, d, i] * 100:.0f}%" for i in range(len(ics.factor_names)))
            out.append(f"| `{donor}` | {ics.v_full[e, d]:.3f} | {shares} |")
        out.append("")
        out.extend(f"- {ics.sentence(enc, d)}" for d in rows)
        if chart:
            out.append("")
            out.append(f"![ICS {enc}]({data_uri(ics_chart_png(ics, enc, width_in=chart_width_in, dpi=80, donors=rows))})")
        out.append("")
    if not ics.complete:
        out.append(f"_{len(ics.undetected)} coalition image(s) had no face; scored as the mean face._")
    return "\n".join(out).strip() + "\n"
