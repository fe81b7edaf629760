"""Every name gradtx shares with optax takes optax's positional parameters, in optax's order.

"Drop-in" means the same call, positional arguments included, means the same thing. For each
public function present in both ``gradtx`` and ``optax`` (and in ``gradtx.schedules`` and
``optax.schedules`` / ``optax``), discovered from the modules so a new shared name is covered:

- the positional parameters have optax's names, kinds, order and defaults, and gradtx has no
  further positional parameters (gradtx-only parameters are keyword-only);
- every keyword-only parameter of optax is accepted, with optax's default.

Intentional differences are listed in ``DIFFERENCES`` (and in docs/migration.md) and pinned.
"""

from __future__ import annotations

import inspect

import pytest

import gradtx
import gradtx.schedules

optax = pytest.importorskip("optax")

POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)

# (module path, name, parameter): (gradtx's default, why) -- each also in docs/migration.md
DIFFERENCES = {
    ("gradtx", "scale_by_factored_rms", "decay_rate_fn"): (
        None,
        "None is optax's default rule 1 - t**(-decay_rate); other functions are not supported",
    ),
    ("gradtx", "lbfgs", "linesearch"): (
        gradtx.scale_by_zoom_linesearch(max_linesearch_steps=20, initial_guess_strategy="one"),
        "the same settings as optax's default, as gradtx's own zoom search",
    ),
}


def _functions(module) -> dict:
    return {
        n: getattr(module, n)
        for n in dir(module)
        if not n.startswith("_")
        and callable(getattr(module, n))
        and not inspect.isclass(getattr(module, n))
        and not inspect.ismodule(getattr(module, n))
    }


def _shared() -> list[tuple[str, str]]:
    pairs = []
    theirs_top = _functions(optax)
    for n in sorted(set(_functions(gradtx)) & set(theirs_top)):
        pairs.append(("gradtx", n))
    theirs_sched = {**theirs_top, **_functions(optax.schedules)}
    for n in sorted(set(_functions(gradtx.schedules)) & set(theirs_sched)):
        pairs.append(("gradtx.schedules", n))
    return pairs


SHARED = _shared()


def _ours(module: str, name: str):
    return getattr(gradtx if module == "gradtx" else gradtx.schedules, name)


def _theirs(module: str, name: str):
    if module == "gradtx.schedules" and hasattr(optax.schedules, name):
        return getattr(optax.schedules, name)
    return getattr(optax, name)


def _same_default(a, b) -> bool:
    if a is b:
        return True
    try:
        return bool(a == b) and type(a) is type(b)
    except Exception:
        return False


def test_the_shared_set_is_discovered():
    names = {n for _, n in SHARED}
    # a few that must be there; the rest is whatever both modules have
    assert {"adam", "adamw", "sgd", "rmsprop", "lion", "scale_by_adam", "trace"} <= names


@pytest.mark.parametrize("module, name", SHARED, ids=[f"{m}.{n}" for m, n in SHARED])
def test_signature_matches_optax(module, name):
    ours = inspect.signature(_ours(module, name)).parameters
    theirs = inspect.signature(_theirs(module, name)).parameters
    t_pos = [p for p in theirs.values() if p.kind in POSITIONAL]
    o_pos = [p for p in ours.values() if p.kind in POSITIONAL]
    assert [p.name for p in o_pos] == [p.name for p in t_pos], (
        f"{module}.{name}: positional parameters {[p.name for p in o_pos]}, optax's "
        f"{[p.name for p in t_pos]}"
    )
    t_var = [p.kind for p in theirs.values() if p.kind == inspect.Parameter.VAR_POSITIONAL]
    o_var = [p.kind for p in ours.values() if p.kind == inspect.Parameter.VAR_POSITIONAL]
    assert o_var == t_var, f"{module}.{name}: *args differs from optax"
    problems = []
    for p in theirs.values():
        if p.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            continue
        q = ours.get(p.name)
        if q is None:
            problems.append(f"{p.name} missing")
            continue
        if q.kind is not p.kind and not (
            p.kind is inspect.Parameter.KEYWORD_ONLY and q.kind in POSITIONAL
        ):
            problems.append(f"{p.name} is {q.kind.description}, optax's {p.kind.description}")
        documented = DIFFERENCES.get((module, name, p.name))
        if documented is not None:
            assert _same_default(q.default, documented[0]), (module, name, p.name)
            continue
        if not _same_default(q.default, p.default):
            problems.append(f"{p.name}={q.default!r}, optax's {p.default!r}")
    assert not problems, f"{module}.{name}: " + "; ".join(problems)


def test_adamw_positional_call_means_what_it_means_in_optax():
    """``adamw(lr, b1, b2, eps, eps_root, mu_dtype, weight_decay)`` sets weight_decay, not mask."""
    tx = gradtx.adamw(1e-3, 0.9, 0.999, 1e-8, 0.0, None, 1e-2)
    decay = [s for s in tx.stages if type(s).__name__ == "AddDecayedWeights"]
    assert len(decay) == 1 and decay[0].weight_decay == 1e-2 and decay[0].mask is None


# --- traced hyperparameters: optax.inject_hyperparams and jax.vmap over constructor arguments --

NAMED = [
    "sgd", "sign_sgd", "adagrad", "rmsprop", "adadelta", "adam", "adamw", "nadam", "nadamw",
    "adamax", "amsgrad", "adabelief", "yogi", "radam", "lion", "lamb", "lars", "adafactor",
]  # fmt: skip
# numeric arguments whose default is None (no such stage): the value to give them
GIVEN = {
    ("sgd", "momentum"): 0.9,
    ("rmsprop", "momentum"): 0.5,
    ("adadelta", "learning_rate"): 0.5,
    ("adafactor", "learning_rate"): 0.1,
    ("adafactor", "momentum"): 0.9,
    ("adafactor", "weight_decay_rate"): 0.01,
}
# ints that shape arrays, and dtype_momentum (a callable, which optax would take for a schedule)
STATIC = {"adafactor": ("min_dim_size_to_factor", "dtype_momentum")}


def _numeric_args(name: str) -> dict:
    """Every numeric argument of ``gradtx.<name>`` with a value other than its default."""
    out = {}
    for p in inspect.signature(getattr(gradtx, name)).parameters.values():
        if p.name in STATIC.get(name, ()):
            continue
        d = p.default
        if (name, p.name) in GIVEN:
            out[p.name] = GIVEN[(name, p.name)]
        elif p.name == "learning_rate":
            out[p.name] = 0.1
        elif isinstance(d, bool) or not isinstance(d, (int, float)):
            continue
        elif isinstance(d, int):
            out[p.name] = d + 1
        else:
            out[p.name] = d * 0.5 if d != 0 else 0.01
    return out


def _problem():
    import jax.numpy as jnp

    params = {"w": jnp.linspace(-1.0, 1.0, 12).reshape(3, 4), "b": jnp.array([0.5, -1.0, 2.0])}
    grads = [{"w": jnp.cos(params["w"] * (i + 1)), "b": jnp.sin(params["b"] + i)} for i in range(2)]
    return params, grads


def _updates(tx, params, grads, jit=True):
    import jax

    update = jax.jit(tx.update) if jit else tx.update
    state = tx.init(params)
    out = []
    for g in grads:
        u, state = update(g, state, params)
        out.append(u)
    return out


@pytest.mark.parametrize("name", NAMED)
def test_inject_hyperparams_traces_every_numeric_argument(name):
    import jax
    import numpy as np

    args = _numeric_args(name)
    params, grads = _problem()
    expected = _updates(getattr(gradtx, name)(**args), params, grads)
    with jax.numpy_dtype_promotion("standard"):  # optax's wrapper mixes int32 and float
        tx = optax.inject_hyperparams(getattr(gradtx, name), static_args=STATIC.get(name, ()))
        got = _updates(tx(**args), params, grads)
        assert set(tx(**args).init(params).hyperparams) == set(args)
    for u, e in zip(got, expected):
        for k in e:
            np.testing.assert_allclose(u[k], e[k], rtol=1e-6, atol=1e-7, err_msg=f"{name} {k}")


@pytest.mark.parametrize("name", NAMED)
def test_vmap_over_every_numeric_argument(name):
    """The optimizer is built inside the vmapped function from a batch of every argument."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    args = _numeric_args(name)
    other = {k: (v * 0.8 if isinstance(v, float) else v + 1) for k, v in args.items()}
    params, grads = _problem()

    def run(hp):
        return _updates(getattr(gradtx, name)(**hp), params, grads, jit=False)

    batch = {k: jnp.asarray([args[k], other[k]]) for k in args}
    got = jax.jit(jax.vmap(run))(batch)
    for i, hp in enumerate((args, other)):
        for u, e in zip(got, _updates(getattr(gradtx, name)(**hp), params, grads)):
            for k in e:
                np.testing.assert_allclose(
                    u[k][i], e[k], rtol=2e-6, atol=1e-7, err_msg=f"{name} {k} {hp}"
                )
