"""Where the time of a compiled XLA:CPU program goes, from a profiler trace.

`analyse(hlo_text, events)` is pure: it reads the optimised HLO (which ops
exist, what they depend on, which part of the step each belongs to) and the
trace's per-op events (XLA:CPU records one event per executed op, named after
its HLO instruction) and returns per-step figures:

  span            first to last op event, divided by the number of steps
  op_ms           op time summed over all threads
  thread_busy_ms  per thread that ran ops, time in which it ran one
  critical_ms     the longest dependency chain through one step (op times
                  on the path summed): no schedule on any number of threads
                  can run the step faster than this
  critical_path   its ops: (instruction, ms, name scope)
  by_part         op time per part of the step (forward, backward, optimiser
                  update, ...), from the ops' name scopes
  by_kind         op time per kind: products (dots, convolutions), reductions,
                  other (elementwise, copies, loops)
  by_layer        forward and backward op time per layer of the model (its
                  module path in the name scope, e.g. IIAE/decoder_x/PreNorm_1/
                  ConvTranspose_0), largest first

`trace_events(run, calls)` records the events of a program's calls under
`jax.profiler.trace`. benchmarks/profile_step.py
prints the analysis of the trainer's call.
"""
import collections
import functools
import glob
import re
import tempfile
from typing import Dict, Iterable, List, NamedTuple, Tuple

# Parts of a training step, by the name scope of the op (first match wins).
# `train_state.train_step` opens the scopes named here.
PARTS = (
    ("input batch", ("input_batch",)),
    ("optimiser update", ("optimizer_update",)),
    ("gradient norm, fault checks", ("grad_norm", "fault_checks")),
    ("random numbers", ("threefry", "random_bits", "_normal", "_uniform", "randint", "bernoulli")),
    ("backward", ("transpose(",)),
    ("forward", ("jvp(",)),
)
OTHER = "other (loop, copies)"
CONTAINERS = ("while", "call", "conditional")  # their events span the ops inside them


class Event(NamedTuple):
  thread: str
  name: str
  start_ns: int
  duration_ns: int


class Instruction(NamedTuple):
  name: str
  opcode: str
  operands: Tuple[str, ...]
  computation: str
  called: Tuple[str, ...]  # computations it calls (fusion body, loop body and condition)
  op_name: str


def _operands(text: str, start: int) -> Tuple[str, ...]:
  """%names inside the parenthesis that opens at text[start]."""
  depth, i = 0, start
  while i < len(text):
    depth += {"(": 1, ")": -1}.get(text[i], 0)
    if depth == 0:
      break
    i += 1
  return tuple(re.findall(r"%([\w.-]+)", text[start:i]))


def parse_hlo(hlo_text: str) -> Tuple[Dict[str, Instruction], Dict[str, List[str]], str]:
  """(instructions by name, instruction names per computation, entry computation)."""
  instructions, computations, entry, current = {}, {}, "", None
  for line in hlo_text.splitlines():
    header = re.match(r"^(ENTRY )?%?([\w.-]+) .*\{\s*$", line)
    if header and not line.startswith(" "):
      current = header.group(2)
      computations[current] = []
      entry = current if header.group(1) else entry
      continue
    m = re.match(r"^\s+(?:ROOT )?%([\w.-]+) = (.*)$", line)
    if not m or current is None:
      continue
    name, rest = m.groups()
    op = re.search(r"(?:^|\s)([a-z][\w-]*)\(", rest)
    if not op:
      continue
    called = tuple(re.findall(r"(?:calls|body|condition|to_apply)=%([\w.-]+)", rest))
    op_name = re.search(r'op_name="([^"]*)"', rest)
    instructions[name] = Instruction(name, op.group(1), _operands(rest, op.end(1)), current, called,
                                     op_name.group(1) if op_name else "")
    computations[current].append(name)
  return instructions, computations, entry


def part_of(op_name: str) -> str:
  for part, markers in PARTS:
    if any(marker in op_name for marker in markers):
      return part
  return OTHER


def layer_of(op_name: str) -> str:
  """The model's module path in a name scope ('' outside the model's forward and backward pass).

  'jit(f)/transpose(jvp(IIAE))/decoder_x/PreNorm_1/ConvTranspose_0/jit(_pad)/pad' ->
  'IIAE/decoder_x/PreNorm_1/ConvTranspose_0': the op's own name and any function
  scopes (jit(...), vmap(...)) inside the layer are dropped.
  """
  match = re.search(r"jvp\(([\w.-]+)\)\)?/(.*)$", op_name)
  if not match:
    return ""
  path = [match.group(1)]
  for segment in match.group(2).split("/")[:-1]:
    if "(" in segment:
      break
    path.append(segment)
  return "/".join(path)


def kind_of(instruction: Instruction, instructions, computations) -> str:
  opcodes = {instruction.opcode}
  if instruction.opcode == "fusion":
    for called in instruction.called:
      opcodes |= {instructions[n].opcode for n in computations.get(called, ())}
  if opcodes & {"dot", "convolution"}:
    return "products"
  if opcodes & {"reduce", "reduce-window"}:
    return "reductions"
  return "other"


def _union_ns(intervals: Iterable[Tuple[int, int]]) -> int:
  total, end = 0, None
  for s, e in sorted(intervals):
    if end is None or s > end:
      total, end = total + e - s, e
    elif e > end:
      total, end = total + e - end, e
  return total


def analyse(hlo_text: str, events: Iterable[Event]) -> Dict:
  """Per-step figures (ms) of a traced program; see the module docstring."""
  instructions, computations, entry = parse_hlo(hlo_text)
  own_ns, count = collections.Counter(), collections.Counter()
  leaf_intervals = collections.defaultdict(list)
  for ev in events:
    name = ev.name[len("end: "):] if ev.name.startswith("end: ") else ev.name
    if name not in instructions:
      continue
    own_ns[name] += ev.duration_ns
    count[name] += not ev.name.startswith("end: ")
    if instructions[name].opcode not in CONTAINERS:
      leaf_intervals[ev.thread].append((ev.start_ns, ev.start_ns + ev.duration_ns))
  if not own_ns:
    raise ValueError("no event of the trace names an instruction of the HLO: not an XLA:CPU trace "
                     "of this program?")
  # The step: the computation (entry or a loop body) whose own ops take the most time.
  leaf_ns = lambda comp: sum(own_ns[n] for n in computations[comp]
                             if instructions[n].opcode not in CONTAINERS)
  loops = {c for ins in instructions.values() if ins.opcode == "while" for c in ins.called}
  step = max((c for c in computations if c == entry or c in loops), key=leaf_ns)
  steps = max(count[n] for n in computations[step])
  per_step = lambda ns: ns / steps / 1e6

  users = collections.defaultdict(list)
  for ins in instructions.values():
    for operand in ins.operands:
      users[operand].append(ins.name)

  is_product = lambda n: kind_of(instructions[n], instructions, computations) == "products"

  def backward_input_scope(name):
    """'<model's backward scope>/unscoped_products/<op>' when an unscoped product reads a value of
    the backward pass (through unscoped inputs); '' otherwise. Which layer it belongs to is lost."""
    frontier, seen = list(instructions[name].operands), set()
    while frontier:
      n = frontier.pop(0)
      if n in seen or n not in instructions:
        continue
      seen.add(n)
      if instructions[n].op_name:
        match = re.match(r".*?transpose\(jvp\([\w.-]+\)\)", instructions[n].op_name)
        if match:
          return f"{match.group(0)}/unscoped_products/{instructions[name].opcode}"
      else:
        frontier += instructions[n].operands
    return ""

  @functools.lru_cache(maxsize=None)
  def scope(name):
    """The op's name scope. Ops that XLA made without one take their nearest user's (e.g.
    the halves of a split reduction), except products that read a backward-pass value (XLA's
    rewrites of the kernel gradients of convolutions, whose user is the optimiser update): they
    are backward ops of no known layer."""
    if instructions[name].op_name:
      return instructions[name].op_name
    if is_product(name) and backward_input_scope(name):
      return backward_input_scope(name)
    frontier, seen = list(users[name]), set()
    while frontier:
      n = frontier.pop(0)
      if n in seen:
        continue
      seen.add(n)
      if instructions[n].op_name or is_product(n):
        found = scope(n)
        if found:
          return found
      frontier += users[n]
    return ""

  by_part, by_kind, by_layer = collections.Counter(), collections.Counter(), collections.Counter()
  for name, ns in own_ns.items():
    ins = instructions[name]
    if ins.opcode in CONTAINERS:
      continue
    op_scope = scope(name)
    part = part_of(op_scope)
    by_part[part] += ns
    by_kind[kind_of(ins, instructions, computations)] += ns
    if part in ("forward", "backward") and layer_of(op_scope):
      by_layer[(layer_of(op_scope), part)] += ns

  finish, pred = {}, {}
  for name in computations[step]:  # HLO text lists operands before their users
    ready = max(((finish.get(o, 0.0), o) for o in instructions[name].operands), default=(0.0, None))
    finish[name] = ready[0] + own_ns[name] / steps
    pred[name] = ready[1]
  chain, name = [], max(finish, key=finish.get)
  while name is not None:
    chain.append(name)
    name = pred[name]

  span_ns = (max(e for iv in leaf_intervals.values() for _, e in iv)
             - min(s for iv in leaf_intervals.values() for s, _ in iv))
  busy_ns = {thread: _union_ns(iv) for thread, iv in leaf_intervals.items()}
  return dict(
      steps=steps,
      span_ms=per_step(span_ns),
      op_ms=per_step(sum(by_part.values())),
      # Threads that ran ops for at least 1% of the span (not the caller's, which runs a few).
      thread_busy_ms={t: per_step(ns) for t, ns in busy_ns.items() if ns >= 0.01 * span_ns},
      critical_ms=finish[chain[0]] / 1e6,
      critical_path=[(n, own_ns[n] / steps / 1e6, scope(n)) for n in reversed(chain) if own_ns[n]],
      by_part={k: per_step(v) for k, v in by_part.most_common()},
      by_kind={k: per_step(v) for k, v in by_kind.most_common()},
      by_layer={k: per_step(v) for k, v in by_layer.most_common()},
  )


def trace_events(run, calls: int) -> List[Event]:
  """The op events of `calls` calls of `run()` (after one untraced call) under the profiler.

  `run` performs one call of the program and returns its outputs (it carries
  any state itself).
  """
  import jax  # pylint: disable=g-import-not-at-top
  from jax.profiler import ProfileData  # pylint: disable=g-import-not-at-top
  jax.block_until_ready(run())
  with tempfile.TemporaryDirectory() as trace_dir:
    with jax.profiler.trace(trace_dir):
      out = [run() for _ in range(calls)]
      jax.block_until_ready(out)
    data = ProfileData.from_file(glob.glob(f"{trace_dir}/**/*.xplane.pb", recursive=True)[0])
  return [Event(line.name, ev.name, ev.start_ns, ev.duration_ns)
          for plane in data.planes for line in plane.lines for ev in line.events]
