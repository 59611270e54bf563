"""index.html for the output folders of `explain` and `evaluate`: a static page a person opens in a browser, no
server, no script; pictures are linked by their paths relative to the folder."""

from __future__ import annotations

import html
import math
from collections.abc import Callable
from pathlib import Path

INDEX = "index.html"
STYLE = """body{font-family:sans-serif;margin:1.5em;color:#222}h1{font-size:1.4em}
h2{font-size:1.05em;margin:1.4em 0 .3em}.grid{display:flex;flex-wrap:wrap;gap:10px}figure{margin:0;width:220px}
figure img{width:220px;height:auto;border:1px solid #ccc}figcaption{font-size:.8em;color:#444}
p.caption{margin:.2em 0 .5em;font-size:.9em}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}td:first-child,
td:nth-child(2),th{text-align:left}.failed{color:#a00}"""


def _page(title: str, body: list[str]) -> str:
    return (f"<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head>\n<body>\n<h1>{html.escape(title)}</h1>\n" + "\n".join(body)
            + "\n</body></html>\n")


def _caption(row: dict) -> str:
    """What was explained in one image: its top classes, its detections or its class regions."""
    if "detections" in row:
        found = [f"{d['label']} {d['score']:.2f}" for d in row["detections"]]
        return "detections: " + (", ".join(found) if found else "none above the threshold")
    if "region_share" in row:
        return "classes: " + ", ".join(f"{label} ({share:.0%} of the pixels)" for label, share
                                       in zip(row["explained_labels"], row["region_share"]) if label)
    top = ", ".join(f"{t['label'].split(',')[0]} {t['score']:.3f}" for t in row["top"])
    return f"explained: {' | '.join(row['explained_labels'])}; top classes: {top}"


def explain_index(outdir: Path, title: str, rows: list[dict], failed: list[dict]) -> Path:
    """One section per image: what was explained, and a thumbnail of every picture written for it (each overlay per
    layer, class or detection, and the sheet of all), each linked to the full picture."""
    body = []
    for row in rows:
        figures = "".join(
            f"<figure><a href=\"{html.escape(p['file'])}\"><img loading=\"lazy\" src=\"{html.escape(p['file'])}\" "
            f"alt=\"{html.escape(p['title'])}\"></a><figcaption>{html.escape(p['title'])}</figcaption></figure>"
            for p in row.get("pictures", []) if p["title"] != "all")
        sheet = next((p["file"] for p in row.get("pictures", []) if p["title"] == "all"), None)
        name = html.escape(Path(row["image"]).name)
        heading = f"<a href=\"{html.escape(sheet)}\">{name}</a>" if sheet else name
        body.append(f"<h2>{heading}</h2>\n<p class=\"caption\">{html.escape(_caption(row))}</p>\n"
                    f"<div class=\"grid\">{figures}</div>")
    if failed:
        body.append("<h2 class=\"failed\">Not explained</h2><ul>" + "".join(
            f"<li>{html.escape(f['image'])}: {html.escape(f['error'])}</li>" for f in failed) + "</ul>")
    target = outdir / INDEX
    target.write_text(_page(title, body))
    return target


def evaluate_index(outdir: Path, title: str, rows: list[dict], columns: dict[str, tuple[str, str]],
                   notes: list[str], plot: str | None, cell: Callable[[dict, str], str]) -> Path:
    """The metrics table (columns: key -> (title, which is better); cell(row, key): the text of a value) and the
    plot of each metric against depth."""
    shown = [c for c in columns if not all(isinstance(r.get(c), float) and math.isnan(r[c]) for r in rows)]
    head = "".join(f"<th>{html.escape(columns[c][0])}<br>({columns[c][1]} is better)</th>" for c in shown)
    lines = []
    for r in rows:
        cells = "".join(f"<td>{html.escape(cell(r, c))}</td>" for c in shown)
        lines.append(f"<tr><td>{html.escape(r['method'])}</td><td><code>{html.escape(r['layer'])}</code></td>"
                     f"{cells}</tr>")
    body = [f"<table><tr><th>method</th><th>layer</th>{head}</tr>{''.join(lines)}</table>"]
    body += [f"<p>{html.escape(note)}</p>" for note in notes if note]
    if plot:
        body.append(f"<p><img src=\"{html.escape(plot)}\" alt=\"each metric against depth\"></p>")
    target = outdir / INDEX
    target.write_text(_page(title, body))
    return target
