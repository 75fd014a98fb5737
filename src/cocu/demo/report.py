"""The demo's report: one self-contained HTML page (inline CSS, images as base64 PNG, no script, no URL).

:func:`render_report` turns :class:`ReportData` (numbers from ``results.json`` plus pictures already
encoded as PNG) into the page; it reads no file, so it is easy to test and to reuse.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from typing import Any, Sequence

from cocu.demo.figures import data_uri
from cocu.demo.settings import ROWS, TEACHER_DENSE

_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 0 auto; max-width: 1180px;
       padding: 1.2em 2em 3em; color: #1d2330; line-height: 1.45; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 2px solid #dde3ee; padding-bottom: 0.2em; margin-top: 2em; }
p.lead { font-size: 1.05em; color: #3a4252; max-width: 60em; }
.headline { display: flex; gap: 1em; flex-wrap: wrap; margin: 1em 0; }
.stat { background: #f3f6fb; border: 1px solid #dde3ee; border-radius: 8px; padding: 0.6em 1em; min-width: 10em; }
.stat .v { font-size: 1.7em; font-weight: 700; } .stat .k { color: #566070; font-size: 0.85em; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.92em; }
th, td { border: 1px solid #d4dae6; padding: 0.35em 0.6em; text-align: right; vertical-align: top; }
th { background: #eef2f8; } td { white-space: nowrap; } td.name, th.name { text-align: left; white-space: normal; }
td.gt, th.gt { background: #fff6dc; font-weight: 700; }
td.na { color: #9aa3b2; text-align: center; }
tr.cocu td { background: #eaf7ee; } tr.cocu td.gt { background: #f4efcc; }
.bar { display: inline-block; height: 0.55em; background: #e0a526; border-radius: 2px; margin-left: 0.4em; }
.note { color: #566070; font-size: 0.88em; max-width: 62em; }
img { max-width: 100%; height: auto; }
.gallery { display: grid; grid-template-columns: repeat(auto-fill, minmax(520px, 1fr)); gap: 1em; }
.card { border: 1px solid #d4dae6; border-radius: 8px; padding: 0.7em; display: flex; gap: 0.8em; }
.card img { image-rendering: pixelated; border: 1px solid #b9c1cf; }
.card .txt { font-size: 0.86em; } .card .cap { font-style: italic; margin-bottom: 0.4em; }
.chip { display: inline-block; border-radius: 10px; padding: 0 0.45em; margin: 0.1em 0.1em; font-size: 0.9em;
        border: 1px solid transparent; }
.hit { background: #d4f1dc; border-color: #7cc892; }
.false { background: #fbe0e0; border-color: #e39a9a; text-decoration: line-through; }
.found { background: #d4f1dc; border-color: #7cc892; }
.missed { background: #f1f1f1; border: 1px dashed #999; color: #777; }
.sampled { font-weight: 700; }
.lbl { color: #566070; font-weight: 600; }
.ov { display: flex; gap: 0.6em; flex-wrap: wrap; align-items: flex-start; margin-bottom: 1em; }
.ov figure { margin: 0; text-align: center; font-size: 0.82em; }
.ov img { image-rendering: pixelated; border: 1px solid #b9c1cf; }
.swatch { display: inline-block; width: 0.9em; height: 0.9em; border: 1px solid #777; vertical-align: middle;
          margin-right: 0.25em; }
.legend span.item { margin-right: 0.9em; white-space: nowrap; font-size: 0.85em; }
pre { background: #f6f8fb; border: 1px solid #dde3ee; padding: 0.7em; overflow-x: auto; font-size: 0.82em; }
"""


@dataclass
class Chip:
    """One concept as shown in the gallery: ``css`` is ``hit``/``false`` (a claim) or ``found``/``missed``
    (a true concept), ``detail`` an optional suffix (score, cluster, pixel fraction)."""

    name: str
    css: str
    detail: str = ""
    sampled: bool = False


@dataclass
class GalleryItem:
    key: str
    image_png: bytes
    caption: str
    caption_concepts: list[Chip]
    curated: list[Chip]
    truth: list[Chip]


@dataclass
class OverlayItem:
    """One val image: the picture, the true label map and each model's prediction (all as PNG), its
    caption and the true concepts the caption does not name (what only curation can supply)."""

    key: str
    image_png: bytes
    truth_png: bytes
    predictions: dict[str, bytes]
    caption: str = ""
    unmentioned: list[str] = field(default_factory=list)


@dataclass
class ClassIoU:
    name: str
    kind: str
    iou: dict[str, float | None]


@dataclass
class ReportData:
    results: dict[str, Any]
    loss_png: bytes | None = None
    gallery: list[GalleryItem] = field(default_factory=list)
    overlays: list[OverlayItem] = field(default_factory=list)
    legend: list[tuple[str, tuple[int, int, int]]] = field(default_factory=list)
    class_iou: list[ClassIoU] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    budget_png: bytes | None = None
    concept_png: bytes | None = None
    strength_png: bytes | None = None


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _pct(value: float | None, std: float | None = None) -> str:
    if value is None:
        return '<td class="na">&mdash;</td>'
    extra = f" &plusmn; {100 * std:.1f}" if std is not None else ""
    return f"<td>{100 * value:.1f}{extra}</td>"


def _gt_cell(value: float | None) -> str:
    if value is None:
        return '<td class="gt na">&mdash;</td>'
    width = max(1, round(60 * value))
    return f'<td class="gt">{100 * value:.1f}<span class="bar" style="width:{width}px"></span></td>'


def _img(png: bytes, alt: str, width: int | None = None) -> str:
    size = f' width="{width}"' if width else ""
    return f'<img src="{data_uri(png)}" alt="{_e(alt)}"{size}>'


def _headline(results: dict[str, Any]) -> str:
    rows = {r["name"]: r for r in results.get("rows", [])}

    def stat(label: str, value: str) -> str:
        return f'<div class="stat"><div class="v">{value}</div><div class="k">{_e(label)}</div></div>'

    def pct(name: str, key: str) -> str:
        v = rows.get(name, {}).get(key)
        return "&mdash;" if v is None else f"{100 * v:.1f}%"

    gap = results.get("gap_closed")
    parts = [
        stat("true-concept recall: captions", pct("baseline", "recall")),
        stat("true-concept recall: CoCu archive", pct("cocu", "recall")),
        stat("zero-shot mIoU: baseline", pct("baseline", "miou")),
        stat("zero-shot mIoU: CoCu", pct("cocu", "miou")),
        stat("zero-shot mIoU: oracle", pct("oracle", "miou")),
        stat("zero-shot mIoU: teacher CLIP read densely, no pre-training", pct(TEACHER_DENSE, "miou")),
        stat("baseline-to-oracle gap closed by CoCu", "&mdash;" if gap is None else f"{100 * gap:.0f}%"),
    ]
    return '<div class="headline">' + "".join(parts) + "</div>"


def _sampling_text(spec: Any) -> str:
    """The sampling column: the curated rows' sampler, else how the trainer picks the L texts."""
    if spec is None:
        return "-"
    if spec.sampling:
        return spec.sampling
    return {"caption": "random subset", "truth": "weighted by pixel share"}.get(spec.concepts, "-")


def _ablation_table(results: dict[str, Any]) -> str:
    titles = {r.name: r for r in ROWS}
    head = (
        "<tr><th class=name rowspan=2>row</th><th class=name rowspan=2>expansion</th><th class=name rowspan=2>"
        "ranking</th><th class=name rowspan=2>sampling</th><th colspan=2>concepts trained on (vs. truth)</th>"
        "<th colspan=3>sampled per step (vs. truth)</th><th colspan=4>zero-shot segmentation (val)</th>"
        "<th rowspan=2>top-1<br>(classify)</th></tr><tr><th class=gt>GT recall</th><th>GT precision</th>"
        "<th class=gt>GT recall</th><th>GT precision</th><th class=gt>GT recall over 10 steps</th>"
        "<th>mIoU</th><th>mIoU with LC</th><th>mIoU whole-image</th>"
        "<th>mIoU group bound</th></tr>"
    )
    body = []
    for r in results.get("rows", []):
        spec = titles.get(r["name"])
        source = (spec.expansion if spec else None) or ("truth" if r["name"] == "oracle" else "caption")
        source = source if spec else "-"
        std = r.get("std") or {}
        css = ' class="cocu"' if r["name"] == "cocu" else ""
        body.append(
            f"<tr{css}><td class=name><b>{_e(r['name'])}</b><br><span class=note>"
            f"{_e(spec.title if spec else r.get('title', ''))}</span></td>"
            f"<td class=name>{_e(source)}</td><td class=name>{_e((spec.ranking if spec else None) or '-')}</td>"
            f"<td class=name>{_e(_sampling_text(spec))}</td>"
            + _gt_cell(r.get("recall"))
            + _pct(r.get("precision"))
            + _gt_cell(r.get("sampled_recall"))
            + _pct(r.get("sampled_precision"))
            + _gt_cell(r.get("sampled_coverage"))
            + _pct(r.get("miou"), std.get("miou"))
            + _pct(r.get("miou_lc"), std.get("miou_lc"))
            + _pct(r.get("miou_whole_image"), std.get("miou_whole_image"))
            + _pct(r.get("miou_group_bound"), std.get("miou_group_bound"))
            + _pct(r.get("top1"), std.get("top1"))
            + "</tr>"
        )
    return "<table>" + head + "".join(body) + "</table>"


def _chips(chips: Sequence[Chip]) -> str:
    if not chips:
        return '<span class="note">(none)</span>'
    out = []
    for c in chips:
        css = c.css + (" sampled" if c.sampled else "")
        detail = f" <small>{_e(c.detail)}</small>" if c.detail else ""
        out.append(f'<span class="chip {css}">{_e(c.name)}{detail}</span>')
    return " ".join(out)


def _gallery(items: Sequence[GalleryItem]) -> str:
    cards = []
    for it in items:
        cards.append(
            f'<div class="card">{_img(it.image_png, it.key, 160)}<div class="txt">'
            f'<div class="cap">&ldquo;{_e(it.caption)}&rdquo;</div>'
            f'<div><span class="lbl">caption concepts:</span> {_chips(it.caption_concepts)}</div>'
            f'<div><span class="lbl">CoCu archive (score, cluster):</span> {_chips(it.curated)}</div>'
            f'<div><span class="lbl">true concepts (pixel share):</span> {_chips(it.truth)}</div>'
            f'<div class="note">{_e(it.key)}</div></div></div>'
        )
    return '<div class="gallery">' + "".join(cards) + "</div>"


def _overlays(items: Sequence[OverlayItem], legend: Sequence[tuple[str, tuple[int, int, int]]]) -> str:
    out = []
    for it in items:
        figs = [f"<figure>{_img(it.image_png, it.key, 192)}<figcaption>image</figcaption></figure>",
                f"<figure>{_img(it.truth_png, 'truth', 192)}<figcaption>true mask</figcaption></figure>"]
        for name, png in it.predictions.items():
            figs.append(f"<figure>{_img(png, name, 192)}<figcaption>{_e(name)}</figcaption></figure>")
        missing = ", ".join(it.unmentioned) if it.unmentioned else "nothing"
        caption = (f'<div class="note">{_e(it.key)}: &ldquo;{_e(it.caption)}&rdquo; &mdash; in the image but not '
                   f"in its caption: <b>{_e(missing)}</b></div>") if it.caption else ""
        out.append(f'{caption}<div class="ov">{"".join(figs)}</div>')
    keys = "".join(
        f'<span class="item"><span class="swatch" style="background:rgb({c[0]},{c[1]},{c[2]})"></span>{_e(n)}</span>'
        for n, c in legend
    )
    return "".join(out) + (f'<div class="legend">{keys}</div>' if keys else "")


def _class_iou(classes: Sequence[ClassIoU]) -> str:
    if not classes:
        return '<p class="note">No per-class IoU available.</p>'
    models = list(classes[0].iou)
    head = "<tr><th class=name>class</th><th class=name>kind</th>" + "".join(f"<th>{_e(m)}</th>" for m in models)
    rows = []
    for kind in ("stuff", "thing"):
        members = [c for c in classes if c.kind == kind]
        for c in members:
            rows.append(f"<tr><td class=name>{_e(c.name)}</td><td class=name>{_e(c.kind)}</td>"
                        + "".join(_pct(c.iou.get(m)) for m in models) + "</tr>")
        if members:
            means = []
            for m in models:
                vals = [c.iou[m] for c in members if c.iou.get(m) is not None]
                means.append(_pct(sum(vals) / len(vals) if vals else None))
            rows.append(f"<tr><th class=name>mean over {_e(kind)}</th><th></th>" + "".join(means) + "</tr>")
    return "<table>" + head + "</tr>" + "".join(rows) + "</table>"


def _frac(value: float | None) -> str:
    return '<td class="na">&mdash;</td>' if value is None else f"<td>{100 * value:.0f}%</td>"


def _budget_section(results: dict[str, Any], png: bytes | None) -> str:
    points = (results.get("budget_curve") or {}).get("points") or []
    if not points:
        return ""
    head = ("<tr><th class=name>row</th><th>budget</th><th>steps</th><th>seeds</th><th>mIoU</th>"
            "<th>mIoU whole-image</th><th>mIoU group bound</th><th>top-1</th><th>gap closed</th></tr>")
    body = "".join(
        f"<tr><td class=name>{_e(p['row'])}</td><td>{_e(p['budget'])}x</td><td>{_e(p['steps'])}</td>"
        f"<td>{_e(len(p['seeds']))}</td>"
        + "".join(_pct(p.get(k), (p.get("std") or {}).get(k))
                  for k in ("miou", "miou_whole_image", "miou_group_bound", "top1"))
        + _frac(p.get("gap_closed")) + "</tr>"
        for p in sorted(points, key=lambda p: (p["budget"], p["row"]))
    )
    fig = _img(png, "mIoU against training budget") if png else ""
    return ("<h2>Training budget: does the gain last?</h2><p class=note>Baseline, CoCu and the oracle trained at "
            "multiples of the GroupViT step count (same seeds); gap closed = (row - baseline) / (oracle - baseline) "
            f"on the mean mIoU at that budget.</p>{fig}<table>{head}{body}</table>")


def _concept_section(results: dict[str, Any], png: bytes | None) -> str:
    entries = results.get("per_concept") or []
    if not entries:
        return ""
    models = list(dict.fromkeys(m for e in entries for m in (e.get("iou") or {})))
    head = ("<tr><th class=name>class</th><th class=name>kind</th><th>images</th><th class=gt>caption mention "
            "rate</th><th>archive recall</th>" + "".join(f"<th>IoU {_e(m)}</th>" for m in models)
            + "<th>gain CoCu - baseline</th></tr>")
    ordered = sorted(entries, key=lambda e: (e.get("caption_mention_rate") is None, e.get("caption_mention_rate") or 0))
    body = "".join(
        f"<tr><td class=name>{_e(e['name'])}</td><td class=name>{_e(e.get('kind', '?'))}</td>"
        f"<td>{_e(e.get('images', 0))}</td>" + _gt_cell(e.get("caption_mention_rate")) + _pct(e.get("archive_recall"))
        + "".join(_pct((e.get("iou") or {}).get(m)) for m in models) + _pct(e.get("gain")) + "</tr>"
        for e in ordered
    )
    fig = _img(png, "IoU gain against caption mention rate") if png else ""
    return ("<h2>Where the gain comes from: per concept</h2><p class=note>Caption mention rate: the share of "
            "pretrain images holding the class whose caption names it. Archive recall: the share whose CoCu archive "
            "holds it. IoU on val, averaged over seeds.</p>" + _concept_summary_note(results) + fig
            + f"<table>{head}{body}</table>")


def _concept_summary_note(results: dict[str, Any]) -> str:
    """One line per kind: mean mention rate and gain (per seed too), then the gain/mention correlation."""
    summary = results.get("per_concept_summary") or {}

    def pts(v: float | None) -> str:
        return "&mdash;" if v is None else f"{100 * v:+.1f}"

    parts = []
    for kind, k in (summary.get("by_kind") or {}).items():
        seeds = ", ".join(f"seed {s} {pts(v)}" for s, v in (k.get("gain_per_seed") or {}).items())
        rate = k.get("mean_caption_mention_rate")
        parts.append(f"{_e(kind)} ({_e(k.get('classes'))} classes, mentioned "
                     f"{'&mdash;' if rate is None else f'{100 * rate:.0f} %'}): mean IoU gain {pts(k.get('mean_gain'))}"
                     + (f" ({seeds})" if seeds else ""))
    r = summary.get("gain_mention_correlation")
    if r is not None:
        parts.append(f"correlation of gain with mention rate r = {r:.2f}")
    return f"<p class=note>{'; '.join(parts)}.</p>" if parts else ""


def _strength_section(results: dict[str, Any], png: bytes | None) -> str:
    teachers = results.get("teacher_strength") or []
    if not teachers:
        return ""
    keys = (("recall", "archive recall"), ("precision", "archive precision"), ("top_l_recall", "top-L recall"),
            ("top_l_precision", "top-L precision"), ("sampled_recall", "sampled recall"),
            ("sampled_precision", "sampled precision"))
    head = ("<tr><th>teacher steps</th><th>teacher top-1</th><th class=name>row</th>"
            + "".join(f"<th>{_e(label)}</th>" for _, label in keys) + "</tr>")
    body = []
    for t in sorted(teachers, key=lambda t: t["steps"]):
        for name, stats in t["rows"].items():
            body.append(f"<tr><td>{_e(t['steps'])}{' (main)' if t.get('main') else ''}</td>" + _pct(t.get("top1"))
                        + f"<td class=name>{_e(name)}</td>" + "".join(_pct(stats.get(k)) for k, _ in keys) + "</tr>")
    fig = _img(png, "curation ablation against teacher strength") if png else ""
    return ("<h2>Teacher strength and the curation ablation</h2><p class=note>The same curation rows run with "
            "teacher CLIPs trained for different numbers of steps; recall and precision against the true concepts "
            "of the pretrain images, for the whole archive, its top-L concepts and the per-step samples.</p>"
            + fig + f"<table>{head}{''.join(body)}</table>")


def _settings_and_timings(results: dict[str, Any]) -> str:
    timings = results.get("timings", {})
    rows = "".join(
        f"<tr><td class=name>{_e(name)}</td><td>{t.get('seconds', 0):.1f}</td>"
        f"<td class=name>{'cached (time of the run that made it)' if t.get('cached') else 'ran now'}</td></tr>"
        for name, t in timings.items()
        if isinstance(t, dict)
    )
    table = "<table><tr><th class=name>stage</th><th>seconds</th><th class=name>status</th></tr>" + rows + "</table>"
    settings = json.dumps(results.get("settings", {}), indent=2, sort_keys=True)
    return table + _environments(results) + f"<pre>{_e(settings)}</pre>"


def _environments(results: dict[str, Any]) -> str:
    """Where the models were trained: one line per distinct environment, a warning when there are several."""
    groups = results.get("train_environments") or []
    if not groups:
        return ""

    def describe(env: dict[str, Any] | None) -> str:
        if not env:
            return "not recorded"
        return (f"{env.get('cpu')} ({env.get('cpu_capability')} kernels), device {env.get('device')}, "
                f"{env.get('threads')} thread(s), torch {env.get('torch')}, transformers {env.get('transformers')}")

    items = "".join(f"<li>{len(g['runs'])} run(s): {_e(describe(g['environment']))}</li>" for g in groups)
    warn = (" <b>The models were trained in different environments</b>: rows trained on different CPU kernels or "
            "versions differ by more than their configs." if len(groups) > 1 else "")
    return (f'<p class="note">Trained in (training is repeatable bit for bit only in the same environment; '
            f'<code>train_environments</code> in results.json lists the runs):{warn}</p><ul>{items}</ul>')


def render_report(data: ReportData) -> str:
    """The whole page as a string."""
    r = data.results
    seeds = r.get("settings", {}).get("seeds", [r.get("seed")])
    notes = "".join(f'<p class="note">{_e(n)}</p>' for n in data.notes)
    loss = (_img(data.loss_png, "training loss curves") if data.loss_png
            else '<p class="note">No training metrics found.</p>')
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>CoCu demo report</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{_CSS}</style></head>
<body>
<h1>CoCu in miniature: concept curation on a synthetic semantic-gap world</h1>
<p class="lead">Every image of this world is generated, so its true concepts (every stuff region and thing in it)
are known. Its captions, like web captions, name only some of them. A small CLIP trained on a separate split
plays the frozen foundation model; it curates the captions of the pretrain split (paper table 3 rows), and
GroupViT is pre-trained on each row's concepts with the same budget and seed, then evaluated zero-shot.
An <b>oracle</b> trained on the true concepts bounds what any curation can reach.
Seeds: {_e(", ".join(str(s) for s in seeds))}{" (quick smoke run: tiny budgets, no quality claim)"
    if r.get("settings", {}).get("quick") else ""}.</p>
{_headline(r)}
{notes}
<h2>Ablation (paper table 3, in miniature)</h2>
<p class="note"><b>GT recall</b> is the share of the true concepts of the pretrain images that the model is
trained on: a figure no real data set can give. "Concepts trained on" is the caption concepts (baseline), the
curated archive (rows #1-#4) or the truth (oracle); "sampled per step" is what the sampler actually feeds
one training step (L = {_e(r.get("settings", {}).get("num_labels", "?"))} labels). mIoU whole-image labels every
pixel with the image's best class; mIoU group bound labels each predicted group with its best true class.
Values in percent; &plusmn; is the standard deviation over seeds.</p>
{_ablation_table(r)}
<h2>Training loss: baseline vs. CoCu (paper figure 3a)</h2>
{loss}
<h2>Pretrain samples: what the captions say, what curation adds, what is really there</h2>
<p class="note"><span class="chip hit">green</span> a claimed concept that is really in the image,
<span class="chip false">struck</span> one that is not; among true concepts, <span class="chip found">green</span>
ones the archive recovered, <span class="chip missed">dashed</span> ones it missed. Bold archive concepts are
those the sampler picks for a training step.</p>
{_gallery(data.gallery)}
<h2>Zero-shot segmentation on val (paper figures 3b and 4)</h2>
<p class="note">Each val image, its true mask and each model's prediction painted over it (every pixel is
labelled with one of the world's classes; colours in the legend). Concepts the caption leaves out are the ones
a caption-trained model never hears about.</p>
{_overlays(data.overlays, data.legend)}
<h3>Per-class IoU: stuff vs. things</h3>
{_class_iou(data.class_iou)}
{_budget_section(r, data.budget_png)}
{_concept_section(r, data.concept_png)}
{_strength_section(r, data.strength_png)}
<h2>Settings and timings</h2>
{_settings_and_timings(r)}
</body></html>
"""
