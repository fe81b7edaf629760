"""``shard_state`` (ZeRO-1) on the 8 CPU devices of the root conftest.

Oracles: per-device state bytes read from the arrays' shards against the replicated state and
against ``gradtx.memory_report``; three jitted steps equal to the unsharded optimizer's
(gradtx and optax inners, per-leaf and packed trees, Explicit and Auto meshes, params sharded
over a second axis), in one trace and one backend compilation, the state placed as ``init``
placed it; an orbax round trip restored onto ``abstract_state`` and continued bit-identically;
the plan's reasons; errors. The conformance kit runs on it through tests/kit_cases.py.

Tolerances (measured with this JAX/XLA on CPU): the jitted steps equal the unsharded
optimizer's bit for bit (``assert_array_equal``): adamw, a clipped and scheduled chain (the
norm is of the replicated gradients) and MultiSteps over optax's adamw, on Explicit and Auto
meshes. The exception is a packed buffer on an Auto mesh: its gather-and-cut is fused
otherwise and rounds differently (measured: params 1 ulp, updates up to 11 ulp), so there
``rtol=1e-6, atol=1e-7``. A reduction over a sharded slot (a trust ratio) would sum in another
order: float32 rounding. An orbax round trip continues bit for bit.
"""

from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import gradtx

ocp = pytest.importorskip("orbax.checkpoint")

pytestmark = pytest.mark.skipif(len(jax.devices()) < 8, reason="needs 8 devices")

EXPLICIT, AUTO = AxisType.Explicit, AxisType.Auto
SHAPES = {"w": (16, 4), "v": (6, 8), "b": (5,), "s": ()}


def _mesh(kind=EXPLICIT, two_d=False):
    if two_d:
        return jax.make_mesh((4, 2), ("data", "model"), axis_types=(kind, kind))
    return jax.make_mesh((8,), ("data",), axis_types=(kind,))


def _full(spec, ndim):
    """``spec`` padded with None to ``ndim`` (P() and P(None, None) are different jit keys)."""
    return P(*(list(spec) + [None] * ndim)[:ndim])


def _params(mesh, specs=None, shapes=SHAPES):
    rng = np.random.default_rng(0)
    specs = specs or {}
    return {
        k: jax.device_put(
            jnp.asarray(rng.standard_normal(s).astype(np.float32)),
            NamedSharding(mesh, _full(specs.get(k, P()), len(s))),
        )
        for k, s in shapes.items()
    }


def _grads(params, i):
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(i), len(leaves))
    out = [jax.device_put(jax.random.normal(k, x.shape), x.sharding) for k, x in zip(keys, leaves)]
    return jax.tree.unflatten(treedef, out)


def _chain():
    sched = gradtx.schedules.warmup_cosine_decay(0.0, 1e-2, 2, 10)
    return gradtx.chain(gradtx.clip_by_global_norm(1.0), gradtx.adamw(sched, weight_decay=0.1))


class _Compiles:
    """Counts XLA backend compilations while entered."""

    def __init__(self) -> None:
        self.n = 0

    def _cb(self, event: str, duration: float, **kw) -> None:
        self.n += event == "/jax/core/compile/backend_compile_duration"

    def __enter__(self):
        jax.monitoring.register_event_duration_secs_listener(self._cb)
        return self

    def __exit__(self, *exc):
        jax.monitoring.unregister_event_duration_listener(self._cb)


def _scope(mesh):
    explicit = EXPLICIT in tuple(mesh.axis_types)
    return jax.set_mesh(mesh) if explicit else contextlib.nullcontext()  # Auto: no context


def _stepper(tx):
    """A jitted step, and the list its traces are counted in."""
    traces: list = []

    def step(p, s, g):
        traces.append(1)
        u, s = tx.update(g, s, p)
        return gradtx.apply_updates(p, u), s, u

    return jax.jit(step), traces


def _train(tx, params, mesh, steps=3, state=None, start=0, stepper=None):
    """``steps`` jitted steps: (params, state, updates, traces so far, compilations)."""
    step, traces = stepper or _stepper(tx)
    with _scope(mesh):
        state = tx.init(params) if state is None else state
        grads = [_grads(params, i) for i in range(start, start + steps)]
        with _Compiles() as compiles:
            for g in grads:
                params, state, updates = step(params, state, g)
    return params, state, updates, len(traces), compiles.n


def _per_device(tree) -> dict:
    out: dict = {}
    for x in jax.tree.leaves(tree):
        for shard in x.addressable_shards:
            out[shard.device] = out.get(shard.device, 0) + shard.data.nbytes
    return out


def _placed_like(a, b) -> bool:
    return all(
        x.sharding.is_equivalent_to(y.sharding, x.ndim)
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


def _close(got, ref):
    """Trees against the unsharded run's, to float32 rounding."""
    for x, y in zip(jax.tree.leaves(got), jax.tree.leaves(ref), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6, atol=1e-7)


def _same(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# --- memory -----------------------------------------------------------------------------------
@pytest.mark.parametrize("two_d", [False, True], ids=["data8", "data4xmodel2"])
def test_device_bytes_are_one_nth_and_memory_report_agrees(two_d):
    mesh = _mesh(two_d=two_d)
    specs = {"w": P("model", None), "v": P("model", None)} if two_d else {}
    params = _params(mesh, specs)
    inner = gradtx.adamw(1e-2)
    tx = gradtx.shard_state(inner, "data")
    with jax.set_mesh(mesh):
        plain, zero, plan = inner.init(params), tx.init(params), tx.plan(params)
    plain_b, zero_b = _per_device(plain), _per_device(zero)
    n, model = (4, 2) if two_d else (8, 1)
    # mu and nu of w (16, 4) and v (6, 8) shard over data; b (5,), s and the count do not
    sharded = 2 * 4 * (16 * 4 + 6 * 8) // model  # their bytes on one device, replicated state
    whole = 2 * 4 * (5 + 1) + 4
    assert set(plain_b.values()) == {sharded + whole}
    assert set(zero_b.values()) == {sharded // n + whole} == {plan.device_nbytes}
    assert plan.nbytes == 948  # one full copy
    assert gradtx.memory_report(tx, params).per_device == zero_b
    assert gradtx.memory_report(inner, params).per_device == plain_b
    want = {"w": P("model", "data"), "v": P("model", "data")} if two_d else {}
    assert zero.knobs.mu["w"].sharding.spec == want.get("w", P("data", None))
    assert zero.knobs.nu["v"].sharding.spec == want.get("v", P(None, "data"))
    assert zero.knobs.mu["b"].sharding.is_equivalent_to(params["b"].sharding, 1)


# --- steps ------------------------------------------------------------------------------------
CASES = {  # (mesh kind, 2-d mesh, param specs, inner)
    "auto-adamw": (AUTO, False, {}, lambda: gradtx.adamw(1e-2, weight_decay=0.1)),
    "explicit-2d-clip-adamw-schedule": (
        EXPLICIT,
        True,
        {"w": P("model", None), "v": P("model", None)},  # data goes on dim 1
        _chain,
    ),
    "auto-2d-adamw": (
        AUTO,
        True,
        {"w": P(None, "model"), "v": P("model", None)},
        lambda: gradtx.adamw(1e-2, weight_decay=0.1),
    ),
    # an optax inner, under MultiSteps: its lax.cond joins the sharded state's updates with
    # replicated zeros, which an Explicit mesh allows because shard_state runs it on Auto axes
    "explicit-multisteps-optax-adamw": (
        EXPLICIT,
        False,
        {},
        lambda: gradtx.MultiSteps(optax.adamw(1e-2), 2, accumulator_dtype=None),
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_three_steps_equal_unsharded_in_one_compile(case):
    kind, two_d, specs, make = CASES[case]
    mesh = _mesh(kind, two_d)
    params = _params(mesh, specs)
    inner = make()
    tx = gradtx.shard_state(inner, "data")  # the mesh: the params'
    with jax.numpy_dtype_promotion("standard"):  # optax's bias correction mixes dtypes
        ref = _train(inner, params, mesh)
        got = _train(tx, params, mesh)
    _same(got[:3], ref[:3])  # bit for bit
    assert got[3:] == (1, 1)  # one trace, one compilation: the state comes back as placed
    assert _placed_like(got[0], params) and _placed_like(got[2], params)
    with _scope(mesh):
        placed = tx.init(params)
    assert _placed_like(got[1], placed)
    assert jax.tree.structure(got[1]) == jax.tree.structure(ref[1])
    assert _per_device(got[1]) != _per_device(ref[1])  # something is sharded
    if two_d:  # jax.jit(init) places as eager init does (Auto: shard_alike and constraints)
        with _scope(mesh):
            assert _placed_like(jax.jit(tx.init)(params), placed)


@pytest.mark.parametrize("kind", [EXPLICIT, AUTO], ids=["explicit", "auto"])
def test_packed_buffer_padded_sharded_and_equal(kind):
    mesh = _mesh(kind)
    tree = _params(mesh, shapes={"w": (16, 4), "b": (3,), "c": (2, 5)})  # 77 elements
    packed = jax.device_put(gradtx.pack(tree), NamedSharding(mesh, P(None)))
    inner = _chain() if kind is EXPLICIT else gradtx.adamw(1e-2, weight_decay=0.1)
    tx = gradtx.shard_state(inner, "data")
    with _scope(mesh):
        plan = tx.plan(packed)
        assert not gradtx.shard_state(inner, pad=False).plan(packed).sharded
    mu = (".adamw" if kind is EXPLICIT else "") + ".knobs.mu.buffers[0]"
    by_path = {e.path: e for e in plan.entries}
    assert by_path[mu].reason == "padded 77 -> 80 (packed buffer), sharded on dim 0"
    assert (by_path[mu].stored, by_path[mu].device_nbytes) == ((80,), 10 * 4)
    ref = _train(inner, packed, mesh)
    got = _train(tx, packed, mesh)
    nu = (got[1].adamw if kind is EXPLICIT else got[1]).knobs.nu.buffers[0]
    assert (nu.shape, nu.sharding.spec) == ((80,), P("data"))
    inner_state = tx.inner_state(got[1])
    if kind is EXPLICIT:
        _same((got[0], inner_state, got[2]), ref[:3])
    else:  # the cut of the padded buffer is fused otherwise on an Auto mesh
        _close((got[0], inner_state, got[2]), ref[:3])  # rtol=1e-6, atol=1e-7
    assert got[3:] == (1, 1)
    mu_tree = (inner_state.adamw if kind is EXPLICIT else inner_state).knobs.mu
    assert gradtx.unpack(mu_tree)["w"].shape == (16, 4)


# --- checkpoints, the plan, readers -----------------------------------------------------------
def test_orbax_round_trip_onto_abstract_state_continues_bit_identically(tmp_path):
    mesh = _mesh(two_d=True)
    # w sharded over model stays a leaf of its own; b and v are packed into a buffer of 53
    tree = _params(mesh, {"w": P(None, "model")}, shapes={"w": (16, 4), "b": (5,), "v": (6, 8)})
    params = gradtx.pack(tree)
    tx = gradtx.shard_state(_chain(), "data")
    stepper = _stepper(tx)  # one compilation for the three runs
    p_mid, s_mid, *_ = _train(tx, params, mesh, steps=2, stepper=stepper)
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(tmp_path / "state", s_mid)
        ckptr.wait_until_finished()
    with jax.set_mesh(mesh):
        target = tx.abstract_state(params)
    with ocp.StandardCheckpointer() as ckptr:
        restored = ckptr.restore(tmp_path / "state", target)
    assert jax.tree.structure(restored) == jax.tree.structure(s_mid)
    assert s_mid.adamw.knobs.mu.buffers[0].shape == (56,)  # padded to a multiple of 4
    assert s_mid.adamw.knobs.mu.leaves[0].sharding.spec == P("data", "model")
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(s_mid), strict=True):
        assert a.sharding == b.sharding
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    ends = [_train(tx, p_mid, mesh, 2, s, 2, stepper)[:3] for s in (s_mid, restored)]
    _same(ends[0], ends[1])  # bit-identical


def test_plan_reasons_abstract_state_and_readers():
    mesh = _mesh()
    params = _params(mesh, {"v": P(None, "data")})  # v already sharded over data (FSDP)
    inner = _chain()
    tx = gradtx.shard_state(inner, "data")
    with jax.set_mesh(mesh):
        plan, state, target = tx.plan(params), tx.init(params), tx.abstract_state(params)
        plain = inner.init(params)
    assert plan.sharded == tuple(f".adamw.knobs.{s}['{k}']" for s in ("mu", "nu") for k in "vw")
    assert plan.replicated == {
        ".adamw.knobs.count": "replicated: scalar",
        ".adamw.learning_rate.count": "replicated: scalar",
        **{f".adamw.knobs.{s}['s']": "replicated: scalar" for s in ("mu", "nu")},
        **{
            f".adamw.knobs.{s}['b']": "replicated: no unsharded dimension divisible by 8"
            for s in ("mu", "nu")
        },
    }
    by_path = {e.path: e for e in plan.entries}
    assert by_path[".adamw.knobs.nu['v']"].reason == "sharded on dim 1, as its param"
    assert by_path[".adamw.knobs.mu['w']"][3:] == (P("data", None), 0, "sharded on dim 0", 256, 32)
    text = str(plan)
    assert text.startswith("state sharded over 'data' (8 devices): 168 of 952 bytes per device")
    row = next(line for line in text.splitlines() if "mu['w']" in line)
    assert [c.strip() for c in row.split("|")[1:-1]] == [
        ".adamw.knobs.mu['w']",
        "[16, 4]",
        "P('data', None)",
        "sharded on dim 0",
    ]
    assert _placed_like(target, state)
    assert jax.tree.map(lambda x: (x.shape, x.dtype), target) == jax.tree.map(
        lambda x: (x.shape, x.dtype), state
    )
    # the state is the inner's: structure, named entries, hyperparameters
    assert jax.tree.structure(state) == jax.tree.structure(plain)
    assert list(state) == ["clip_by_global_norm", "adamw"]
    assert gradtx.hyperparams(tx, state) == gradtx.hyperparams(inner, plain)
    assert gradtx.current_learning_rate(tx, state) == gradtx.current_learning_rate(inner, plain)
    # params on no mesh: the mesh given is used (here abstract params, nothing allocated)
    abstract = {k: jax.ShapeDtypeStruct(s, jnp.float32) for k, s in SHAPES.items()}
    bound = gradtx.shard_state(inner, "data", mesh=mesh).plan(abstract)
    assert bound.device_nbytes == 168 and bound.sharded[0] == ".adamw.knobs.mu['v']"


# --- errors -----------------------------------------------------------------------------------
def test_errors_name_the_transformation_and_the_axis():
    mesh = _mesh()
    params = _params(mesh)
    adam = gradtx.adam(1e-2)
    with pytest.raises(ValueError, match=r"gradtx.shard_state: axis 'batch' is not an axis"):
        gradtx.shard_state(adam, "batch", mesh=mesh)
    with pytest.raises(ValueError, match=r"gradtx.shard_state: axis 'batch' is not an axis"):
        gradtx.shard_state(adam, "batch").init(params)  # the params' mesh has only 'data'
    with jax.set_mesh(jax.make_mesh((8,), ("x",))), pytest.raises(ValueError, match="'data'"):
        gradtx.shard_state(adam).init({"w": jnp.ones(8)})  # the ambient mesh
    with pytest.raises(TypeError, match="gradtx.shard_state: mesh must be"):
        gradtx.shard_state(adam, mesh="data")
    with pytest.raises(TypeError, match="gradtx.shard_state: axis must be"):
        gradtx.shard_state(adam, axis=0)
    with pytest.raises(TypeError, match="gradtx.shard_state: inner must be"):
        gradtx.shard_state(3)
    unplaced = {"w": jnp.ones((16, 4))}
    for call in (gradtx.shard_state(adam).init, gradtx.shard_state(adam).plan):
        with pytest.raises(gradtx.TransformError, match=r"shard_state: no mesh .* axis 'data'"):
            call(unplaced)
    mixed = jax.make_mesh((4, 2), ("data", "model"), axis_types=(EXPLICIT, AUTO))
    with pytest.raises(gradtx.TransformError, match="shard_state: the mesh's axis types"):
        gradtx.shard_state(adam, mesh=mixed)
    other = {"a": params["w"], "b": _params(_mesh(two_d=True))["w"]}
    with pytest.raises(gradtx.TransformError, match=r"\['a'\] and \['b'\] are on different"):
        gradtx.shard_state(adam).init(other)
    # Auto mesh: the state's data dim is the first that 4 divides, dim 0, taken by model here
    conflict = _params(_mesh(AUTO, two_d=True), {"w": P("model", None)})
    with pytest.raises(gradtx.TransformError, match=r"Auto mesh .* \['w'\] is sharded"):
        gradtx.shard_state(adam).init(conflict)
    tx = gradtx.shard_state(adam)
    state = tx.init(params)
    with pytest.raises(gradtx.TransformError, match=r"shard_state: .*'v'"):
        tx.update({"w": params["w"]}, state, params)
