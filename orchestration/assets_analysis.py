"""Dagster assets downstream of scoring.

Trial effects, psychometrics, Bayesian growth, telemetry and the public (DP) tier; each
asset is a thin call into ``orchestration.pipeline``.
"""


import dagster as dg
import polars as pl

from orchestration import pipeline
from orchestration.resources import StudyResource

TRIAL, PSYCHOMETRICS, BAYES, TELEMETRY, PUBLIC = (
    "trial", "psychometrics", "bayesian", "telemetry", "public",
)


@dg.asset(group_name=TRIAL, description="Pre-registered and exploratory effect estimates "
          "(ANCOVA with robust SEs, mixed model), multiplicity-adjusted within families, "
          "each row carrying the plan's sha256 and status.")
def effects(study: StudyResource, panel: pl.DataFrame, participants: pl.DataFrame) -> pl.DataFrame:
    """Fit the analysis plan's hypotheses."""
    return pipeline.fit_effects(study.study, panel, participants)


@dg.asset_check(asset=effects, additional_ins={"participants": dg.AssetIn("participants")},
                description="Sample-ratio mismatch of arm sizes against the planned allocation "
                "(chi-square, flagged when p < 0.001).")
def sample_ratio_mismatch(study: StudyResource, effects: pl.DataFrame,
                          participants: pl.DataFrame) -> dg.AssetCheckResult:
    """SRM check."""
    srm = pipeline.compute_sample_ratio(study.study, participants)
    if srm is None:
        return dg.AssetCheckResult(passed=True, metadata={"note": "no planned allocation"})
    return dg.AssetCheckResult(passed=not srm.flagged, severity=dg.AssetCheckSeverity.ERROR,
                               metadata={"p_value": float(srm.p_value),
                                         "chi2": float(srm.chi2)})


@dg.asset_check(asset=effects, description="The analysis plan is sealed and unchanged since.")
def plan_integrity(effects: pl.DataFrame) -> dg.AssetCheckResult:
    """Plan status of the pre-registered rows."""
    statuses = sorted(effects.filter(pl.col("role") != "exploratory")["plan_status"]
                      .unique().to_list()) if effects.height else []
    return dg.AssetCheckResult(passed=statuses == ["locked"], severity=dg.AssetCheckSeverity.WARN,
                               metadata={"plan_status": ", ".join(statuses) or "no plan"})


@dg.multi_asset(
    outs={
        "reliability": dg.AssetOut(group_name=PSYCHOMETRICS, description="Cronbach's alpha "
                                   "(raw, standardised), omega total, per scale × wave; pairwise "
                                   "and listwise missing-data handling."),
        "reliability_items": dg.AssetOut(group_name=PSYCHOMETRICS, description="Corrected "
                                         "item-total correlations and alpha if item deleted."),
    },
    check_specs=[dg.AssetCheckSpec("alpha_at_least_0_7", asset="reliability",
                                   description="Warns on any scale whose alpha < 0.7.")],
    description="Internal-consistency reliability of every scale at every wave.",
)
def reliability_tables(study: StudyResource, responses: pl.DataFrame):
    """Reliability per scale × wave."""
    scales, items = pipeline.compute_reliability_tables(study.study, responses)
    yield dg.Output(scales, output_name="reliability")
    yield dg.Output(items, output_name="reliability_items")
    low = scales.filter(pl.col("alpha") < 0.7)
    yield dg.AssetCheckResult(
        check_name="alpha_at_least_0_7", asset_key="reliability", passed=low.height == 0,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"low": dg.MetadataValue.json(
            low.select("instrument", "scale", "wave", "missing", "alpha").to_dicts())},
    )


@dg.asset(group_name=PSYCHOMETRICS, description="Test-retest ICC(2,1) and ICC(3,1) with "
          "confidence intervals between consecutive waves, per scale.")
def retest(scores: pl.DataFrame) -> pl.DataFrame:
    """Test-retest reliability."""
    return pipeline.compute_retest_table(scores)


@dg.asset(group_name=PSYCHOMETRICS, description="Measurement invariance across the study's "
          "grouping (configural, metric, scalar multi-group CFA by ML).")
def invariance(study: StudyResource, responses: pl.DataFrame,
               participants: pl.DataFrame) -> pl.DataFrame:
    """Measurement invariance at baseline."""
    return pipeline.compute_invariance_table(study.study, responses, participants)


@dg.asset_check(asset=invariance, description="Warns when scalar invariance fails: comparing "
                "group means on that instrument is then not supported.")
def scalar_invariance(invariance: pl.DataFrame) -> dg.AssetCheckResult:
    """Scalar invariance holds for every instrument."""
    if invariance.height == 0:
        return dg.AssetCheckResult(passed=True, metadata={"note": "no grouping"})
    failed = invariance.filter((pl.col("level") == "scalar") & ~pl.col("holds"))
    return dg.AssetCheckResult(passed=failed.height == 0, severity=dg.AssetCheckSeverity.WARN,
                               metadata={"failed": ", ".join(failed["instrument"].to_list())})


@dg.asset(group_name=BAYES, description="Posterior of the Bayesian growth model (marginalised "
          "random effects, nutpie) for every bayes_growth hypothesis, with a diagnostics gate.")
def posterior(context: dg.AssetExecutionContext, study: StudyResource, panel: pl.DataFrame,
              participants: pl.DataFrame) -> pl.DataFrame:
    """Fit the growth models."""
    def progress(p: object) -> None:
        context.log.info(f"{p.stage} {getattr(p, 'fraction', 0) or 0:.0%} "
                         f"({p.elapsed_s:.0f} s)")
    return pipeline.fit_posteriors(study.study, panel, participants, progress=progress)


@dg.asset_check(asset=posterior, description="R-hat ≤ 1.01, bulk/tail ESS ≥ 400, no "
                "divergences, E-BFMI ≥ 0.3; a model that fails is reported as failed.")
def posterior_gate(posterior: pl.DataFrame) -> dg.AssetCheckResult:
    """Diagnostics gate."""
    if posterior.height == 0:
        return dg.AssetCheckResult(passed=True, metadata={"note": "no bayes_growth hypothesis"})
    failed = posterior.filter(pl.col("gate") != "pass")
    return dg.AssetCheckResult(passed=failed.height == 0,
                               metadata={"failed_rows": failed.height})


@dg.multi_asset(
    outs={
        "telemetry_events": dg.AssetOut(group_name=TELEMETRY, description="Validated, "
                                        "pseudonymised telemetry events."),
        "telemetry_quarantine": dg.AssetOut(group_name=TELEMETRY, description="Events set "
                                            "aside, with source, row and reason."),
    },
    check_specs=[dg.AssetCheckSpec("telemetry_row_accounting", asset="telemetry_events",
                                   description="Events in = accepted + quarantined.")],
    description="Telemetry ingest and validation.",
)
def telemetry(study: StudyResource, participants: pl.DataFrame):
    """Validate the study's telemetry."""
    result = pipeline.ingest_telemetry(study.study, participants)
    accepted = result.accepted.collect() if result is not None else pl.DataFrame()
    quarantine = result.quarantine if result is not None else pl.DataFrame()
    yield dg.Output(accepted, output_name="telemetry_events")
    yield dg.Output(quarantine, output_name="telemetry_quarantine")
    ok = result is None or result.rows_in == result.rows_accepted + result.rows_quarantined
    yield dg.AssetCheckResult(check_name="telemetry_row_accounting", asset_key="telemetry_events",
                              passed=ok)


@dg.asset(group_name=TELEMETRY, description="Engagement features per participant × wave over "
          "the window before each response (active days, sessions, minutes, late-night share, "
          "longest streak).")
def engagement_features(study: StudyResource, telemetry_events: pl.DataFrame,
                        responses: pl.DataFrame) -> pl.DataFrame:
    """Features."""
    if telemetry_events.height == 0 and study.study.spec.telemetry is None:
        return pl.DataFrame()
    return pipeline.compute_engagement(study.study, telemetry_events, responses).features


@dg.multi_asset(
    outs={
        "engagement": dg.AssetOut(group_name=TELEMETRY, description="Engagement features "
                                  "joined to arms (engagement.parquet)."),
        "divergence": dg.AssetOut(group_name=TELEMETRY, description="Within- vs between-person "
                                  "engagement effects per scale and the divergence flag."),
    },
    description="Engagement-versus-wellbeing divergence analysis.",
)
def divergence_tables(study: StudyResource, panel: pl.DataFrame, engagement_features: pl.DataFrame,
                      participants: pl.DataFrame):
    """Divergence analysis."""
    if engagement_features.height == 0:
        yield dg.Output(pl.DataFrame(), output_name="engagement")
        yield dg.Output(pl.DataFrame(), output_name="divergence")
        return
    eng, div = pipeline.fit_divergence_tables(study.study, panel, engagement_features, participants)
    yield dg.Output(eng, output_name="engagement")
    yield dg.Output(div, output_name="divergence")


@dg.asset(group_name=PUBLIC, deps=["scores", "participants"],
          description="The declared DP release suite (charged all-or-nothing through the budget "
          "ledger) and the public report rendered only from releases that verify.")
def public_report(context: dg.AssetExecutionContext, study: StudyResource) -> pl.DataFrame:
    """DP release suite + report; a refused release (budget, ledger) fails the step."""
    from orchestration.public import NothingDeclared, release_and_report

    schema = {"figure": pl.String, "status": pl.String, "epsilon": pl.Float64,
              "release_id": pl.String}
    try:
        outcome = release_and_report(study.study)
    except NothingDeclared as exc:
        context.log.warning(f"no public release: {exc}")
        return pl.DataFrame(schema=schema)
    context.log.info(str(outcome))
    return pl.DataFrame([{"figure": f.id, "status": f.status, "epsilon": f.epsilon,
                          "release_id": outcome.release.release_id}
                         for f in outcome.release.figures], schema=schema)


@dg.asset_check(asset=public_report, blocking=True, description="The ledger verifies (keyed "
                "chain, budget, pseudonym key) and extends every ledger head found in "
                "releases/ and the public report.")
def ledger_intact(study: StudyResource) -> dg.AssetCheckResult:
    """Ledger verification against every published head."""
    from orchestration.keys import open_study_ledger
    from orchestration.public import collect_anchors
    from privacy.ledger import LedgerMissingError

    spec = study.study.spec
    if spec.privacy is None:
        return dg.AssetCheckResult(passed=True, metadata={"note": "no privacy section"})
    anchors = collect_anchors(spec.output_path)
    try:
        ledger = open_study_ledger(spec, create=False)
    except LedgerMissingError:
        missing = bool(anchors) or spec.ledger_anchor_path.exists()
        return dg.AssetCheckResult(passed=not missing, metadata={
            "note": "ledger missing but releases were published" if missing else "no ledger yet"})
    check, summary = ledger.verify(anchors), ledger.summary()
    return dg.AssetCheckResult(passed=check.ok, metadata={
        "spent": summary.spent, "budget": summary.budget,
        "problems": "; ".join(check.problems) or "none"})
