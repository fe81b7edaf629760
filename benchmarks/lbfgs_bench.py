"""L-BFGS with its zoom line search, gradtx against optax: compile time and step time.

Usage (from the repository root)::

    PYTHONPATH=. python benchmarks/lbfgs_bench.py [--x64] [--steps N] [--reps R]

Problems: Rosenbrock's chained function, n = 100, from (−1.2, 1, −1.2, 1, ...); multinomial
logistic regression on the digits data (``examples/digits_data.py``: the 1,437 training
images, 64 features, 10 classes, L2 1e-3; 650 parameters). For each library, one jitted step
``(x, state) -> (x', state')`` (value and gradient, ``lbfgs().update`` with ``value``,
``grad`` and ``value_fn``, ``apply_updates``):

- ``compile_s``: ``jax.jit(step).lower(...).compile()`` wall time (tracing excluded, reported
  as ``trace_s``);
- ``step``: the mean time of ``N`` consecutive steps from the start (the line search does real
  work: several evaluations on the first steps), median and best of ``R`` rounds that
  alternate between the libraries;
- ``solve``: a whole run to ``‖∇f‖∞ <= 1e-4`` (float64: 1e-8) in one ``lax.while_loop``
  (compile and run wall times, iterations), which checks both libraries take the same steps.

Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

import gradtx  # noqa: E402


def rosenbrock(x):
    return jnp.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)


def logistic_problem(dtype):
    from digits_data import load_data

    x, _, y, _ = load_data(0)
    n = len(x) // 5  # the original images (load_data appends four shifted copies)
    xs, ys = jnp.asarray(x[:n], dtype), jnp.asarray(y[:n])

    def f(p):
        logp = jax.nn.log_softmax(xs @ p["w"] + p["b"][None, :])
        nll = -jnp.mean(jnp.take_along_axis(logp, ys[:, None], axis=1))
        return nll + 0.5e-3 * jnp.sum(p["w"] ** 2)

    return f, {"w": jnp.zeros((64, 10), dtype), "b": jnp.zeros(10, dtype)}


def _step_fn(lib, f):
    tx = lib.lbfgs()
    vg = jax.value_and_grad(f)

    def step(x, state):
        v, g = vg(x)
        u, state = tx.update(g, state, x, value=v, grad=g, value_fn=f)
        return lib.apply_updates(x, u), state

    return tx, step


def _solve_fn(lib, f, gtol, maxiter=5000):
    tx, step = _step_fn(lib, f)

    def solve(x0):
        def more(c):
            g = jax.grad(f)(c[0])
            return (c[2] < maxiter) & (jnp.max(jnp.abs(ravel_pytree(g)[0])) > gtol)

        def body(c):
            x, s = step(c[0], c[1])
            return x, s, c[2] + 1

        return jax.lax.while_loop(more, body, (x0, tx.init(x0), jnp.int32(0)))

    return solve


def compile_step(lib, f, x0):
    """The compiled step, its first state, and the trace and compile wall times."""
    tx, step = _step_fn(lib, f)
    state0 = tx.init(x0)
    t0 = time.perf_counter()
    lowered = jax.jit(step).lower(x0, state0)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    return compiled, state0, t1 - t0, time.perf_counter() - t1


def time_steps(compiled, x0, state0, steps):
    """The mean wall time of ``steps`` consecutive steps from the start."""
    x, s = x0, state0
    jax.block_until_ready((x, s))
    t = time.perf_counter()
    for _ in range(steps):
        x, s = compiled(x, s)
    jax.block_until_ready((x, s))
    return (time.perf_counter() - t) / steps


def solve(lib, f, x0, gtol):
    """A whole run in one while loop: compile and run wall times, iterations, final value."""
    fn = jax.jit(_solve_fn(lib, f, gtol))
    t0 = time.perf_counter()
    compiled = fn.lower(x0).compile()
    t1 = time.perf_counter()
    out = compiled(x0)
    jax.block_until_ready(out)
    return t1 - t0, time.perf_counter() - t1, int(out[2]), float(f(out[0]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--x64", action="store_true", help="float64 (default float32)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    if args.x64:
        jax.config.update("jax_enable_x64", True)
    dtype = jnp.float64 if args.x64 else jnp.float32
    problems = {
        "Rosenbrock n=100": (rosenbrock, jnp.tile(jnp.array([-1.2, 1.0], dtype), 50)),
        "digits logistic (650 params)": logistic_problem(dtype),
    }
    print(f"jax {jax.__version__}, optax {optax.__version__}, {jax.devices()[0]}, {dtype.__name__}")
    print(
        f"step: mean of {args.steps} steps from the start; median (best) of {args.reps} "
        "interleaved rounds\n"
    )
    head = "| problem | library | compile (s) | trace (s) | step (µs) | solve: compile (s) | "
    print(head + "solve: run (s) | iterations | final f |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, (f, x0) in problems.items():
        libs = {"gradtx": gradtx, "optax": optax}
        with jax.numpy_dtype_promotion("standard"):
            steps = {k: compile_step(lib, f, x0) for k, lib in libs.items()}
            rounds: dict[str, list[float]] = {k: [] for k in libs}
            for r in range(args.reps + 1):  # interleaved; round 0 warms up
                for k in libs if r % 2 else reversed(list(libs)):
                    compiled, state0, _, _ = steps[k]
                    t = time_steps(compiled, x0, state0, args.steps)
                    if r:
                        rounds[k].append(t)
            for k, lib in libs.items():
                _, _, trace_s, compile_s = steps[k]
                sc, sr, iters, final = solve(lib, f, x0, 1e-8 if args.x64 else 1e-4)
                step_us = 1e6 * statistics.median(rounds[k])
                best_us = 1e6 * min(rounds[k])
                print(
                    f"| {name} | {k} | {compile_s:.2f} | {trace_s:.2f} | {step_us:.0f} "
                    f"({best_us:.0f}) | {sc:.2f} | {sr:.3f} | {iters} | {final:.3g} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
