"""How an evaluation reads: the metric table printed by eval.py and its index.html."""
import html
import json
import os
from typing import Any, Dict

from iiae_jax.evaluation import grids

# How the metrics are defined (docs/method.md §5), for the report's legend.
METRIC_LEGEND = {
    "map_all": "mean average precision over the whole ranked gallery",
    "precision@K": "fraction of relevant photos among the top K",
    "map@K": "mAP@K, usual definition: sum of prec_i rel_i over the top K / relevant items in the top K",
    "map@K_reference": "mAP@K as the reference release computes it: sum of prec_i rel_i over the top K / K",
    "shared_x_to_y": "paired retrieval accuracy (fraction) by the shared means r^x(z_s|x) -> r^y(z_s|y)",
    "exclusive_x_to_y": "paired retrieval accuracy by the exclusive means q(z_x|x) -> q(z_y|y); near chance is good",
}


def _fmt(value) -> str:
  if value is None:
    return "nan"
  if isinstance(value, float):
    return f"{value:.4f}"
  return str(value)


def format_table(results: Dict[str, Any]) -> str:
  """A plain-text table of the metrics, under one header line."""
  ck = results["checkpoint"]
  which = f"step {ck['step']}" if ck["kind"] == "step" else f"{ck['kind']} step {ck['step']}"
  lines = [f"{results['config']['name']}  checkpoint {which}  ({ck['path']})"]
  width = max([len(k) for k in results["metrics"]] + [6])
  lines += [f"  {k:<{width}}  {_fmt(v)}" for k, v in results["metrics"].items()]
  return "\n".join(lines)


def render_html(results: Dict[str, Any]) -> str:
  """index.html: the run, the metric table and every image grid with its caption."""
  e = html.escape
  ck = results["checkpoint"]
  rows = "\n".join(f"<tr><td>{e(k)}</td><td>{e(_fmt(v))}</td></tr>" for k, v in results["metrics"].items())
  data_rows = "\n".join(f"<tr><td>{e(s)}</td><td>{e(json.dumps(d))}</td></tr>"
                        for s, d in results["datasets"].items())
  legend = "\n".join(f"<li><code>{e(k)}</code>: {e(v)}</li>" for k, v in METRIC_LEGEND.items())
  figures = []
  for path in results["artifacts"]:
    stem = os.path.splitext(os.path.basename(path))[0]
    caption = grids.GRID_DESCRIPTIONS.get(stem, "")
    figures.append(f'<figure><figcaption><b>{e(path)}</b> {e(caption)}</figcaption>'
                   f'<img src="{e(path)}" alt="{e(stem)}" style="image-rendering: pixelated; '
                   f'max-width: 100%"></figure>')
  note = f"<p><i>{e(ck['note'])}</i></p>" if ck.get("note") else ""
  return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>IIAE evaluation: {e(str(results['config']['name']))}</title>
<style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse}}
td{{border:1px solid #ccc;padding:2px 8px}} figure{{margin:1.5em 0}}</style></head>
<body>
<h1>IIAE evaluation</h1>
<p>Config <code>{e(str(results['config']['name']))}</code>, dataset <code>{e(str(results['config']['dataset']))}</code>;
checkpoint <code>{e(str(ck['path']))}</code> ({e(ck['kind'])}, step {e(str(ck['step']))}); {e(results['date'])}.</p>
{note}
<h2>Metrics</h2>
<table>
<tr><th>metric</th><th>value</th></tr>
{rows}
</table>
<ul>{legend}</ul>
<h2>Datasets</h2>
<table>{data_rows}</table>
<h2>Images</h2>
{''.join(figures) if figures else '<p>No images.</p>'}
</body></html>
"""
