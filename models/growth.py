"""Bayesian longitudinal growth models (PyMC + nutpie) for one outcome scale.

Two compilations of the same ``GrowthModelSpec`` (see ``models.growth_spec`` for the model):

* ``build_latent_model``: participant random effects as explicit latent variables (the
  reference; cost grows with participants).
* ``build_marginal_model``: the random effects integrated out analytically. Each
  participant's observed scores are MVN with mean ``Z_i gamma`` and covariance
  ``Sigma_i = Z_i D Z_i' + sigma^2 I`` (``Z_i`` rows ``(1, t)``), and because the mean lies
  in the column span of ``Z_i``, Woodbury's identity and the matrix-determinant lemma
  reduce the log-likelihood to 2x2 algebra on per-cell sums (Searle, Casella & McCulloch
  1992, *Variance Components*, sec. 6.3; Pinheiro & Bates 2000, sec. 2.2)::

      M = sigma^2 I_2 + D G,           G = Z'Z = [[k, sum t], [sum t, sum t^2]]
      log|Sigma| = (k - 2) log sigma^2 + log|M|
      Sigma^-1 = sigma^-2 (I - Z M^-1 D Z')
      tr(Sigma^-1 S) = sigma^-2 [tr S - tr(M^-1 D Z'SZ)]
      loglik(cell) = -1/2 [n (k log 2 pi + log|Sigma|) + tr(Sigma^-1 S)]

  with ``S = sum_i (y_i - mu)(y_i - mu)'`` expanded through the cell sums
  (``models.growth_spec.GrowthData.cells``). A gradient costs the same for 10^4 or 10^6
  participants, the graph is elementwise on a few hundred cells (no matrix ops, nothing
  whose shape depends on the data), and all data and prior constants are ``pm.Data`` so a
  compiled model is reused with new data via nutpie's ``with_data`` (``compile_growth_model``
  caches by structure). By default nutpie samples ``models.growth_kernel`` instead: the same
  log density and gradient written out by hand, tested equal to this PyMC model.

``fit_growth_model(panel, GrowthConfig) -> GrowthResult`` runs the whole analysis with a
diagnostics gate and a posterior predictive check; ``compute_participant_effects`` gives
participant-level effects from their closed-form conditional posterior.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import arviz as az
import numpy as np
import polars as pl
import xarray as xr

from models.growth_spec import (
    CELL_COLUMNS,
    DataIssue,
    GrowthData,
    GrowthDesign,
    GrowthModelSpec,
    GrowthPriors,
    ModelKind,
    prepare_growth_data,
)

# PyMC and PyTensor are imported where a PyMC model is built: the default (kernel) backend
# samples without them, and importing them costs seconds on every CLI run.
if TYPE_CHECKING:
    import pymc as pm

GateStatus = Literal["pass", "fail"]
Backend = Literal["auto", "kernel", "numba", "c"]
ProgressStage = Literal["preparing", "compiling", "sampling", "summarising", "done"]
MessageCode = Literal[
    "ok", "gate_failed", "empty_arm", "too_few_participants", "no_variance", "too_few_waves"
]

POPULATION_PARAMETERS: tuple[str, ...] = (
    "intercept",
    "slope",
    "arm_intercept",
    "slope_effect",
    "sd_intercept",
    "sd_slope",
    "corr_intercept_slope",
    "sd_residual",
)
_LOG_2PI = math.log(2.0 * math.pi)


# --------------------------------------------------------------------------------------
# compilation to PyMC
# --------------------------------------------------------------------------------------


def _population_block(
    design: GrowthDesign, priors: GrowthPriors, centered: Sequence[bool]
) -> dict[str, Any]:
    """Declare priors (as shared data) and population parameters in the current model."""
    import pymc as pm
    import pytensor.tensor as pt

    d = {k: pm.Data(k, np.float64(v)) for k, v in priors.constants().items()}
    center = pm.Data("center", np.float64(design.center))
    out: dict[str, Any] = {"center": center}
    out["intercept"] = pm.Normal(
        "intercept", d["prior_intercept_mu"], d["prior_intercept_sigma"]
    )
    out["slope"] = pm.Normal("slope", d["prior_slope_mu"], d["prior_slope_sigma"])
    out["arm_intercept"] = pm.Normal(
        "arm_intercept", d["prior_arm_intercept_mu"], d["prior_arm_intercept_sigma"]
    )
    out["slope_effect"] = pm.Normal(
        "slope_effect", d["prior_slope_effect_mu"], d["prior_slope_effect_sigma"]
    )
    out["sd_intercept"] = pm.HalfNormal("sd_intercept", d["prior_sd_intercept_sigma"])
    out["sd_slope"] = pm.HalfNormal("sd_slope", d["prior_sd_slope_sigma"])
    corr_beta = pm.Beta("corr_beta", d["prior_corr_eta"], d["prior_corr_eta"])
    out["corr_intercept_slope"] = 2.0 * corr_beta - 1.0
    out["sd_residual"] = pm.HalfNormal("sd_residual", d["prior_sd_residual_sigma"])
    out["group_dev"] = {}
    for g, size, cen in zip(design.groups, design.group_sizes, centered, strict=True):
        tau = pm.HalfNormal(f"sd_slope_effect_{g}", d["prior_sd_group_effect_sigma"])
        w = pm.Data(f"share_{g}", np.asarray(design.level_shares[g], dtype=np.float64))
        # zero-sum deviations: the level mean is not identified by the data, and leaving it
        # free under N(0, tau) creates a funnel (divergences) between it and tau
        if cen:
            dev = pm.ZeroSumNormal(f"dev_slope_effect_{g}", sigma=tau, shape=size)
        else:
            dev = tau * pm.ZeroSumNormal(f"z_slope_effect_{g}", sigma=1.0, shape=size)
        # deviation of each level from the study's participant-weighted average effect
        out["group_dev"][g] = dev - pt.dot(w, dev)
    return out


def _cell_arrays(data: GrowthData) -> dict[str, np.ndarray]:
    cells = data.cells
    out = {f"cell_{c}": cells[c].cast(pl.Float64).to_numpy().copy() for c in CELL_COLUMNS}
    for g in data.design.groups:
        out[f"cell_{g}_idx"] = cells[f"{g}_idx"].cast(pl.Int64).to_numpy().copy()
    return out


def _row_arrays(data: GrowthData) -> dict[str, np.ndarray]:
    rows = data.rows
    out = {
        "row_pid": rows["pid"].cast(pl.Int64).to_numpy().copy(),
        "row_t": rows["t"].to_numpy().copy(),
        "row_y": rows["y"].to_numpy().copy(),
        "row_arm": rows["arm"].cast(pl.Float64).to_numpy().copy(),
    }
    for g in data.design.groups:
        out[f"row_{g}_idx"] = rows[f"{g}_idx"].cast(pl.Int64).to_numpy().copy()
    return out


def _woodbury_terms(s2, d00, d11, d01, k, g01, g11):  # noqa: ANN001, ANN202
    """``det(M)`` and ``A = M⁻¹D`` for ``M = σ²I + D G`` (2×2, elementwise per cell).

    ``D`` is the random-effects covariance, ``G = Σ z zᵀ`` over a cell's observed waves
    (``k`` waves, ``g01 = Σt``, ``g11 = Σt²``). Plain arithmetic, so it serves both the
    PyTensor likelihood graph and the numpy conditional (BLUP) computation.
    """
    m00 = s2 + d00 * k + d01 * g01
    m01 = d00 * g01 + d01 * g11
    m10 = d01 * k + d11 * g01
    m11 = s2 + d01 * g01 + d11 * g11
    det_m = m00 * m11 - m01 * m10
    return (
        det_m,
        (m11 * d00 - m01 * d01) / det_m,
        (m11 * d01 - m01 * d11) / det_m,
        (m00 * d01 - m10 * d00) / det_m,
        (m00 * d11 - m10 * d01) / det_m,
    )


def build_marginal_model(spec: GrowthModelSpec, data: GrowthData) -> pm.Model:
    """Compile the spec to a PyMC model with participant effects integrated out.

    Parameters
    ----------
    spec
        Model description (priors, arms, groups).
    data
        ``prepare_growth_data(panel, spec)``; only ``data.cells`` enters the likelihood.

    Returns
    -------
    pymc.Model
        Free parameters as in ``build_latent_model`` minus the participant effects; the
        likelihood is a ``pm.Potential`` named ``loglik`` (formula in the module docstring).
    """
    import pymc as pm
    import pytensor.tensor as pt

    design = data.design
    priors = spec.resolved_priors(design.final_time)
    arrays = _cell_arrays(data)
    with pm.Model() as model:
        p = _population_block(design, priors, spec.centered_groups(design))
        c = {k: pm.Data(k, v) for k, v in arrays.items()}
        n, k, g01, g11 = c["cell_n"], c["cell_k"], c["cell_g01"], c["cell_g11"]
        arm = c["cell_arm"]
        effect = p["slope_effect"]
        for g in design.groups:
            effect = effect + p["group_dev"][g][c[f"cell_{g}_idx"]]
        gam0 = p["intercept"] - p["center"] + arm * p["arm_intercept"]
        gam1 = p["slope"] + arm * effect
        sd0, sd1, rho, sig = (
            p["sd_intercept"],
            p["sd_slope"],
            p["corr_intercept_slope"],
            p["sd_residual"],
        )
        d00, d11, d01 = sd0**2, sd1**2, rho * sd0 * sd1
        s2 = sig**2
        det_m, a00, a01, a10, a11 = _woodbury_terms(s2, d00, d11, d01, k, g01, g11)
        # h = G gamma; W = Z'SZ = Q - h r' - r h' + n h h'
        h0 = k * gam0 + g01 * gam1
        h1 = g01 * gam0 + g11 * gam1
        r0, r1 = c["cell_r0"], c["cell_r1"]
        w00 = c["cell_q00"] - 2.0 * h0 * r0 + n * h0**2
        w11 = c["cell_q11"] - 2.0 * h1 * r1 + n * h1**2
        w01 = c["cell_q01"] - h0 * r1 - r0 * h1 + n * h0 * h1
        tr_s = c["cell_yy"] - 2.0 * (gam0 * r0 + gam1 * r1) + n * (gam0 * h0 + gam1 * h1)
        tr_aw = a00 * w00 + (a01 + a10) * w01 + a11 * w11
        logdet = (k - 2.0) * pt.log(s2) + pt.log(det_m)
        loglik = -0.5 * (n * (k * _LOG_2PI + logdet) + (tr_s - tr_aw) / s2)
        pm.Potential("loglik", pt.sum(loglik))
    return model


def build_latent_model(spec: GrowthModelSpec, data: GrowthData) -> pm.Model:
    """Compile the spec to a PyMC model with explicit participant random effects.

    The reference implementation of the marginal model: non-centred participant effects
    ``(u0, u1) = L z`` with ``L`` the Cholesky factor of ``D``, and a Normal likelihood on
    each observed score (missing waves have no row, so they drop out of the likelihood).
    """
    import pymc as pm
    import pytensor.tensor as pt

    design = data.design
    priors = spec.resolved_priors(design.final_time)
    arrays = _row_arrays(data)
    with pm.Model() as model:
        p = _population_block(design, priors, spec.centered_groups(design))
        r = {k: pm.Data(k, v) for k, v in arrays.items()}
        z = pm.Normal("participant_z", 0.0, 1.0, shape=(data.n_participants, 2))
        rho = p["corr_intercept_slope"]
        u0 = p["sd_intercept"] * z[:, 0]
        u1 = p["sd_slope"] * (rho * z[:, 0] + pt.sqrt(1.0 - rho**2) * z[:, 1])
        effect = p["slope_effect"]
        for g in design.groups:
            effect = effect + p["group_dev"][g][r[f"row_{g}_idx"]]
        t, arm, pid = r["row_t"], r["row_arm"], r["row_pid"]
        mu = (
            p["intercept"]
            - p["center"]
            + p["slope"] * t
            + arm * (p["arm_intercept"] + effect * t)
            + u0[pid]
            + u1[pid] * t
        )
        pm.Normal("score", mu=mu, sigma=p["sd_residual"], observed=r["row_y"])
    return model


@dataclass
class CompiledGrowthModel:
    """A nutpie-compiled growth model bound to one data set."""

    kind: ModelKind
    compiled: Any
    compile_seconds: float
    from_cache: bool


_CACHE: dict[tuple, Any] = {}
_CACHE_LOCK = threading.Lock()


def _structure_key(
    kind: ModelKind, spec: GrowthModelSpec, data: GrowthData, backend: Backend
) -> tuple:
    key: tuple = (
        kind,
        backend,
        data.design.groups,
        data.design.group_sizes,
        spec.centered_groups(data.design),
    )
    if kind == "latent":
        key = (*key, data.n_participants)
    return key


def _compile_c_backend(model: pm.Model, var_names: list[str]) -> Any:
    """Compile logp+gradient with pytensor's C backend and hand them to nutpie as Python.

    pytensor caches compiled C modules on disk (its ``compiledir``), so unlike numba's
    ``cfunc`` the compile is reused across processes; the price is a Python call per
    gradient. Uses nutpie's internal ``_make_functions`` (nutpie 0.16). Shared data are
    read from the pytensor shared variables, so ``with_data`` is emulated by
    ``_set_shared`` before sampling.
    """
    from nutpie.compile_pymc import _make_functions, _prepare_dims_and_coords
    from nutpie.compiled_pyfunc import from_pyfunc
    from pymc.initial_point import make_initial_point_fn

    ipfn = make_initial_point_fn(
        model=model,
        return_transformed=True,
        jitter_rvs=set(model.free_RVs),
        default_strategy="support_point",
    )
    n_dim, _, logp_pt, expand_pt, init_fn, shape_info = _make_functions(
        model,
        mode="FAST_RUN",  # type: ignore[arg-type]
        compute_grad=True,
        join_expanded=False,
        pymc_initial_point_fn=ipfn,
        var_names=var_names,
    )
    names, _, shapes = shape_info

    def make_logp_func() -> Callable:
        fn = logp_pt.copy(share_memory=False)

        def logp(x: np.ndarray, **_: Any) -> tuple[float, np.ndarray]:
            value, grad = fn(x)
            return float(value), np.asarray(grad, dtype=np.float64, order="C")

        return logp

    def make_expand_func(seed1: int, seed2: int, chain: int) -> Callable:
        fn = expand_pt.copy(share_memory=False)

        def expand(x: np.ndarray, **_: Any) -> dict[str, np.ndarray]:
            return {
                name: np.asarray(v, dtype=np.float64, order="C").reshape(shape)
                for name, v, shape in zip(names, fn(x), shapes, strict=True)
            }

        return expand

    dims, coords = _prepare_dims_and_coords(model, shape_info)
    compiled = from_pyfunc(
        ndim=n_dim,
        make_logp_fn=make_logp_func,
        make_expand_fn=make_expand_func,
        make_initial_point_fn=init_fn,
        expanded_dtypes=[np.dtype("float64")] * len(names),
        expanded_shapes=shapes,
        expanded_names=names,
        dims=dims,
        coords=coords,
    )
    shared = {v.name: v for v in [*logp_pt.get_shared(), *expand_pt.get_shared()]}
    return _CBackendModel(compiled, shared)


@dataclass
class _CBackendModel:
    compiled: Any
    shared: dict[str, Any]

    def with_data(self, **values: Any) -> Any:
        for name, value in values.items():
            if name in self.shared:
                old = self.shared[name].get_value()
                self.shared[name].set_value(np.asarray(value, dtype=old.dtype))
        return self.compiled


def compile_growth_model(
    spec: GrowthModelSpec,
    data: GrowthData,
    kind: ModelKind = "marginal",
    *,
    backend: Backend = "auto",
    cache: bool = True,
) -> CompiledGrowthModel:
    """Compile for nutpie, reusing a cached compilation when possible.

    Backends: ``"kernel"`` (the marginal model only) is ``models.growth_kernel``: the same
    log density and gradient written out by hand and compiled once per machine (numba
    caches it on disk), tested equal to this module's PyMC model; ``"numba"`` is nutpie's
    own compile of the PyMC model (20-30 s per fit on 2 cores, not reused across
    processes); ``"c"`` compiles with pytensor's C backend, whose compiled modules pytensor
    caches on disk (gradients are Python calls, slower per step; one fit at a time per
    cached structure). ``"auto"`` is ``"kernel"`` for the marginal model and ``"numba"`` for
    the latent one.

    For the PyMC backends the cache key is the model's structure (kind, pooled factors and
    their numbers of levels, and for the latent model the number of participants); data and
    priors are shared variables swapped in with ``CompiledPyMCModel.with_data``, so refitting
    another outcome, another study or a simulated replicate of the same structure skips the
    compile. The cache is per process (numba ``cfunc`` objects do not pickle).
    """
    if backend == "auto":
        backend = "kernel" if kind == "marginal" else "numba"
    if backend == "kernel":
        if kind != "marginal":
            raise ValueError("the kernel backend implements the marginal model only")
        from models.growth_kernel import build_kernel_model, kernel_is_compiled

        start = time.perf_counter()
        warm = kernel_is_compiled()
        return CompiledGrowthModel(
            kind=kind,
            compiled=build_kernel_model(spec, data),
            compile_seconds=time.perf_counter() - start,
            from_cache=warm,
        )
    import nutpie

    design = data.design
    priors = spec.resolved_priors(design.final_time)
    arrays = _cell_arrays(data) if kind == "marginal" else _row_arrays(data)
    values: dict[str, Any] = {
        **priors.constants(),
        "center": design.center,
        **{f"share_{g}": np.asarray(design.level_shares[g]) for g in design.groups},
        **arrays,
    }
    key = _structure_key(kind, spec, data, backend)
    start = time.perf_counter()
    with _CACHE_LOCK:
        base = _CACHE.get(key) if cache else None
    from_cache = base is not None
    if base is None:
        model = (build_marginal_model if kind == "marginal" else build_latent_model)(spec, data)
        var_names = [
            v.name for v in model.free_RVs if v.name != "participant_z"
        ]
        if backend == "c":
            base = _compile_c_backend(model, var_names)
        else:
            base = nutpie.compile_pymc_model(model, backend="numba", var_names=var_names)
        if cache:
            with _CACHE_LOCK:
                _CACHE[key] = base
    compiled = base.with_data(**values)
    return CompiledGrowthModel(
        kind=kind,
        compiled=compiled,
        compile_seconds=time.perf_counter() - start,
        from_cache=from_cache,
    )


def clear_compiled_cache() -> None:
    """Forget every cached compiled model (e.g. to measure a cold compile)."""
    with _CACHE_LOCK:
        _CACHE.clear()


# --------------------------------------------------------------------------------------
# sampling
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GrowthProgress:
    """A progress event for a CLI/dashboard progress bar.

    ``fraction`` is the share of all (tune + draws) x chains iterations done while
    sampling, ``None`` in other stages; ``elapsed_s`` is seconds since the fit started.
    """

    stage: ProgressStage
    fraction: float | None
    elapsed_s: float


ProgressCallback = Callable[[GrowthProgress], None]


def _is_finished(sampler: Any) -> bool:
    try:
        return bool(sampler.is_finished)
    except TimeoutError:  # nutpie's lock was busy: still running
        return False


def sample_growth_model(
    compiled: CompiledGrowthModel,
    *,
    draws: int = 1000,
    tune: int = 1000,
    chains: int = 4,
    cores: int = 2,
    seed: int = 0,
    low_rank_mass_matrix: bool = True,
    target_accept: float = 0.95,
    progress_bar: bool = False,
    progress_callback: ProgressCallback | None = None,
    started: float | None = None,
) -> az.InferenceData:
    """Sample a compiled growth model with nutpie's NUTS.

    ``progress_bar`` shows nutpie's own terminal bar; ``progress_callback`` (if given) is
    called about once a second with a ``GrowthProgress`` (stage ``sampling``).
    """
    import nutpie

    t0 = time.perf_counter() if started is None else started
    total = chains * (draws + tune)
    if progress_callback is None:
        return nutpie.sample(
            compiled.compiled,
            draws=draws,
            tune=tune,
            chains=chains,
            cores=cores,
            seed=seed,
            low_rank_modified_mass_matrix=low_rank_mass_matrix,
            target_accept=target_accept,
            progress_bar=progress_bar,
        )
    sampler = nutpie.sample(
        compiled.compiled,
        draws=draws,
        tune=tune,
        chains=chains,
        cores=cores,
        seed=seed,
        low_rank_modified_mass_matrix=low_rank_mass_matrix,
        target_accept=target_accept,
        progress_bar=progress_bar,
        blocking=False,
    )
    progress_callback(GrowthProgress("sampling", 0.0, time.perf_counter() - t0))
    while not _is_finished(sampler):
        time.sleep(1.0)
        done = 0
        try:
            trace = sampler.inspect()
            for group in ("warmup_posterior", "posterior"):
                if group in trace.groups():
                    ds = trace[group]
                    done += int(ds.sizes.get("chain", 0) * ds.sizes.get("draw", 0))
        except Exception:  # progress is best effort; never fail a fit for it
            done = 0
        progress_callback(
            GrowthProgress("sampling", min(done / total, 1.0), time.perf_counter() - t0)
        )
    idata = sampler.wait()
    progress_callback(GrowthProgress("sampling", 1.0, time.perf_counter() - t0))
    return idata


# --------------------------------------------------------------------------------------
# configuration and result
# --------------------------------------------------------------------------------------

RESULT_COLUMNS: tuple[str, ...] = (
    "hypothesis",
    "parameter",
    "mean",
    "sd",
    "hdi_low",
    "hdi_high",
    "prob_positive",
    "prob_above_mid",
    "r_hat",
    "ess_bulk",
    "ess_tail",
    "divergences",
    "gate",
)
_RESULT_SCHEMA = {
    "hypothesis": pl.String,
    "parameter": pl.String,
    "mean": pl.Float64,
    "sd": pl.Float64,
    "hdi_low": pl.Float64,
    "hdi_high": pl.Float64,
    "prob_positive": pl.Float64,
    "prob_above_mid": pl.Float64,
    "r_hat": pl.Float64,
    "ess_bulk": pl.Float64,
    "ess_tail": pl.Float64,
    "divergences": pl.Int64,
    "gate": pl.String,
}


@dataclass(frozen=True)
class GrowthConfig:
    """Settings of one growth-model analysis (one outcome scale).

    Parameters
    ----------
    outcome
        Dotted scale id (``who5.total``).
    scale_range
        ``(low, high)`` possible scores (``InstrumentSpec.scale_range``); scales the priors.
    hypothesis
        Plan hypothesis id, or ``"exploratory"``.
    mid
        The plan's minimal important difference in score points at the final wave;
        ``prob_above_mid`` is ``P(difference at final wave > mid)`` (``None``: not computed).
    treatment_arm, control_arm
        Arm labels in ``panel.arm``.
    groups
        Participant-level columns across whose levels the slope effect is pooled.
    priors
        Override of ``default_priors`` (``None`` = defaults).
    model
        ``marginal`` (random effects integrated out; fast) or ``latent`` (reference).
    backend
        ``auto`` (default), ``kernel``, ``numba`` or ``c`` (see ``compile_growth_model``).
    draws, tune, chains, cores, seed, target_accept
        NUTS settings (nutpie); ``draws`` are per chain, after ``tune`` warm-up draws.
    hdi_prob
        Probability of the HDI in ``to_frame`` (0.95 by default); ``intervals`` always
        holds both 90% and 95% HDIs of the effect parameters.
    max_r_hat, min_ess, min_bfmi
        Diagnostics gate: every reported parameter needs rank-normalised split R-hat
        ``<= max_r_hat`` and bulk and tail ESS ``>= min_ess`` (Vehtari et al. 2021,
        *Bayesian Analysis* 16:667); no divergent transitions; E-BFMI ``>= min_bfmi`` in
        every chain (Betancourt 2016, arXiv:1604.00695).
    progress_bar, progress_callback
        nutpie's terminal progress bar; a callable receiving ``GrowthProgress`` events.
    """

    outcome: str
    scale_range: tuple[float, float]
    hypothesis: str = "exploratory"
    mid: float | None = None
    treatment_arm: str = "treatment"
    control_arm: str = "control"
    groups: tuple[str, ...] = ("country", "cohort")
    priors: GrowthPriors | None = None
    final_time: float | None = None
    baseline_wave: int = 0
    model: ModelKind = "marginal"
    backend: Backend = "auto"
    draws: int = 1000
    tune: int = 1000
    chains: int = 4
    cores: int = 2
    seed: int = 0
    target_accept: float = 0.95
    hdi_prob: float = 0.95
    max_r_hat: float = 1.01
    min_ess: float = 400.0
    min_bfmi: float = 0.3
    ppc_draws: int = 1000
    progress_bar: bool = False
    progress_callback: ProgressCallback | None = None

    def to_spec(self) -> GrowthModelSpec:
        """The backend-free model description implied by this configuration."""
        return GrowthModelSpec(
            outcome=self.outcome,
            scale_range=self.scale_range,
            groups=self.groups,
            priors=self.priors,
            final_time=self.final_time,
            baseline_wave=self.baseline_wave,
            treatment_arm=self.treatment_arm,
            control_arm=self.control_arm,
        )


@dataclass
class GrowthResult:
    """Outcome of ``fit_growth_model``.

    Attributes
    ----------
    summary
        One row per reported parameter (``to_frame`` columns, estimates always filled).
    gate
        ``pass``/``fail`` of the diagnostics gate; ``fail`` also for data problems.
    message_code, message
        ``ok``, ``gate_failed`` (with the failing checks) or a data issue code.
    idata
        ArviZ ``InferenceData`` (``None`` when nothing was sampled); save with
        ``write_posterior``. Derived quantities (final-wave difference, per-level effects,
        correlation) are added to its posterior; priors are in ``idata.attrs``.
    ppc
        Posterior predictive check by arm x wave: observed mean, replicated mean and 95%
        interval, two-sided PPC p-value; ``ppc_p_value`` is the overall chi-square
        discrepancy p-value (Gelman, Meng & Stern 1996, *Statistica Sinica* 6:733).
    intervals
        90% and 95% HDIs of the effect parameters (``parameter, hdi_prob, low, high``).
    priors
        Priors in force (``priors.to_frame()`` states them).
    diagnostics
        ``max_r_hat, min_ess_bulk, min_ess_tail, divergences, min_bfmi, compile_s,
        sample_s, compiled_from_cache``.
    """

    hypothesis: str
    outcome: str
    gate: GateStatus
    message_code: MessageCode
    message: str
    summary: pl.DataFrame
    idata: az.InferenceData | None
    ppc: pl.DataFrame
    ppc_p_value: float | None
    intervals: pl.DataFrame
    priors: GrowthPriors | None
    hdi_prob: float
    diagnostics: dict[str, float]
    spec: GrowthModelSpec
    design: GrowthDesign | None = None
    config: GrowthConfig | None = field(default=None, repr=False)

    def to_frame(self) -> pl.DataFrame:
        """The ``posterior.parquet`` table (columns ``RESULT_COLUMNS``).

        When the gate fails, the estimate columns are null (diagnostics stay), so that a
        failed model is never read as a result.
        """
        frame = self.summary.select(RESULT_COLUMNS)
        if self.gate == "fail":
            frame = frame.with_columns(
                pl.lit(None, pl.Float64).alias(c)
                for c in ("mean", "sd", "hdi_low", "hdi_high", "prob_positive", "prob_above_mid")
            )
        return frame

    def write_posterior(self, path: str) -> None:
        """Write ``idata`` as NetCDF (``posterior.nc``); no-op when nothing was sampled."""
        if self.idata is not None:
            self.idata.to_netcdf(path)


def _empty_result(config: GrowthConfig, spec: GrowthModelSpec, issue: DataIssue) -> GrowthResult:
    summary = pl.DataFrame(
        [
            {
                "hypothesis": config.hypothesis,
                "parameter": "slope_effect",
                "divergences": None,
                "gate": "fail",
            }
        ],
        schema=_RESULT_SCHEMA,
    )
    return GrowthResult(
        hypothesis=config.hypothesis,
        outcome=config.outcome,
        gate="fail",
        message_code=issue.code,
        message=issue.message,
        summary=summary,
        idata=None,
        ppc=pl.DataFrame(),
        ppc_p_value=None,
        intervals=pl.DataFrame(),
        priors=spec.priors,
        hdi_prob=config.hdi_prob,
        diagnostics={},
        spec=spec,
        config=config,
    )


# --------------------------------------------------------------------------------------
# posterior post-processing
# --------------------------------------------------------------------------------------


def _level_deviations(idata: az.InferenceData, design: GrowthDesign, g: str) -> np.ndarray:
    """Draws (chain, draw, levels) of each level's deviation from the average effect."""
    post = idata.posterior
    if f"dev_slope_effect_{g}" in post:
        dev = post[f"dev_slope_effect_{g}"].values
    else:
        dev = post[f"sd_slope_effect_{g}"].values[..., None] * post[f"z_slope_effect_{g}"].values
    w = np.asarray(design.level_shares[g])
    return dev - (dev @ w)[..., None]


def _add_derived(idata: az.InferenceData, design: GrowthDesign) -> None:
    post = idata.posterior
    derived: dict[str, Any] = {
        "corr_intercept_slope": 2.0 * post["corr_beta"] - 1.0,
        "difference_final_wave": post["slope_effect"] * design.final_time,
    }
    for g in design.groups:
        dev = _level_deviations(idata, design, g)
        eff = post["slope_effect"].values[..., None] + dev
        coords = {"chain": post.chain, "draw": post.draw, g: list(design.levels[g])}
        derived[f"slope_effect_{g}"] = xr.DataArray(eff, dims=("chain", "draw", g), coords=coords)
        derived[f"difference_final_wave_{g}"] = xr.DataArray(
            eff * design.final_time, dims=("chain", "draw", g), coords=coords
        )
    idata.posterior = post.assign(derived)


def _reported(design: GrowthDesign) -> list[tuple[str, str, tuple[int, ...] | None, float]]:
    """(row label, posterior variable, level index, multiplier to final-wave units)."""
    t_final = design.final_time
    rows: list[tuple[str, str, tuple[int, ...] | None, float]] = [
        ("slope_effect", "slope_effect", None, t_final),
        ("difference_final_wave", "difference_final_wave", None, 1.0),
    ]
    for g in design.groups:
        for i, level in enumerate(design.levels[g]):
            rows.append((f"slope_effect[{g}={level}]", f"slope_effect_{g}", (i,), t_final))
            rows.append(
                (f"difference_final_wave[{g}={level}]", f"difference_final_wave_{g}", (i,), 1.0)
            )
    for name in (
        "intercept",
        "slope",
        "arm_intercept",
        "sd_intercept",
        "sd_slope",
        "corr_intercept_slope",
        "sd_residual",
    ):
        rows.append((name, name, None, math.nan))
    for g in design.groups:
        rows.append((f"sd_slope_effect_{g}", f"sd_slope_effect_{g}", None, math.nan))
    return rows


def _draws_of(idata: az.InferenceData, var: str, index: tuple[int, ...] | None) -> np.ndarray:
    values = idata.posterior[var].values
    if index is not None:
        values = values[(..., *index)]
    return np.asarray(values, dtype=np.float64)


def _summarise(
    idata: az.InferenceData, design: GrowthDesign, config: GrowthConfig
) -> tuple[pl.DataFrame, pl.DataFrame, dict[str, float]]:
    divergences = int(np.asarray(idata.sample_stats["diverging"].values).sum())
    records = []
    intervals = []
    for label, var, index, to_final in _reported(design):
        x = _draws_of(idata, var, index)
        flat = x.ravel()
        hdi = az.hdi(flat, hdi_prob=config.hdi_prob)
        is_effect = not math.isnan(to_final)
        above = (
            float(np.mean(flat * to_final > config.mid))
            if is_effect and config.mid is not None
            else None
        )
        records.append(
            {
                "hypothesis": config.hypothesis,
                "parameter": label,
                "mean": float(flat.mean()),
                "sd": float(flat.std(ddof=1)),
                "hdi_low": float(hdi[0]),
                "hdi_high": float(hdi[1]),
                "prob_positive": float(np.mean(flat > 0)),
                "prob_above_mid": above,
                "r_hat": float(az.rhat(x)),
                "ess_bulk": float(az.ess(x, method="bulk")),
                "ess_tail": float(az.ess(x, method="tail")),
                "divergences": divergences,
                "gate": "pass",
            }
        )
        if is_effect:
            for prob in (0.90, 0.95):
                lo, hi = az.hdi(flat, hdi_prob=prob)
                intervals.append(
                    {"parameter": label, "hdi_prob": prob, "low": float(lo), "high": float(hi)}
                )
    summary = pl.DataFrame(records, schema=_RESULT_SCHEMA)
    bfmi = np.atleast_1d(az.bfmi(idata))
    diag = {
        "max_r_hat": float(summary["r_hat"].max()),
        "min_ess_bulk": float(summary["ess_bulk"].min()),
        "min_ess_tail": float(summary["ess_tail"].min()),
        "divergences": float(divergences),
        "min_bfmi": float(np.min(bfmi)),
    }
    return summary, pl.DataFrame(intervals), diag


def _gate_failures(diag: dict[str, float], config: GrowthConfig) -> list[str]:
    fails = []
    if not diag["max_r_hat"] <= config.max_r_hat:
        fails.append(f"max r_hat {diag['max_r_hat']:.3f} > {config.max_r_hat}")
    if not diag["min_ess_bulk"] >= config.min_ess:
        fails.append(f"min bulk ESS {diag['min_ess_bulk']:.0f} < {config.min_ess:.0f}")
    if not diag["min_ess_tail"] >= config.min_ess:
        fails.append(f"min tail ESS {diag['min_ess_tail']:.0f} < {config.min_ess:.0f}")
    if diag["divergences"] > 0:
        fails.append(f"{diag['divergences']:.0f} divergent transitions")
    if not diag["min_bfmi"] >= config.min_bfmi:
        fails.append(f"min E-BFMI {diag['min_bfmi']:.2f} < {config.min_bfmi}")
    return fails


def _flat(idata: az.InferenceData, var: str) -> np.ndarray:
    v = idata.posterior[var].values
    return np.asarray(v.reshape(v.shape[0] * v.shape[1], *v.shape[2:]), dtype=np.float64)


def posterior_draws(idata: az.InferenceData, design: GrowthDesign) -> dict[str, np.ndarray]:
    """Flattened population draws in outcome units, keyed as in ``compute_conditional_effects``.

    Keys: ``intercept, slope, arm_intercept, slope_effect, sd_intercept, sd_slope,
    corr_intercept_slope, sd_residual`` (shape ``(S,)``) and ``dev_<group>`` (``(S, L)``:
    each level's deviation of the slope effect from the study average).
    """
    out = {
        k: _flat(idata, k)
        for k in (
            "intercept",
            "slope",
            "arm_intercept",
            "slope_effect",
            "sd_intercept",
            "sd_slope",
            "sd_residual",
        )
    }
    out["corr_intercept_slope"] = 2.0 * _flat(idata, "corr_beta") - 1.0
    for g in design.groups:
        dev = _level_deviations(idata, design, g)
        out[f"dev_{g}"] = dev.reshape(-1, dev.shape[-1])
    return out


def _cell_mean_var(
    draws: dict[str, np.ndarray], design: GrowthDesign, arm_wave: pl.DataFrame
) -> tuple[pl.DataFrame, np.ndarray, np.ndarray, np.ndarray]:
    """Exact predictive mean and variance of the arm x wave mean score for each draw.

    Participants are independent, so the mean of ``n`` replicated scores at time ``t`` has
    mean ``avg(mu_it)`` and variance ``(d00 + 2 d01 t + d11 t^2 + sigma^2) / n``.
    """
    groups = list(design.groups)
    cells = arm_wave.group_by("arm", "wave", "t").agg(
        pl.col("n").sum(), pl.col("score_sum").sum()
    ).sort("arm", "wave")
    n = cells["n"].cast(pl.Float64).to_numpy()
    t = cells["t"].to_numpy()
    arm = cells["arm"].cast(pl.Float64).to_numpy()
    obs = cells["score_sum"].to_numpy() / n
    # average level deviation of the slope effect among the scores in each arm x wave
    dev_avg = np.zeros((draws["slope"].size, cells.height))
    for g in groups:
        shares = (
            arm_wave.group_by("arm", "wave", f"{g}_idx")
            .agg(pl.col("n").sum())
            .join(cells.select("arm", "wave", pl.col("n").alias("n_tot")), on=["arm", "wave"])
            .with_row_index("_r")
        )
        weights = np.zeros((cells.height, len(design.levels[g])))
        rows_idx = (
            shares.join(
                cells.select("arm", "wave").with_row_index("_cell"), on=["arm", "wave"]
            )
            .sort("_r")["_cell"]
            .to_numpy()
        )
        np.add.at(
            weights,
            (rows_idx, shares[f"{g}_idx"].to_numpy()),
            (shares["n"] / shares["n_tot"]).to_numpy(),
        )
        dev_avg += draws[f"dev_{g}"] @ weights.T
    mean = (
        draws["intercept"][:, None]
        + draws["slope"][:, None] * t
        + arm * (draws["arm_intercept"][:, None] + (draws["slope_effect"][:, None] + dev_avg) * t)
    )
    s0, s1, rho = draws["sd_intercept"], draws["sd_slope"], draws["corr_intercept_slope"]
    var = (
        (s0**2)[:, None]
        + 2.0 * (rho * s0 * s1)[:, None] * t
        + (s1**2)[:, None] * t**2
        + (draws["sd_residual"] ** 2)[:, None]
    ) / n
    return cells, obs, mean, var


def compute_posterior_predictive_check(
    idata: az.InferenceData, data: GrowthData, *, n_draws: int = 1000, seed: int = 0
) -> tuple[pl.DataFrame, float]:
    """Posterior predictive check of the mean score by arm x wave.

    For each posterior draw the arm x wave mean of replicated data (same participants and
    observed waves) is drawn from its exact Normal distribution (see ``_cell_mean_var``).

    Returns
    -------
    (frame, p_value)
        ``arm, wave, n, observed_mean, replicated_mean, replicated_low, replicated_high``
        (95% interval) and ``ppc_p`` (two-sided, ``2 min(P(rep >= obs), P(rep <= obs))``);
        ``p_value`` is ``P(T(rep) >= T(obs))`` for ``T = sum (mean - E)^2 / V`` over cells.
    """
    design = data.design
    draws = posterior_draws(idata, design)
    total = draws["slope"].size
    rng = np.random.default_rng(seed)
    pick = rng.choice(total, size=min(n_draws, total), replace=False)
    draws = {k: v[pick] for k, v in draws.items()}
    cells, obs, mean, var = _cell_mean_var(draws, design, data.arm_wave)
    rep = mean + rng.standard_normal(mean.shape) * np.sqrt(var)
    p_ge = (rep >= obs).mean(axis=0)
    p_le = (rep <= obs).mean(axis=0)
    t_obs = ((obs - mean) ** 2 / var).sum(axis=1)
    t_rep = ((rep - mean) ** 2 / var).sum(axis=1)
    arms = np.where(cells["arm"].to_numpy() == 1, design.treatment_arm, design.control_arm)
    frame = pl.DataFrame(
        {
            "arm": arms,
            "wave": cells["wave"].cast(pl.Int32),
            "n": cells["n"].cast(pl.Int64),
            "observed_mean": obs,
            "replicated_mean": rep.mean(axis=0),
            "replicated_low": np.quantile(rep, 0.025, axis=0),
            "replicated_high": np.quantile(rep, 0.975, axis=0),
            "ppc_p": np.minimum(1.0, 2.0 * np.minimum(p_ge, p_le)),
        }
    )
    return frame, float(np.mean(t_rep >= t_obs))


def compute_conditional_effects(
    data: GrowthData, draws: dict[str, np.ndarray], *, chunk: int = 20_000
) -> pl.DataFrame:
    """Participant random effects from their closed-form conditional posterior.

    Given population parameters, ``u_i | y_i ~ N(m_i, V_i)`` with
    ``V_i = sigma^2 M_i^-1 D`` and ``m_i = M_i^-1 D Z_i'(y_i - Z_i gamma_i)``,
    ``M_i = sigma^2 I + D Z_i'Z_i`` (the BLUP / conditional mode of Henderson's mixed model
    equations; Pinheiro & Bates 2000, sec. 2.2). Over posterior draws the mean of ``m_i`` is
    the posterior mean and ``E[V_i] + Var(m_i)`` the posterior variance (law of total
    variance).

    Parameters
    ----------
    data
        ``prepare_growth_data`` output (uses ``data.participants``).
    draws
        ``posterior_draws`` output (any number ``S`` of draws; one draw = plug-in BLUP).
    chunk
        Participants per vectorised block (memory ``~ 20 * chunk * S`` doubles).

    Returns
    -------
    polars.DataFrame
        ``participant_id, arm, intercept_deviation, intercept_deviation_sd,
        slope_deviation, slope_deviation_sd, slope`` (deviations from the arm/group mean
        trajectory; ``slope`` is the participant's own rate of change per wave).
    """
    design = data.design
    part = data.participants
    b0 = draws["intercept"] - design.center
    s0, s1, rho = draws["sd_intercept"], draws["sd_slope"], draws["corr_intercept_slope"]
    d00, d11, d01 = s0**2, s1**2, rho * s0 * s1
    s2 = draws["sd_residual"] ** 2
    out: dict[str, list[np.ndarray]] = {
        k: [] for k in ("m0", "m1", "v0", "v1", "slope")
    }
    for start in range(0, part.height, chunk):
        blk = part.slice(start, chunk)
        k = blk["k"].to_numpy()[:, None]
        g01 = blk["g01"].to_numpy()[:, None]
        g11 = blk["g11"].to_numpy()[:, None]
        arm = blk["arm"].cast(pl.Float64).to_numpy()[:, None]
        effect = np.broadcast_to(draws["slope_effect"], (blk.height, b0.size)).copy()
        for g in design.groups:
            effect += draws[f"dev_{g}"][:, blk[f"{g}_idx"].to_numpy()].T
        gam0 = b0 + arm * draws["arm_intercept"]
        gam1 = draws["slope"] + arm * effect
        r0 = blk["s0"].to_numpy()[:, None] - (k * gam0 + g01 * gam1)
        r1 = blk["s1"].to_numpy()[:, None] - (g01 * gam0 + g11 * gam1)
        _, a00, a01, a10, a11 = _woodbury_terms(s2, d00, d11, d01, k, g01, g11)
        u0 = a00 * r0 + a01 * r1
        u1 = a10 * r0 + a11 * r1
        out["m0"].append(u0.mean(axis=1))
        out["m1"].append(u1.mean(axis=1))
        out["v0"].append((s2 * a00).mean(axis=1) + u0.var(axis=1))
        out["v1"].append((s2 * a11).mean(axis=1) + u1.var(axis=1))
        out["slope"].append((gam1 + u1).mean(axis=1))
    cat = {k: np.concatenate(v) if v else np.zeros(0) for k, v in out.items()}
    return pl.DataFrame(
        {
            "participant_id": part["participant_id"],
            "arm": np.where(part["arm"].to_numpy() == 1, design.treatment_arm, design.control_arm),
            "intercept_deviation": cat["m0"],
            "intercept_deviation_sd": np.sqrt(cat["v0"]),
            "slope_deviation": cat["m1"],
            "slope_deviation_sd": np.sqrt(cat["v1"]),
            "slope": cat["slope"],
        }
    )


def compute_participant_effects(
    panel: pl.DataFrame, result: GrowthResult, *, max_draws: int = 200, seed: int = 0
) -> pl.DataFrame:
    """Participant-level effects of a fitted model (see ``compute_conditional_effects``).

    Uses up to ``max_draws`` posterior draws (random subset, seeded). Returns an empty
    frame when the result has no posterior (a data issue).
    """
    if result.idata is None or result.design is None:
        return pl.DataFrame()
    data = prepare_growth_data(panel, result.spec)
    if isinstance(data, DataIssue):
        return pl.DataFrame()
    draws = posterior_draws(result.idata, result.design)
    total = draws["slope"].size
    pick = np.random.default_rng(seed).choice(total, size=min(max_draws, total), replace=False)
    return compute_conditional_effects(data, {k: v[pick] for k, v in draws.items()})


# --------------------------------------------------------------------------------------
# the analysis
# --------------------------------------------------------------------------------------


def fit_growth_model(panel: pl.DataFrame, config: GrowthConfig) -> GrowthResult:
    """Fit the Bayesian growth model of one outcome and gate it on its diagnostics.

    Parameters
    ----------
    panel
        ``participant_id, arm, wave, score, country, cohort`` for ONE outcome scale (one
        row per observed participant x wave; missing waves absent or null).
    config
        See ``GrowthConfig``.

    Returns
    -------
    GrowthResult
        Posterior summaries of the slope effect (per wave), the implied difference at the
        final wave (``slope_effect * final_time``), per-level effects, between-participant
        SDs and residual SD, with the gate; a data issue returns a ``fail`` result with
        its code instead of raising.
    """
    started = time.perf_counter()

    def report(stage: ProgressStage, fraction: float | None = None) -> None:
        if config.progress_callback is not None:
            config.progress_callback(
                GrowthProgress(stage, fraction, time.perf_counter() - started)
            )

    report("preparing")
    spec = config.to_spec()
    data = prepare_growth_data(panel, spec)
    if isinstance(data, DataIssue):
        report("done")
        return _empty_result(config, spec, data)
    design = data.design
    priors = spec.resolved_priors(design.final_time)
    report("compiling")
    compiled = compile_growth_model(spec, data, config.model, backend=config.backend)
    t_sample = time.perf_counter()
    idata = sample_growth_model(
        compiled,
        draws=config.draws,
        tune=config.tune,
        chains=config.chains,
        cores=config.cores,
        seed=config.seed,
        target_accept=config.target_accept,
        # a dense low-rank correction pays off for the ~15 marginal parameters, not for the
        # latent model's thousands of participant effects
        low_rank_mass_matrix=config.model == "marginal",
        progress_bar=config.progress_bar,
        progress_callback=config.progress_callback,
        started=started,
    )
    sample_s = time.perf_counter() - t_sample
    report("summarising")
    _add_derived(idata, design)
    summary, intervals, diag = _summarise(idata, design, config)
    diag.update(
        compile_s=compiled.compile_seconds,
        sample_s=sample_s,
        compiled_from_cache=float(compiled.from_cache),
    )
    fails = _gate_failures(diag, config)
    gate: GateStatus = "fail" if fails else "pass"
    summary = summary.with_columns(pl.lit(gate).alias("gate"))
    ppc, ppc_p = compute_posterior_predictive_check(
        idata, data, n_draws=config.ppc_draws, seed=config.seed
    )
    idata.attrs.update(
        {
            "outcome": config.outcome,
            "hypothesis": config.hypothesis,
            "model": config.model,
            "priors": priors.describe(),
            "priors_json": json.dumps(priors.to_frame().to_dicts()),
            "final_time": design.final_time,
            "hdi_prob": config.hdi_prob,
            "gate": gate,
        }
    )
    report("done", 1.0)
    return GrowthResult(
        hypothesis=config.hypothesis,
        outcome=config.outcome,
        gate=gate,
        message_code="gate_failed" if fails else "ok",
        message=("diagnostics gate failed: " + "; ".join(fails)) if fails else "ok",
        summary=summary,
        idata=idata,
        ppc=ppc,
        ppc_p_value=ppc_p,
        intervals=intervals,
        priors=priors,
        hdi_prob=config.hdi_prob,
        diagnostics=diag,
        spec=spec,
        design=design,
        config=config,
    )
