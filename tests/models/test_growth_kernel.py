"""The hand-written growth kernel equals PyMC's marginal model (models/growth_kernel.py).

Reference: ``build_marginal_model`` compiled by PyTensor (its own log density with the
transforms' Jacobians, and PyTensor's symbolic gradient), at random unconstrained points,
for pooled factors sampled centred and non-centred, with and without factors.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from pymc.initial_point import make_initial_point_fn

from models.growth import build_marginal_model
from models.growth_kernel import (
    build_kernel_model,
    expand_point,
    logp_and_grad,
    support_point,
    variable_names,
)
from models.growth_spec import GrowthModelSpec, SimulationTruth, prepare_growth_data, simulate_growth_panel

warnings.filterwarnings("ignore", category=UserWarning, module="pytensor")

TRUTH = SimulationTruth(
    intercept=50.0, slope=0.8, arm_intercept=0.5, slope_effect=1.5, sd_intercept=8.0,
    sd_slope=1.5, corr_intercept_slope=0.3, sd_residual=5.0,
    country_effects=(0.6, -0.6, 0.0), cohort_effects=(0.3, -0.3),
)


def _case(parametrization: str, groups: tuple[str, ...], seed: int = 3):
    panel = simulate_growth_panel(60, 5, TRUTH, p_missing=0.3, seed=seed)
    spec = GrowthModelSpec("x", (0.0, 100.0), groups=groups,
                           group_parametrization=parametrization)
    data = prepare_growth_data(panel, spec)
    return spec, data, build_marginal_model(spec, data), build_kernel_model(spec, data)


CASES = [
    ("centered", ("country", "cohort")),
    ("non_centered", ("country", "cohort")),
    ("non_centered", ("country",)),
    ("centered", ()),
]


@pytest.mark.parametrize(("param", "groups"), CASES)
def test_logp_and_gradient_equal_pymc(param, groups):
    spec, data, model, kern = _case(param, groups)
    value_names = [model.rvs_to_values[v].name for v in model.free_RVs]
    assert value_names == kern.names[: len(value_names)]
    logp = model.compile_logp()
    dlogp = model.compile_dlogp()
    shapes = kern.shapes
    rng = np.random.default_rng(7)
    for _ in range(5):
        x = kern.init + rng.normal(0.0, 0.7, kern.n_dim)
        point, at = {}, 0
        for name in value_names:
            size = int(np.prod(shapes[name]))
            point[name] = x[at: at + size].reshape(shapes[name])
            at += size
        grad = np.empty(kern.n_dim)
        ours = logp_and_grad(x, kern.packed, grad)
        assert ours == pytest.approx(float(logp(point)), rel=1e-10, abs=1e-8)
        np.testing.assert_allclose(grad, dlogp(point), rtol=1e-8, atol=1e-8)


def test_gradient_matches_finite_differences():
    """Independent of PyTensor: central differences of the kernel's own log density."""
    _, _, _, kern = _case("centered", ("country", "cohort"))
    x = kern.init + np.random.default_rng(1).normal(0.0, 0.5, kern.n_dim)
    grad = np.empty(kern.n_dim)
    logp_and_grad(x, kern.packed, grad)
    scratch = np.empty(kern.n_dim)
    for i in range(kern.n_dim):
        h = 1e-5 * max(1.0, abs(x[i]))
        up, down = x.copy(), x.copy()
        up[i] += h
        down[i] -= h
        fd = (logp_and_grad(up, kern.packed, scratch) - logp_and_grad(down, kern.packed, scratch))
        assert grad[i] == pytest.approx(fd / (2 * h), rel=1e-5, abs=1e-5), i


@pytest.mark.parametrize(("param", "groups"), CASES[:2])
def test_initial_point_and_expand_equal_pymc(param, groups):
    spec, data, model, kern = _case(param, groups)
    ref = make_initial_point_fn(model=model, return_transformed=True, jitter_rvs=set())(0)
    value_names, constrained = variable_names(tuple(data.design.groups), kern.centered)
    flat = np.concatenate([np.ravel(ref[n]) for n in value_names])
    sizes = tuple(int(s) for s in data.design.group_sizes)
    priors = spec.resolved_priors(data.design.final_time)
    np.testing.assert_allclose(support_point(priors, sizes), flat, rtol=1e-12)

    x = kern.init + np.random.default_rng(2).normal(0.0, 0.5, kern.n_dim)
    out = np.empty(kern.n_expanded)
    expand_point(x, kern.packed, out)
    at, point = 0, {}
    for name in value_names:
        size = int(np.prod(kern.shapes[name]))
        point[name] = x[at: at + size].reshape(kern.shapes[name])
        at += size
    np.testing.assert_array_equal(out[: kern.n_dim], x)
    by_name = {v.name: v for v in model.unobserved_value_vars}
    fn = model.compile_fn([by_name[n] for n in constrained], inputs=model.value_vars,
                          on_unused_input="ignore")
    want = np.concatenate([np.ravel(v) for v in fn(point)])
    np.testing.assert_allclose(out[kern.n_dim:], want, rtol=1e-12, atol=1e-12)


def test_with_data_rebinds_and_rejects_other_structures():
    spec, data, _, kern = _case("non_centered", ("country", "cohort"))
    other_spec, other, _, other_kern = _case("non_centered", ("country", "cohort"), seed=9)
    priors = other_spec.resolved_priors(other.design.final_time)
    rebound = kern.with_data(data=other, priors=priors)
    x = kern.init + 0.1
    g1, g2 = np.empty(kern.n_dim), np.empty(kern.n_dim)
    assert logp_and_grad(x, rebound.packed, g1) == logp_and_grad(x, other_kern.packed, g2)
    _, fewer, _, _ = _case("non_centered", ("country",))
    with pytest.raises(ValueError, match="same structure"):
        kern.with_data(data=fewer, priors=priors)
