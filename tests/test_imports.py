"""Pins the package's import graph: a tree (no cycles), imports at the top of each module, and no
TensorFlow behind `import iiae_jax`."""
import ast
import os
import sys

from tests.helpers import ROOT, run

PACKAGE = os.path.join(ROOT, "iiae_jax")
# Imported inside functions on purpose: optional dependencies (pyproject's extras) and the
# modules that need them.
OPTIONAL = ("tensorflow", "tensorflow_datasets", "h5py", "grain", "array_record",
            "iiae_jax.data.tfds_builders")


def _modules():
  out = {}
  for folder, _, files in os.walk(PACKAGE):
    for name in files:
      if name.endswith(".py"):
        path = os.path.join(folder, name)
        module = os.path.relpath(path[:-3], ROOT).replace(os.sep, ".")
        out[module[:-len(".__init__")] if module.endswith(".__init__") else module] = path
  return out


def _imports(path):
  """(imported module names, is the import at the module's top level, line) of a file."""
  tree = ast.parse(open(path).read())
  top = {id(node) for node in tree.body}
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      yield [a.name for a in node.names], id(node) in top, node.lineno
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      yield [node.module] + [f"{node.module}.{a.name}" for a in node.names], id(node) in top, node.lineno


def import_graph():
  """{module: modules of the package it imports}, with the packages whose __init__ Python runs on
  the way (importing a.b.c runs a.b's __init__ too)."""
  modules = _modules()

  def resolve(name):
    while name and name not in modules:
      name = name.rpartition(".")[0]
    return name
  graph = {m: set() for m in modules}
  for module, path in modules.items():
    for names, _, _ in _imports(path):
      targets = {resolve(n) for n in names[1:] if n in modules} or {resolve(names[0])}
      for target in targets:
        while target and target != module and not module.startswith(target + "."):
          graph[module].add(target)
          target = target.rpartition(".")[0]
  return graph


def _cycles(graph):
  """The groups of modules that import each other (strongly connected, of size > 1)."""
  index, low, stack, on_stack, groups = {}, {}, [], set(), []

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in sorted(graph[v]):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      group = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        group.append(w)
        if w == v:
          break
      if len(group) > 1:
        groups.append(sorted(group))
  for v in sorted(graph):
    if v not in index:
      visit(v)
  return groups


def test_the_import_graph_has_no_cycles():
  assert _cycles(import_graph()) == []


def test_the_cycle_finder_finds_a_cycle():
  assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_imports_stand_at_the_top_except_optional_dependencies():
  deferred = []
  for module, path in _modules().items():
    for names, at_top, line in _imports(path):
      if not at_top and not any(names[0] == o or names[0].startswith(o + ".") for o in OPTIONAL):
        deferred.append(f"{os.path.relpath(path, ROOT)}:{line} imports {names[0]}")
  assert deferred == []


def test_importing_the_package_imports_no_tensorflow():
  code = ("import sys, iiae_jax, iiae_jax.trainer, iiae_jax.evaluate, iiae_jax.recipes, iiae_jax.convert\n"
          "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'tensorflow_datasets')))")
  out = run([sys.executable, "-c", code], cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT))
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.strip().splitlines()[-1] == "[]"
