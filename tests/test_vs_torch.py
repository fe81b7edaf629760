"""gradtx's named optimizers against ``torch.optim``, step by step on the same gradients.

Each case runs a torch optimizer and the gradtx optimizer with the settings under which their
definitions agree, for ``STEPS`` steps on the same parameters (a matrix, a vector and a 3-d
array) and the same seeded random gradients (set as ``p.grad`` in torch), and compares the
parameters after every step. Both sides run in float64 (jax's x64 switched on for the test
only, ``jax.enable_x64``), where the two implementations agree to rounding, and in float32.

Where the definitions differ by design (each documented in a ``Warning`` of the gradtx
docstring) the settings are chosen to make the difference vanish or negligible; the comment at
each case says which and why.
"""

from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradtx

torch = pytest.importorskip("torch")

STEPS = 25
SHAPES = {"w": (5, 3), "b": (3,), "k": (2, 3, 2)}

# Tolerances on the parameters, per dtype. float64: both sides compute the same formula, so
# only rounding (a few ulps per operation, accumulated over the steps) separates them.
# float32: the usual single-precision bound.
TOL = {
    np.float64: {"rtol": 1e-10, "atol": 1e-12},
    np.float32: {"rtol": 1e-5, "atol": 1e-6},
}


def _data(seed: int = 0):
    """Parameters and a sequence of gradients whose overall scale wanders up and down.

    The wandering scale makes second-moment estimates both grow and shrink (so AMSGrad's maximum
    and Adamax's infinity norm are exercised, not just their monotone phase).
    """
    rng = np.random.default_rng(seed)
    params = {k: rng.normal(size=s) for k, s in SHAPES.items()}
    scales = np.exp(rng.normal(scale=0.7, size=STEPS))
    grads = [{k: c * rng.normal(size=s) for k, s in SHAPES.items()} for c in scales]
    return params, grads


def _x64(dtype) -> contextlib.AbstractContextManager:
    return jax.enable_x64(True) if dtype == np.float64 else contextlib.nullcontext()


def _run_torch(make, params, grads, dtype):
    tdt = {np.float64: torch.float64, np.float32: torch.float32}[dtype]
    # torch keeps scalar state (step counts, NAdam's μ product) in the *default* dtype, float32
    # unless changed: in float64 runs that alone would cost ~1e-7 relative (NAdam).
    default = torch.get_default_dtype()
    torch.set_default_dtype(tdt)
    try:
        tp = {k: torch.nn.Parameter(torch.tensor(v, dtype=tdt)) for k, v in params.items()}
        opt = make(list(tp.values()))
        out = []
        for g in grads:
            for k, p in tp.items():
                p.grad = torch.tensor(g[k], dtype=tdt)
            opt.step()
            out.append({k: p.detach().numpy().copy() for k, p in tp.items()})
    finally:
        torch.set_default_dtype(default)
    return out


def _run_gradtx(tx, params, grads, dtype, jit=False):
    # Eager by default: per-operation compilations are shared by all cases, where a jitted
    # update would cost an XLA compilation per case (test_jit_matches_torch covers jit).
    with _x64(dtype):
        p = {k: jnp.asarray(v, dtype) for k, v in params.items()}
        state = tx.init(p)
        update = jax.jit(tx.update) if jit else tx.update
        out = []
        for g in grads:
            u, state = update({k: jnp.asarray(v, dtype) for k, v in g.items()}, state, p)
            p = gradtx.apply_updates(p, u)
            assert all(x.dtype == dtype for x in p.values())
            out.append({k: np.asarray(v) for k, v in p.items()})
    return out, state


def _compare(tx, make_torch, dtype, rtol=None, atol=None, data=None, jit=False):
    params, grads = data if data is not None else _data()
    ours, state = _run_gradtx(tx, params, grads, dtype, jit=jit)
    theirs = _run_torch(make_torch, params, grads, dtype)
    tol = dict(TOL[dtype])
    tol.update({k: v for k, v in (("rtol", rtol), ("atol", atol)) if v is not None})
    for step, (a, b) in enumerate(zip(ours, theirs), 1):
        for k in SHAPES:
            np.testing.assert_allclose(
                a[k], b[k], **tol, err_msg=f"{tx.name}: param {k!r} after step {step}"
            )
    # The optimizer really moved the parameters (the comparison is not vacuous).
    assert not np.allclose(ours[-1]["w"], params["w"], atol=1e-3)
    return state


optim = torch.optim

# (id, gradtx optimizer, torch constructor). All with the settings under which the two agree.
# Some cases use a large eps (0.1) so that its placement (inside or outside a root, before or
# after the bias correction) changes the result well beyond the tolerance.
CASES = [
    ("sgd", gradtx.sgd(0.05), lambda p: optim.SGD(p, lr=0.05)),
    ("sgd_momentum", gradtx.sgd(0.05, momentum=0.9), lambda p: optim.SGD(p, lr=0.05, momentum=0.9)),
    (
        "sgd_nesterov",
        gradtx.sgd(0.05, momentum=0.9, nesterov=True),
        lambda p: optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True),
    ),
    # Adagrad: eps outside the root in both. torch's defaults are initial_accumulator_value=0
    # and eps=1e-10, gradtx's (optax's) 0.1 and 1e-7: pass them explicitly on one side.
    (
        "adagrad",
        gradtx.adagrad(0.1, initial_accumulator_value=0.1, eps=0.1),
        lambda p: optim.Adagrad(p, lr=0.1, initial_accumulator_value=0.1, eps=0.1),
    ),
    (
        "adagrad_torch_defaults",
        gradtx.adagrad(0.1, initial_accumulator_value=0.0, eps=1e-10),
        lambda p: optim.Adagrad(p, lr=0.1),
    ),
    # RMSprop: torch's eps is outside the root, gradtx's default (optax's) inside, so
    # eps_in_sqrt=False is passed; torch's default alpha is 0.99 and gradtx's decay 0.9 (the
    # rmsprop Warning), so it is passed explicitly too.
    (
        "rmsprop",
        gradtx.rmsprop(0.01, decay=0.9, eps=0.1, eps_in_sqrt=False),
        lambda p: optim.RMSprop(p, lr=0.01, alpha=0.9, eps=0.1),
    ),
    (
        "rmsprop_centered",
        gradtx.rmsprop(0.01, decay=0.99, centered=True, eps_in_sqrt=False),
        lambda p: optim.RMSprop(p, lr=0.01, alpha=0.99, centered=True),
    ),
    (
        "rmsprop_momentum",
        gradtx.rmsprop(0.01, decay=0.9, momentum=0.9, eps_in_sqrt=False),
        lambda p: optim.RMSprop(p, lr=0.01, alpha=0.9, momentum=0.9),
    ),
    (
        "rmsprop_centered_momentum",
        gradtx.rmsprop(0.01, decay=0.9, centered=True, momentum=0.5, eps_in_sqrt=False),
        lambda p: optim.RMSprop(p, lr=0.01, alpha=0.9, centered=True, momentum=0.5),
    ),
    ("adadelta", gradtx.adadelta(1.0), lambda p: optim.Adadelta(p, lr=1.0, rho=0.9, eps=1e-6)),
    # Coupled L2 decay, added to the gradient before the statistics in both.
    (
        "adadelta_weight_decay",
        gradtx.adadelta(0.5, rho=0.95, eps=1e-5, weight_decay=0.1),
        lambda p: optim.Adadelta(p, lr=0.5, rho=0.95, eps=1e-5, weight_decay=0.1),
    ),
    ("adam", gradtx.adam(0.01), lambda p: optim.Adam(p, lr=0.01)),
    (
        "adam_betas",
        gradtx.adam(0.01, b1=0.8, b2=0.95, eps=0.1),
        lambda p: optim.Adam(p, lr=0.01, betas=(0.8, 0.95), eps=0.1),
    ),
    # AdamW: the default weight decay differs (optax's 1e-4 vs torch's 1e-2, the adamw
    # Warning), so it is passed on both sides. Both multiply it by the learning rate.
    (
        "adamw",
        gradtx.adamw(0.01, weight_decay=0.1),
        lambda p: optim.AdamW(p, lr=0.01, weight_decay=0.1),
    ),
    # NAdam: torch warms β1 up with μ_t = β1·(1 − ½·0.96^(t·momentum_decay)); gradtx keeps β1
    # constant (the nadam Warning). Note that momentum_decay=0 does *not* give a constant β1 in
    # torch but μ_t = β1/2 (see test_nadam_torch_momentum_decay_zero_is_half_beta1); a huge
    # momentum_decay makes 0.96^(t·ψ) underflow to exactly 0, so μ_t = β1 at every step.
    (
        "nadam",
        gradtx.nadam(0.01),
        lambda p: optim.NAdam(p, lr=0.01, momentum_decay=1e9),
    ),
    (
        "nadamw",
        gradtx.nadamw(0.01, weight_decay=0.1),
        lambda p: optim.NAdam(
            p, lr=0.01, weight_decay=0.1, decoupled_weight_decay=True, momentum_decay=1e9
        ),
    ),
    # AMSGrad: both take the maximum over the raw second moment and bias-correct afterwards
    # (AmsgradScale's Warning says optax differs). b2=0.9 and the wandering gradient scale make
    # the maximum bind (checked below, in test_amsgrad_maximum_binds).
    (
        "amsgrad",
        gradtx.amsgrad(0.01, b2=0.9),
        lambda p: optim.Adam(p, lr=0.01, betas=(0.9, 0.9), amsgrad=True),
    ),
]

# Definitions that differ by the placement of eps; with eps tiny the difference is far below
# the stated tolerance. (id, gradtx optimizer, torch constructor, float64 rtol).
EPS_CASES = [
    # Adamax: torch, optax and gradtx all use max(β2·u, |g| + ε); a large ε (1e-3) checks the
    # placement, so the definitions agree to rounding.
    ("adamax", gradtx.adamax(0.01, eps=1e-3), lambda p: optim.Adamax(p, lr=0.01, eps=1e-3), 1e-10),
    # RAdam Warning: torch divides by √v_t + ε and multiplies by √(1−β2^t), i.e. its ε is
    # gradtx's ε/√(1−β2^t); relative O(ε/√v̂) ≲ 1e-8 here. Steps 1-5 are the un-rectified
    # (SGD with momentum) phase in both, the rest rectified: both phases are covered.
    ("radam", gradtx.radam(0.01, eps=1e-12), lambda p: optim.RAdam(p, lr=0.01, eps=1e-12), 1e-7),
]

DTYPES = [pytest.param(np.float64, id="f64"), pytest.param(np.float32, id="f32")]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("tx", "make_torch"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_matches_torch(tx, make_torch, dtype):
    _compare(tx, make_torch, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("tx", "make_torch", "rtol"), [c[1:] for c in EPS_CASES], ids=[c[0] for c in EPS_CASES]
)
def test_matches_torch_with_tiny_eps(tx, make_torch, rtol, dtype):
    # float32 keeps its usual tolerance: the eps difference is far below single precision.
    _compare(tx, make_torch, dtype, rtol=rtol if dtype == np.float64 else None)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", ["adamw", "rmsprop_centered_momentum", "nadam"])
def test_jit_matches_torch(case, dtype):
    """The same under jit (for float64, traced and compiled with x64 on inside the scope)."""
    _, tx, make_torch = next(c for c in CASES if c[0] == case)
    _compare(tx, make_torch, dtype, jit=True)


def test_amsgrad_maximum_binds():
    """The amsgrad case above is not Adam in disguise: the running maximum is used."""
    state = _compare(
        gradtx.amsgrad(0.01, b2=0.9),
        lambda p: optim.Adam(p, lr=0.01, betas=(0.9, 0.9), amsgrad=True),
        np.float64,
    )
    knobs = state.knobs
    assert np.any(np.asarray(knobs.nu_max["w"]) > np.asarray(knobs.nu["w"]) * (1 + 1e-6))


def test_radam_covers_both_phases():
    """With β2 = 0.999 the rectification starts at step 6, inside the compared steps."""
    b2, threshold = 0.999, 5.0
    rho_inf = 2 / (1 - b2) - 1
    rho = [rho_inf - 2 * t * b2**t / (1 - b2**t) for t in range(1, STEPS + 1)]
    assert rho[0] <= threshold < rho[-1]


def test_nadam_torch_momentum_decay_zero_is_half_beta1():
    """torch's ``momentum_decay=0`` is not gradtx's constant β1 (μ_t = β1·(1 − ½·0.96⁰) = β1/2).

    This pins why the nadam cases above use a huge ``momentum_decay`` rather than 0.
    """
    params, grads = _data()
    ours, _ = _run_gradtx(gradtx.nadam(0.01), params, grads, np.float64)
    theirs = _run_torch(
        lambda p: optim.NAdam(p, lr=0.01, momentum_decay=0.0), params, grads, np.float64
    )
    assert not np.allclose(ours[-1]["w"], theirs[-1]["w"], rtol=1e-6, atol=1e-8)


def test_x64_is_scoped():
    """The float64 cases switched x64 on for themselves only."""
    assert jnp.zeros(()).dtype == jnp.float32
