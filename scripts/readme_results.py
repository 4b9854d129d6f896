"""The README's results of a run, written from its results.json (never copied by hand).

  python scripts/readme_results.py runs/digits_cdcb/eval_latest_2000/results.json --name digits_cdcb

copies results.json to docs/results/<name>.json and rewrites the README block between
`<!-- results:<name> -->` and `<!-- /results:<name> -->` with the tables of `tables()`:
paired retrieval (shared and exclusive), zero-shot retrieval, and the whole probe matrix
(every factor from every latent, beside chance), with a line for each factor that a latent
reads although it should not (the shared latent reading one domain's own factor).
tests/test_readme.py checks that the README holds what this prints for the committed json.
"""
import argparse
import json
import os
import re
import shutil
from typing import Any, Dict, List

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LATENTS = {"z_s_x": "z_s (mean of r^x)", "z_s_y": "z_s (mean of r^y)", "z_x": "z_x", "z_y": "z_y"}
# A factor of one domain read from the shared latent this far above chance is reported as a leak.
LEAK_MARGIN = 0.10


def _entries(metrics: Dict[str, Any]) -> Dict[tuple, Dict[str, Any]]:
  """{(split, entry): {metric: value}} from results.json's "split/entry/metric" keys."""
  out: Dict[tuple, Dict[str, Any]] = {}
  for key, value in metrics.items():
    split, entry, metric = key.split("/", 2)
    out.setdefault((split, entry), {})[metric] = value
  return out


def _percent(fraction: float) -> str:
  return f"{100 * fraction:.1f}%"


def _paired(split: str, m: Dict[str, Any]) -> List[str]:
  n = m["num_pairs"]
  return [f"Paired retrieval on {split} ({n} pairs; chance {_percent(m['chance'])}):", "",
          "| nearest neighbour by | X → Y | Y → X |", "|---|---|---|",
          f"| shared means (r^x vs r^y z_s) | **{_percent(m['shared_x_to_y'])}** | "
          f"**{_percent(m['shared_y_to_x'])}** |",
          f"| exclusive means (q z_x vs q z_y) | {_percent(m['exclusive_x_to_y'])} "
          f"({_hits(m['exclusive_x_to_y_hits'])}) | {_percent(m['exclusive_y_to_x'])} "
          f"({_hits(m['exclusive_y_to_x_hits'])}) |", ""]


def _hits(count: int) -> str:
  return f"{count} hit" if count == 1 else f"{count} hits"


def _zero_shot(split: str, entry: str, m: Dict[str, Any]) -> List[str]:
  ks = sorted(int(k.split("@")[1]) for k in m if k.startswith("precision@"))
  head = ["mAP@all"] + [f"P@{k}" for k in ks] + [f"mAP@{k}" for k in ks]
  values = [m["map_all"]] + [m[f"precision@{k}"] for k in ks] + [m[f"map@{k}"] for k in ks]
  return [f"Zero-shot retrieval `{entry}` on {split} ({m['num_queries']} queries):", "",
          "| " + " | ".join(head) + " |", "|" + "---|" * len(head),
          "| " + " | ".join(f"{v:.3f}" for v in values) + " |", ""]


def _probes(split: str, m: Dict[str, Any]) -> List[str]:
  latents = [z for z in LATENTS if any(k.startswith(z + "/") for k in m)]
  factors = list(dict.fromkeys(k.split("/")[1] for k in m if not k.endswith("_chance")))
  lines = [f"Linear probes scored on {split}: each factor predicted from each latent "
           "(accuracy; chance = the most frequent value):", "",
           "| factor | " + " | ".join(f"from {LATENTS[z]}" for z in latents) + " | chance |",
           "|---|" + "---|" * (len(latents) + 1)]
  for f in factors:
    cells = [f"{m[f'{z}/{f}']:.2f}" for z in latents]
    lines.append(f"| {f} | " + " | ".join(cells) + f" | {m[f'{latents[0]}/{f}_chance']:.2f} |")
  lines.append("")
  for f in factors:
    own = "x" if f.startswith("x_") else "y" if f.startswith("y_") else None
    chance = m[f"{latents[0]}/{f}_chance"]
    for z in ("z_s_x", "z_s_y"):
      if own and z in latents and m[f"{z}/{f}"] > chance + LEAK_MARGIN:
        lines.append(f"- {f}, a factor of domain {own.upper()} alone, is read from {LATENTS[z]} at "
                     f"{m[f'{z}/{f}']:.2f} (chance {chance:.2f}; from z_{own} {m[f'z_{own}/{f}']:.2f}): "
                     "the shared latent is not free of it.")
  return lines + ([""] if lines[-1] != "" else [])


def tables(results: Dict[str, Any]) -> str:
  """Markdown of every metric table of a results.json."""
  lines: List[str] = []
  entries = _entries(results["metrics"]).items()
  for (split, entry), m in entries:      # retrieval first, then the probes
    if "shared_x_to_y" in m:
      lines += _paired(split, m)
    elif "map_all" in m:
      lines += _zero_shot(split, entry, m)
  for (split, entry), m in entries:
    if "shared_x_to_y" not in m and "map_all" not in m and any(k.endswith("_chance") for k in m):
      lines += _probes(split, m)
  ck = results["checkpoint"]
  lines.append(f"(`{results['config']['name']}`, checkpoint step {ck['step']}, evaluated {results['date']})")
  return "\n".join(lines)


def block_pattern(name: str) -> "re.Pattern":
  return re.compile(rf"(<!-- results:{re.escape(name)} -->\n)(.*?)(<!-- /results:{re.escape(name)} -->)", re.S)


def update_readme(readme: str, name: str, text: str) -> str:
  pattern = block_pattern(name)
  if not pattern.search(readme):
    raise SystemExit(f"README has no <!-- results:{name} --> ... <!-- /results:{name} --> block")
  return pattern.sub(lambda m: m.group(1) + text + "\n" + m.group(3), readme)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("results", help="a run's results.json (eval.py writes it)")
  parser.add_argument("--name", required=True, help="the README block and docs/results/<name>.json")
  parser.add_argument("--readme", default=os.path.join(ROOT, "README.md"))
  args = parser.parse_args()
  with open(args.results) as f:
    results = json.load(f)
  kept = os.path.join(ROOT, "docs", "results", f"{args.name}.json")
  os.makedirs(os.path.dirname(kept), exist_ok=True)
  if os.path.abspath(args.results) != kept:
    shutil.copy(args.results, kept)
  with open(args.readme) as f:
    readme = f.read()
  with open(args.readme, "w") as f:
    f.write(update_readme(readme, args.name, tables(results)))
  print(f"wrote {kept} and the {args.name} block of {args.readme}")


if __name__ == "__main__":
  main()
