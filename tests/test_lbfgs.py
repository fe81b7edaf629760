"""L-BFGS and the line searches (issue 13): ``lbfgs``, ``scale_by_lbfgs``,
``scale_by_zoom_linesearch``, ``scale_by_backtracking_linesearch``, ``value_and_grad_from_state``.

Oracles:

- the two-loop recursion against NumPy float64: the two-loop recursion itself and the dense
  BFGS recursion ``H ← VᵀHV + ρssᵀ`` it computes, over 25 steps with a ring buffer that wraps;
- optax 0.2.8 (``optax.lbfgs`` and its line searches) on the same problems, float64: the
  first 25 iterates, the iteration count to tolerance and the final value;
- ``scipy.optimize.minimize(method="L-BFGS-B")`` (memory 10, stop at ``‖∇f‖∞ <= gtol``):
  iterations to the same tolerance within 25% (+5) and the same final value;
- the strong Wolfe / Armijo conditions at the step sizes the searches accept.

Problems (float64): Rosenbrock's function (n = 2 and the chained n = 100), a quadratic of
condition number 10⁴ and multinomial logistic regression on the digits data
(``examples/digits_data.py``, L2 1e-3).
"""

from __future__ import annotations

import contextlib
import functools
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import gradtx

optax = pytest.importorskip("optax")
scipy_optimize = pytest.importorskip("scipy.optimize")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

HISTORY = 25  # iterates compared with optax


@pytest.fixture(autouse=True)
def _x64():
    with jax.enable_x64(True):
        yield


# --- problems ---------------------------------------------------------------------------------
def rosenbrock(x):
    return jnp.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)


@functools.cache
def _quadratic_data(n: int = 30, cond: float = 1e4):
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    return (q * np.logspace(0, np.log10(cond), n)) @ q.T, rng.standard_normal(n)


def quadratic(x):
    a, b = _quadratic_data()
    return 0.5 * x @ (jnp.asarray(a) @ x) - jnp.asarray(b) @ x


@functools.cache
def _digits():
    from digits_data import load_data

    x, _, y, _ = load_data(0)
    n = len(x) // 5  # load_data appends four shifted copies: keep the original images
    return x[:n].astype(np.float64), y[:n]


def logistic(p):
    x, y = _digits()
    logp = jax.nn.log_softmax(jnp.asarray(x) @ p["w"] + p["b"][None, :])
    nll = -jnp.mean(jnp.take_along_axis(logp, jnp.asarray(y)[:, None], axis=1))
    return nll + 0.5e-3 * jnp.sum(p["w"] ** 2)


PROBLEMS = {  # name: (objective, start, gtol)
    "rosenbrock2": (rosenbrock, lambda: jnp.array([-1.2, 1.0]), 1e-6),
    "rosenbrock100": (rosenbrock, lambda: jnp.tile(jnp.array([-1.2, 1.0]), 50), 1e-6),
    "quadratic": (quadratic, lambda: jnp.zeros(30), 1e-5),
    "logistic": (logistic, lambda: {"w": jnp.zeros((64, 10)), "b": jnp.zeros(10)}, 1e-6),
}


def _solve(tx, apply, f, x0, gtol, maxiter=2000):
    """Runs ``tx`` in a ``lax.while_loop`` until ``‖∇f‖∞ <= gtol``: (x, iterations, f(x), the
    first HISTORY iterates flattened)."""
    vg = jax.value_and_grad(f)
    flat = lambda t: ravel_pytree(t)[0]  # noqa: E731

    def more(c):
        return (c[2] < maxiter) & (jnp.max(jnp.abs(flat(c[4]))) > gtol)

    def body(c):
        x, state, k, v, g, hist = c
        u, state = tx.update(g, state, x, value=v, grad=g, value_fn=f)
        x = apply(x, u)
        v, g = vg(x)
        row = jnp.minimum(k, HISTORY - 1)
        hist = hist.at[row].set(jnp.where(k < HISTORY, flat(x), hist[row]))
        return x, state, k + 1, v, g, hist

    v0, g0 = vg(x0)
    hist = jnp.zeros((HISTORY, flat(x0).size), flat(x0).dtype)
    x, _, k, v, _, hist = jax.lax.while_loop(
        more, body, (x0, tx.init(x0), jnp.int32(0), v0, g0, hist)
    )
    return x, k, v, hist


def _one_blas_thread():
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover
        return contextlib.nullcontext()
    return threadpool_limits(1)


@functools.cache
def _run(problem: str, library: str):
    f, start, gtol = PROBLEMS[problem]
    with jax.enable_x64(True):
        x0 = start()
        if library in ("gradtx", "optax"):
            lib = gradtx if library == "gradtx" else optax
            with jax.numpy_dtype_promotion("standard" if library == "optax" else "strict"):
                run = jax.jit(lambda x: _solve(lib.lbfgs(), lib.apply_updates, f, x, gtol))
                x, k, v, hist = run(x0)
            return x, int(k), float(v), np.asarray(hist)
        flat0, unravel = ravel_pytree(x0)
        vg = jax.jit(jax.value_and_grad(lambda z: f(unravel(z))))
        with _one_blas_thread():  # L-BFGS-B's BLAS calls are tiny: threads only contend
            res = scipy_optimize.minimize(
                lambda z: tuple(np.asarray(a) for a in vg(jnp.asarray(z))),
                np.asarray(flat0),
                jac=True,
                method="L-BFGS-B",
                options={"maxcor": 10, "gtol": gtol, "ftol": 0.0, "maxiter": 5000},
            )
        return res.x, int(res.nit), float(res.fun), None


@pytest.mark.parametrize("problem", list(PROBLEMS))
def test_lbfgs_equals_optax(problem):
    """Same iterates as optax.lbfgs (float64, rtol 1e-9 over the first 25 steps), the same
    number of iterations to the tolerance and the same final value."""
    _, k, value, hist = _run(problem, "gradtx")
    _, k_o, value_o, hist_o = _run(problem, "optax")
    assert k >= HISTORY
    np.testing.assert_allclose(hist, hist_o, rtol=1e-9, atol=1e-12)
    assert k == k_o
    np.testing.assert_allclose(value, value_o, rtol=1e-9, atol=1e-14)


@pytest.mark.parametrize("problem", list(PROBLEMS))
def test_lbfgs_matches_scipy(problem):
    """Iterations to ``‖∇f‖∞ <= gtol`` within 25% (+5) of scipy's L-BFGS-B (memory 10), and
    the same minimum: value to 1e-9 relative or 1e-8 absolute (at ``gtol`` the value is
    determined to about ‖∇f‖²/μ), point to 2e-3 (about ‖∇f‖/μ: 7e-4 measured for the
    logistic regression, μ ≈ 1e-3; below 2e-6 for the others)."""
    x, k, value, _ = _run(problem, "gradtx")
    x_s, k_s, value_s, _ = _run(problem, "scipy")
    assert k <= 1.25 * k_s + 5, (k, k_s)
    assert k >= 0.5 * k_s, (k, k_s)  # as much work: not a looser stopping rule
    np.testing.assert_allclose(value, value_s, rtol=1e-9, atol=1e-8)
    np.testing.assert_allclose(ravel_pytree(x)[0], x_s, rtol=0, atol=2e-3)


# --- the two-loop recursion against NumPy -----------------------------------------------------
def _numpy_two_loop(g, pairs, gamma):
    q, alphas = g.copy(), []
    for s, y in reversed(pairs):
        rho = 1.0 / (y @ s)
        alphas.append(rho * (s @ q))
        q = q - alphas[-1] * y
    r = gamma * q
    for (s, y), a in zip(pairs, reversed(alphas)):
        rho = 1.0 / (y @ s)
        r = r + (a - rho * (y @ r)) * s
    return r


def _numpy_dense(g, pairs, gamma):
    h = gamma * np.eye(g.size)
    for s, y in pairs:
        rho = 1.0 / (y @ s)
        v = np.eye(g.size) - rho * np.outer(y, s)
        h = v.T @ h @ v + rho * np.outer(s, s)
    return h @ g


@pytest.mark.parametrize("memory_size, scale", [(4, True), (3, False)])
def test_scale_by_lbfgs_equals_numpy_oracle(memory_size, scale):
    """25 steps on a tree of two leaves (params and gradients of a convex quadratic along a
    random path, so ⟨y, s⟩ > 0); each direction equals both NumPy forms to rtol 1e-10."""
    rng = np.random.default_rng(1)
    n = 10
    a = rng.standard_normal((n, n))
    hess = a @ a.T / n + np.eye(n)
    xs = np.cumsum(rng.standard_normal((25, n)), axis=0)
    gs = xs @ hess
    tree = lambda v: {"m": jnp.asarray(v[:6].reshape(3, 2)), "v": jnp.asarray(v[6:])}  # noqa: E731
    tx = gradtx.scale_by_lbfgs(memory_size, scale)

    def step(state, xg):
        u, state = tx.update(tree(xg[1]), state, tree(xg[0]))
        return state, ravel_pytree(u)[0]

    _, out = jax.jit(lambda: jax.lax.scan(step, tx.init(tree(xs[0])), (xs, gs)))()
    out = np.asarray(out)
    for k in range(25):
        pairs = [(xs[j + 1] - xs[j], gs[j + 1] - gs[j]) for j in range(max(0, k - memory_size), k)]
        if not scale:
            gamma = 1.0
        elif k == 0:
            gamma = min(1.0, 1.0 / np.linalg.norm(gs[0]))
        else:
            s, y = pairs[-1]
            gamma = (y @ s) / (y @ y)
        for oracle in (_numpy_two_loop, _numpy_dense):
            np.testing.assert_allclose(out[k], oracle(gs[k], pairs, gamma), rtol=1e-10)


def test_scale_by_lbfgs_float32_close_to_float64_oracle():
    """The same recursion in float32 (state in float32) against the float64 two-loop of the
    same (float32) inputs over 25 steps of a well-conditioned quadratic: within 1e-5 of the
    direction's largest element."""
    rng = np.random.default_rng(2)
    n = 8
    hess = np.diag(np.linspace(1.0, 3.0, n))
    xs = np.cumsum(rng.standard_normal((25, n)), axis=0).astype(np.float32).astype(np.float64)
    gs = (xs @ hess).astype(np.float32).astype(np.float64)
    tx = gradtx.scale_by_lbfgs(5)
    state = tx.init(jnp.asarray(xs[0], jnp.float32))
    assert state.diff_params_memory.dtype == jnp.float32
    step = jax.jit(tx.update)
    for k in range(25):
        u, state = step(jnp.asarray(gs[k], jnp.float32), state, jnp.asarray(xs[k], jnp.float32))
        pairs = [(xs[j + 1] - xs[j], gs[j + 1] - gs[j]) for j in range(max(0, k - 5), k)]
        s, y = pairs[-1] if pairs else (None, None)
        gamma = min(1.0, 1.0 / np.linalg.norm(gs[0])) if k == 0 else (y @ s) / (y @ y)
        assert u.dtype == jnp.float32
        want = _numpy_two_loop(gs[k], pairs, gamma)
        np.testing.assert_allclose(u, want, rtol=0, atol=1e-5 * np.max(np.abs(want)))


# --- the line searches ------------------------------------------------------------------------
def _phi(f, x, u):
    """φ(η) = f(x + ηu) and φ'(η) in NumPy float64 from jax (the independent check)."""
    vg = jax.value_and_grad(f)

    def at(eta):
        v, g = vg(x + eta * u)
        return float(v), float(jnp.vdot(g, u))

    return at


def test_zoom_step_meets_the_strong_wolfe_conditions():
    """From five points of Rosenbrock's valley, along −∇f (first trial 1, far too long), the
    accepted step meets φ(η) <= φ(0) + c₁ηφ'(0) and |φ'(η)| <= c₂|φ'(0)|, and the state keeps
    f and ∇f at the new point."""
    tx = gradtx.scale_by_zoom_linesearch(30, initial_guess_strategy="one", approx_dec_rtol=None)
    step = jax.jit(lambda x, s, u: tx.update(u, s, x, value_fn=rosenbrock))
    rng = np.random.default_rng(3)
    for x in rng.uniform(-1.5, 1.5, (5, 4)):
        x = jnp.asarray(x)
        u = -jax.grad(rosenbrock)(x)
        out, state = step(x, tx.init(x), u)
        eta = float(state.learning_rate)
        phi = _phi(rosenbrock, x, u)
        (v0, s0), (v, s) = phi(0.0), phi(eta)
        assert 0 < eta < 1 and int(state.info.num_linesearch_steps) <= 30
        assert v <= v0 + 1e-4 * eta * s0
        assert abs(s) <= 0.9 * abs(s0)
        np.testing.assert_allclose(out, eta * u, rtol=1e-15)
        np.testing.assert_allclose(state.value, v, rtol=1e-12)
        np.testing.assert_allclose(state.grad, jax.grad(rosenbrock)(x + eta * u), rtol=1e-12)


def test_zoom_on_complex_params_uses_jax_gradient_convention():
    """Complex params: ``jax.grad`` gives ``∂f/∂x − i∂f/∂y``, so the slope along ``u`` is
    ``Re Σ g·u``. Along the steepest descent ``u = −conj(g)`` the accepted step meets the
    strong Wolfe conditions, with φ' from ``jax.jvp`` of the real function η ↦ f(z + ηu)."""
    f = lambda z: jnp.sum(jnp.abs(z - (0.3 + 3.0j)) ** 2 + 0.1 * jnp.abs(z) ** 4)  # noqa: E731
    z = jnp.asarray([0.1 + 0.0j, 0.2 - 0.1j])  # the gradient mostly imaginary: Re Σ conj(g)·u > 0
    u = -jnp.conj(jax.grad(f)(z))
    tx = gradtx.scale_by_zoom_linesearch(30, approx_dec_rtol=None)
    _, state = tx.update(u, tx.init(z), z, value_fn=f)
    phi = lambda eta: f(z + eta.astype(u.dtype) * u)  # noqa: E731
    eta, one = state.learning_rate, jnp.ones((), jnp.float64)
    (v0, s0), (v, s) = jax.jvp(phi, (0.0 * one,), (one,)), jax.jvp(phi, (eta,), (one,))
    assert float(s0) < 0 and float(eta) > 0
    assert float(v) <= float(v0) + 1e-4 * float(eta) * float(s0)
    assert abs(float(s)) <= 0.9 * abs(float(s0))


def test_backtracking_step_is_the_first_with_sufficient_decrease():
    """The accepted step size is 0.8ʲ·η₀ with the Armijo condition at it and not at 0.8ʲ⁻¹·η₀."""
    tx = gradtx.scale_by_backtracking_linesearch(40, decrease_factor=0.8, max_learning_rate=1.0)
    x = jnp.asarray([-1.2, 1.0, 0.3])
    u = -jax.grad(rosenbrock)(x)
    _, state = tx.update(u, tx.init(x), x, value_fn=rosenbrock)
    eta, j = float(state.learning_rate), int(state.info.num_linesearch_steps) - 1
    np.testing.assert_allclose(eta, 0.8**j, rtol=1e-12)
    phi = _phi(rosenbrock, x, u)
    (v0, s0), (v, _), (v_prev, _) = phi(0.0), phi(eta), phi(eta / 0.8)
    assert j > 0 and v <= v0 + 1e-4 * eta * s0 and v_prev > v0 + 1e-4 * (eta / 0.8) * s0
    assert float(state.info.decrease_error) == 0.0 and state.grad is None


def test_verbose_reports_a_failed_search(capfd):
    """Along an ascent direction no step qualifies: ``verbose=True`` prints the numbers, and
    the zoom search, with no step of sufficient decrease to fall back on, takes its last
    trial (as optax), keeping the value there."""
    x = jnp.asarray([-1.2, 1.0])
    ascent = jax.grad(rosenbrock)(x)
    for tx in (
        gradtx.scale_by_backtracking_linesearch(6, verbose=True),
        gradtx.scale_by_zoom_linesearch(6, verbose=True),
    ):
        u, state = tx.update(ascent, tx.init(x), x, value_fn=rosenbrock)
        jax.effects_barrier()
        assert f"gradtx.{tx.name}: no step size met the conditions" in capfd.readouterr().out
        assert float(state.info.decrease_error) > 0
    eta = float(state.learning_rate)  # the zoom search's
    assert eta > 0 and float(state.value) > float(rosenbrock(x))
    np.testing.assert_allclose(u, eta * ascent, rtol=1e-15)
    np.testing.assert_allclose(state.value, rosenbrock(x + eta * ascent), rtol=1e-12)


def _scan_steps(tx, apply, f, x0, vg_from_state, steps=25):
    def body(c, _):
        x, state = c
        v, g = vg_from_state(x, state=state)
        u, state = tx.update(g, state, x, value=v, grad=g, value_fn=f)
        return (apply(x, u), state), x

    return jax.jit(lambda x: jax.lax.scan(body, (x, tx.init(x)), None, steps)[1])(x0)


def test_backtracking_equals_optax():
    """sgd(1) + backtracking (``store_grad=True``) on the quadratic, 25 steps, float64, each
    library reusing the value and gradient its search kept (its own
    ``value_and_grad_from_state``): the iterates of optax's chain to rtol 1e-10."""
    x0 = jnp.zeros(30)
    search = dict(max_backtracking_steps=30, store_grad=True)
    tx = gradtx.chain(gradtx.sgd(1.0), gradtx.scale_by_backtracking_linesearch(**search))
    ours = gradtx.value_and_grad_from_state(quadratic)
    got = _scan_steps(tx, gradtx.apply_updates, quadratic, x0, ours)
    with jax.numpy_dtype_promotion("standard"):
        otx = optax.chain(optax.sgd(1.0), optax.scale_by_backtracking_linesearch(**search))
        theirs = optax.value_and_grad_from_state(quadratic)
        want = _scan_steps(otx, optax.apply_updates, quadratic, x0, theirs)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-13)
    assert quadratic(jnp.asarray(got[-1])) < 0.5 * quadratic(jnp.asarray(got[1]))


def test_zoom_with_sgd_equals_optax_keep_strategy():
    """sgd(1) + zoom (``initial_guess_strategy="keep"``, a step size cap) on the quadratic,
    25 steps, float64: optax's iterates to rtol 1e-9."""
    x0 = jnp.zeros(30)
    plain = lambda x, state: jax.value_and_grad(quadratic)(x)  # noqa: E731
    tx = gradtx.chain(gradtx.sgd(1.0), gradtx.scale_by_zoom_linesearch(15, 8.0))
    got = _scan_steps(tx, gradtx.apply_updates, quadratic, x0, plain)
    with jax.numpy_dtype_promotion("standard"):
        otx = optax.chain(optax.sgd(1.0), optax.scale_by_zoom_linesearch(15, 8.0))
        want = _scan_steps(otx, optax.apply_updates, quadratic, x0, plain)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)
    assert quadratic(got[-1]) < 0.5 * quadratic(got[1])


# --- the extra-arguments protocol --------------------------------------------------------------
def test_value_and_grad_from_state_reuses_the_search():
    """After an update the stored value and gradient are f and ∇f at the new params (1e-12);
    before the first update they are computed."""
    f = lambda w: jnp.sum((w - 1.0) ** 2) + jnp.sum(w**4)  # noqa: E731
    tx = gradtx.lbfgs()
    vg = jax.jit(gradtx.value_and_grad_from_state(f))
    w = jnp.asarray([0.5, -2.0, 3.0])
    state = tx.init(w)
    for _ in range(3):
        v, g = vg(w, state=state)
        np.testing.assert_allclose(v, f(w), rtol=1e-12)
        np.testing.assert_allclose(g, jax.grad(f)(w), rtol=1e-12)
        u, state = tx.update(g, state, w, value=v, grad=g, value_fn=f)
        w = gradtx.apply_updates(w, u)
        np.testing.assert_allclose(state.scale_by_zoom_linesearch.value, f(w), rtol=1e-14)


def test_value_and_grad_from_state_errors():
    f = lambda w: jnp.sum(w**2)  # noqa: E731
    vg = gradtx.value_and_grad_from_state(f)
    w = jnp.ones(2)
    with pytest.raises(ValueError, match="value_and_grad_from_state: the state holds no"):
        vg(w, state=gradtx.adam(1e-3).init(w))
    two = gradtx.chain(gradtx.lbfgs(), gradtx.scale_by_zoom_linesearch(5))
    with pytest.raises(ValueError, match="holds 2 line-search states"):
        vg(w, state=two.init(w))
    bt = gradtx.scale_by_backtracking_linesearch(5)
    with pytest.raises(ValueError, match="store_grad=True"):
        vg(w, state=bt.init(w))


def test_value_fn_gets_the_arguments_it_names():
    """``value_fn(params, x, y)`` gets ``x`` and ``y`` from update's keyword arguments; other
    keyword arguments are ignored (optax raises for them)."""
    data_x, data_y = jnp.asarray([[1.0, 2.0], [0.5, -1.0]]), jnp.asarray([1.0, -2.0])
    fn = lambda w, x, y: jnp.sum((x @ w - y) ** 2)  # noqa: E731
    closed = lambda w: fn(w, data_x, data_y)  # noqa: E731
    tx = gradtx.scale_by_backtracking_linesearch(20, store_grad=True)
    w = jnp.zeros(2)
    u = -jax.grad(closed)(w)
    a = tx.update(u, tx.init(w), w, value_fn=fn, x=data_x, y=data_y, unrelated=3)
    b = tx.update(u, tx.init(w), w, value_fn=closed)
    assert 0 < float(b[1].learning_rate) < 1
    for p, q in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_array_equal(p, q)


def test_missing_value_fn_is_declared_and_named():
    for tx, name in [
        (gradtx.lbfgs(), r"gradtx\.lbfgs \(scale_by_zoom_linesearch\)"),
        (gradtx.scale_by_zoom_linesearch(5), r"gradtx\.scale_by_zoom_linesearch"),
        (gradtx.scale_by_backtracking_linesearch(5), r"gradtx\.scale_by_backtracking_linesearch"),
    ]:
        assert tx.requires == ("value_fn",)
        w = jnp.ones(3)
        with pytest.raises(gradtx.TransformError, match=name + ": update needs .*value_fn"):
            tx.update(w, tx.init(w), w, value=1.0, grad=w)
    assert gradtx.lbfgs(linesearch=None).requires == ()
    assert not getattr(gradtx.scale_by_lbfgs(), "requires", ())


def test_bad_input_errors_name_the_transformation():
    w = {"a": jnp.ones(3)}
    f = lambda p: jnp.sum(p["a"] ** 2)  # noqa: E731
    tx = gradtx.scale_by_zoom_linesearch(5)
    with pytest.raises(
        gradtx.TransformError, match="scale_by_zoom_linesearch: update needs params"
    ):
        tx.update(w, tx.init(w), None, value_fn=f)
    with pytest.raises(gradtx.TransformError, match=r"scale_by_zoom_linesearch: grad .*'b'"):
        tx.update(w, tx.init(w), w, value=1.0, grad={"b": jnp.ones(3)}, value_fn=f)
    with pytest.raises(gradtx.TransformError, match="value must be a real scalar"):
        tx.update(w, tx.init(w), w, value=jnp.ones(2), grad=w, value_fn=f)
    lb = gradtx.scale_by_lbfgs(3)
    with pytest.raises(gradtx.TransformError, match="scale_by_lbfgs: update needs params"):
        lb.update(w, lb.init(w))
    with pytest.raises(gradtx.TransformError, match=r"scale_by_lbfgs: .*memory_size"):
        gradtx.scale_by_lbfgs(4).update(w, lb.init(w), w)
    for make, match in [
        (lambda: gradtx.scale_by_lbfgs(0), r"scale_by_lbfgs: memory_size must be an int >= 1"),
        (lambda: gradtx.lbfgs(memory_size=0), r"lbfgs \(scale_by_lbfgs\): memory_size"),
        (lambda: gradtx.scale_by_zoom_linesearch(0), "max_linesearch_steps must be an int"),
        (lambda: gradtx.scale_by_zoom_linesearch(5, initial_guess_strategy="two"), "'one' or"),
        (lambda: gradtx.scale_by_backtracking_linesearch(5, 1e-4, 1.5), "decrease_factor"),
        (lambda: gradtx.scale_by_zoom_linesearch(5, curv_rtol=-1.0), "curv_rtol must be"),
        (lambda: gradtx.lbfgs(linesearch="zoom"), "lbfgs: linesearch must be a transformation"),
    ]:
        with pytest.raises((ValueError, TypeError), match=match):
            make()


# --- jit, loops, other libraries --------------------------------------------------------------
def test_one_trace_and_one_evaluation_site():
    """A jitted L-BFGS step traces once for three steps and traces ``value_fn`` once per
    trace: one evaluation site in the search's loop (optax's search has two, one per phase).
    Left to compute value and grad, it traces ``value_fn`` once more and makes the same step
    (to 1e-12)."""
    traces = {"step": 0, "f": 0}

    def f(x):
        traces["f"] += 1
        return rosenbrock(x)

    tx = gradtx.lbfgs()

    @jax.jit
    def step(x, state, v, g):
        traces["step"] += 1
        return tx.update(g, state, x, value=v, grad=g, value_fn=f)

    x = jnp.asarray([-1.2, 1.0])
    state = tx.init(x)
    for _ in range(3):
        v, g = jax.value_and_grad(rosenbrock)(x)
        given, new_state = step(x, state, v, g)
        x, state = gradtx.apply_updates(x, given), new_state
    assert traces == {"step": 1, "f": 1}
    assert float(rosenbrock(x)) < 24.2  # f(x0)
    v, g = jax.value_and_grad(rosenbrock)(x)
    given = step(x, state, v, g)
    computed = jax.jit(lambda x, s: tx.update(jax.grad(rosenbrock)(x), s, x, value_fn=f))(x, state)
    assert traces == {"step": 1, "f": 3}
    for a, b in zip(jax.tree_util.tree_leaves(given), jax.tree_util.tree_leaves(computed)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-300)
    with jax.numpy_dtype_promotion("standard"):
        otx = optax.lbfgs()
        jax.make_jaxpr(lambda x, s: otx.update(x, s, x, value=1.0, grad=x, value_fn=f))(
            x, otx.init(x)
        )
    assert traces["f"] == 5


@pytest.mark.parametrize("wrap", [False, True], ids=["as_is", "extra_args"])
def test_usable_in_optimistix_optax_minimiser(wrap):
    """In ``optimistix.OptaxMinimiser`` (which passes value, grad and value_fn), gradtx.lbfgs
    takes the steps of the plain loop (itself equal to optax.lbfgs's, see
    test_lbfgs_equals_optax): the 20th iterate on Rosenbrock's function to 1e-12. Passed as it
    is (equinox partitions the solver, gradtx's values keep their structure) or wrapped in
    ``optax.GradientTransformationExtraArgs``."""
    optx = pytest.importorskip("optimistix")
    tx = gradtx.lbfgs()
    if wrap:
        tx = optax.GradientTransformationExtraArgs(tx.init, tx.update)
    solver = optx.OptaxMinimiser(tx, rtol=0.0, atol=0.0)  # never stops early
    y0 = jnp.asarray([-1.2, 1.0])
    fn = lambda y, args: rosenbrock(y)  # noqa: E731
    sol = optx.minimise(fn, solver, y0, max_steps=20, throw=False)
    assert int(sol.stats["num_steps"]) == 20
    np.testing.assert_allclose(sol.value, _run("rosenbrock2", "gradtx")[3][19], rtol=1e-12)


def test_describe_names_the_knobs():
    d = gradtx.lbfgs().describe()
    assert d["name"] == "lbfgs" and "H_k g" in d["g"] and "memory_size=10" in d["g"]
    assert d["sigma"].startswith("none") and "scale_by_zoom_linesearch" in d["eta"]
    assert gradtx.lbfgs(0.5, linesearch=None).describe()["eta"] == "η = constant 0.5"
    assert isinstance(gradtx.lbfgs(), gradtx.Optimizer)
    assert sorted(gradtx.lbfgs().init(jnp.ones(2))) == [
        "scale",
        "scale_by_lbfgs",
        "scale_by_zoom_linesearch",
    ]
