"""benchmarks/step_trace.py: the per-step attribution of an XLA:CPU profile."""
import jax
import jax.numpy as jnp
import pytest

from benchmarks import step_trace
from benchmarks.step_trace import Event

# A loop whose body runs a product (forward), its gradient (backward), an
# optimiser update and, independent of those, an exponential (forward), plus a
# reduction that XLA made without a name scope and that only the update uses.
HLO = """
HloModule toy

%fused_dot (p0: f32[4,4], p1: f32[4,4]) -> f32[4,4] {
  %p0 = f32[4,4]{1,0} parameter(0)
  %p1 = f32[4,4]{1,0} parameter(1)
  ROOT %dot.1 = f32[4,4]{1,0} dot(%p0, %p1), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}

%fused_mul (p0.1: f32[4,4]) -> f32[4,4] {
  %p0.1 = f32[4,4]{1,0} parameter(0)
  ROOT %mul.1 = f32[4,4]{1,0} multiply(%p0.1, %p0.1)
}

%fused_sum (p0.2: f32[4,4], p1.2: f32[]) -> f32[] {
  %p0.2 = f32[4,4]{1,0} parameter(0)
  %p1.2 = f32[] parameter(1)
  ROOT %reduce.1 = f32[] reduce(%p0.2, %p1.2), dimensions={0,1}, to_apply=%add
}

%body (arg: (s32[], f32[4,4])) -> (s32[], f32[4,4]) {
  %arg = (s32[], /*index=1*/f32[4,4]{1,0}) parameter(0)
  %a = f32[4,4]{1,0} get-tuple-element(%arg), index=1
  %prod = f32[4,4]{1,0} fusion(%a, %a), kind=kCustom, calls=%fused_dot, metadata={op_name="jit(f)/while/body/jvp(M)/dot_general"}
  %grad = f32[4,4]{1,0} fusion(%prod), kind=kLoop, calls=%fused_mul, metadata={op_name="jit(f)/while/body/transpose(jvp(M))/mul"}
  %zero = f32[] constant(0)
  %norm = f32[] fusion(%grad, %zero), kind=kCustom, calls=%fused_sum
  %upd = f32[4,4]{1,0} add(%a, %grad, %norm), metadata={op_name="jit(f)/while/body/optimizer_update/add"}
  %side = f32[4,4]{1,0} exponential(%a), metadata={op_name="jit(f)/while/body/jvp(M)/exp"}
  %i = s32[] get-tuple-element(%arg), index=0
  ROOT %out = (s32[], f32[4,4]{1,0}) tuple(%i, %upd)
}

%cond (arg.1: (s32[], f32[4,4])) -> pred[] {
  %arg.1 = (s32[], f32[4,4]{1,0}) parameter(0)
  %j = s32[] get-tuple-element(%arg.1), index=0
  %n = s32[] constant(2)
  ROOT %lt = pred[] compare(%j, %n), direction=LT
}

ENTRY %main (x: f32[4,4]) -> (s32[], f32[4,4]) {
  %x = f32[4,4]{1,0} parameter(0)
  %c = s32[] constant(0)
  %init = (s32[], f32[4,4]{1,0}) tuple(%c, %x)
  ROOT %while.1 = (s32[], f32[4,4]{1,0}) while(%init), condition=%cond, body=%body
}
"""

MS = 1_000_000


def toy_events():
  """Two steps; ms durations: prod 3, grad 2, norm 0.5, upd 1 on thread A, side 4 on thread B."""
  events = [Event("A", "while.1", 0, 20 * MS)]  # the loop's own event spans both steps
  for step, t in enumerate((0, 10 * MS)):
    events += [Event("A", "prod", t, 3 * MS), Event("A", "grad", t + 3 * MS, 2 * MS),
               Event("A", "norm", t + 5 * MS, MS // 2), Event("A", "upd", t + 6 * MS, MS),
               Event("B", "side", t, 4 * MS), Event("B", "ThunkExecutor::Execute", t, 9 * MS)]
  return events


def test_parse_hlo_reads_operands_called_computations_and_scopes():
  instructions, computations, entry = step_trace.parse_hlo(HLO)
  assert entry == "main"
  assert computations["body"] == ["arg", "a", "prod", "grad", "zero", "norm", "upd", "side", "i", "out"]
  assert instructions["upd"].operands == ("a", "grad", "norm")
  assert instructions["while.1"].opcode == "while"
  assert set(instructions["while.1"].called) == {"cond", "body"}
  assert instructions["prod"].called == ("fused_dot",)
  assert instructions["side"].op_name == "jit(f)/while/body/jvp(M)/exp"
  assert instructions["norm"].op_name == ""


def test_analyse_attributes_time_per_step():
  a = step_trace.analyse(HLO, toy_events())
  assert a["steps"] == 2
  assert a["op_ms"] == pytest.approx(10.5)                  # 3 + 2 + 0.5 + 1 + 4; the loop event is not an op
  assert a["span_ms"] == pytest.approx(8.5)                  # 0 .. 17 ms over two steps
  assert a["thread_busy_ms"] == pytest.approx({"A": 6.5, "B": 4.0})
  # prod -> grad -> norm -> upd is the longest chain; side runs beside it.
  assert a["critical_ms"] == pytest.approx(6.5)
  assert [name for name, _, _ in a["critical_path"]] == ["prod", "grad", "norm", "upd"]
  assert a["critical_path"][2] == ("norm", 0.5, "jit(f)/while/body/optimizer_update/add")
  # The unscoped reduction takes its user's scope (the optimiser update).
  assert a["by_part"] == pytest.approx({"forward": 7.0, "backward": 2.0, "optimiser update": 1.5})
  assert a["by_kind"] == pytest.approx({"products": 3.0, "reductions": 0.5, "other": 7.0})
  # Per layer: the model M's own ops, forward and backward; the update is no layer.
  assert a["by_layer"] == pytest.approx({("M", "forward"): 7.0, ("M", "backward"): 2.0})


def test_layer_of_keeps_the_module_path_and_drops_function_scopes():
  assert (step_trace.layer_of("jit(f)/transpose(jvp(IIAE))/decoder_x/PreNorm_1/ConvTranspose_0/jit(_pad)/pad")
          == "IIAE/decoder_x/PreNorm_1/ConvTranspose_0")
  assert step_trace.layer_of("jit(f)/jvp(IIAE)/shared_encoder_y/ConvStack_0/Conv_0/conv_general_dilated") == \
      "IIAE/shared_encoder_y/ConvStack_0/Conv_0"
  assert step_trace.layer_of("jit(f)/jvp(M)/exp") == "M"
  assert step_trace.layer_of("jit(f)/optimizer_update/add") == ""


def test_analyse_refuses_a_trace_of_another_program():
  with pytest.raises(ValueError, match="no event of the trace names an instruction"):
    step_trace.analyse(HLO, [Event("A", "fusion.99", 0, MS)])


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="reads XLA:CPU op events")
def test_a_real_trace_of_a_scanned_program():
  def program(w, xs):
    def body(w, x):
      h = jnp.tanh(x @ w)
      with jax.named_scope("optimizer_update"):
        w = w - 1e-3 * (x.T @ h)
      return w, jnp.sum(h)
    return jax.lax.scan(body, w, xs)

  w = jnp.ones((64, 64)) / 64
  xs = jnp.ones((5, 32, 64))
  compiled = jax.jit(program).lower(w, xs).compile()
  a = step_trace.analyse(compiled.as_text(), step_trace.trace_events(lambda: compiled(w, xs), calls=2))
  assert a["steps"] == 10                                   # 5 loop iterations x 2 calls
  assert a["by_kind"]["products"] > 0
  assert a["by_part"]["optimiser update"] > 0
  assert 0 < a["critical_ms"] <= a["op_ms"] + 1e-9


# A kernel gradient as XLA:CPU rewrites it: a product without a name scope, reading a
# transposed activation (also unscoped) and a backward-pass value, used by the update.
KERNEL_GRADIENT_HLO = """
HloModule toy2

%fused_product (p0: f32[4,4], p1: f32[4,4]) -> f32[4,4] {
  %p0 = f32[4,4]{1,0} parameter(0)
  %p1 = f32[4,4]{1,0} parameter(1)
  ROOT %dot.2 = f32[4,4]{1,0} dot(%p0, %p1), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}

ENTRY %main (x: f32[4,4], w: f32[4,4]) -> f32[4,4] {
  %x = f32[4,4]{1,0} parameter(0)
  %w = f32[4,4]{1,0} parameter(1)
  %h = f32[4,4]{1,0} exponential(%x), metadata={op_name="jit(f)/jvp(M)/layer/exp"}
  %g = f32[4,4]{1,0} negate(%h), metadata={op_name="jit(f)/transpose(jvp(M))/layer/neg"}
  %t = f32[4,4]{1,0} transpose(%h), dimensions={1,0}
  %kernel_grad = f32[4,4]{1,0} fusion(%t, %g), kind=kCustom, calls=%fused_product
  ROOT %upd = f32[4,4]{1,0} add(%w, %kernel_grad), metadata={op_name="jit(f)/optimizer_update/add"}
}
"""


def test_unscoped_gradient_products_and_their_inputs_count_as_backward_not_as_the_update():
  events = [Event("A", name, i * 10 * MS, ms * MS)
            for i, (name, ms) in enumerate([("h", 1), ("g", 1), ("t", 2), ("kernel_grad", 3), ("upd", 1)])]
  a = step_trace.analyse(KERNEL_GRADIENT_HLO, events)
  assert a["by_part"] == pytest.approx({"forward": 1.0, "backward": 6.0, "optimiser update": 1.0})
  assert a["by_layer"] == pytest.approx({("M/unscoped_products", "backward"): 5.0, ("M/layer", "backward"): 1.0,
                                         ("M/layer", "forward"): 1.0})


def test_the_throughput_benchmark_times_each_model_at_its_recipes_steps_per_call():
  from benchmarks import train_throughput
  assert train_throughput._steps_per_call("sketchy", "recipe") == 10
  assert train_throughput._steps_per_call("digits_cdcb", "recipe") == 1
  assert train_throughput._steps_per_call("sketchy", "3") == 3
  assert train_throughput.make_config("sketchy", 4).training.steps_per_call == 4
