"""Dagster assets: each a few lines calling one pipeline step (``orchestration/pipeline.py``)."""


import dagster as dg
import polars as pl

from orchestration import pipeline
from orchestration.resources import StudyResource

INGEST = "ingest"
SCORING = "scoring"


@dg.multi_asset(
    outs={
        "participants": dg.AssetOut(
            description="Participants with arm and covariates; ids pseudonymised (HMAC-SHA256).",
            group_name=INGEST,
        ),
        "responses": dg.AssetOut(
            description="Validated long responses: one row per participant × wave × item; "
            "a null value is a skipped item.",
            group_name=INGEST,
        ),
        "quarantine": dg.AssetOut(
            description="Every input row that was set aside: source file, 1-based row, "
            "column, value and the reason.",
            group_name=INGEST,
        ),
    },
    check_specs=[
        dg.AssetCheckSpec("row_accounting", asset="responses", blocking=True,
                          description="Rows in = rows accepted + rows quarantined."),
        dg.AssetCheckSpec("validation_failures", asset="quarantine",
                          description="Warns when any input row was quarantined."),
    ],
    description="Read every survey file, pseudonymise ids, drop direct identifiers, validate.",
)
def validated_responses(context: dg.AssetExecutionContext, study: StudyResource):
    """Ingest and validate the study's survey files and participants table."""
    s = study.study
    result = pipeline.ingest_study(s)
    pipeline.write_ingest_outputs(s, result)
    summary = result.validation.summary
    context.log.info(
        f"{summary.rows_in} rows in: {summary.accepted} accepted, "
        f"{summary.quarantined} quarantined"
    )
    yield dg.Output(result.participants, output_name="participants",
                    metadata={"participants": result.participants.height})
    yield dg.Output(result.validation.responses, output_name="responses",
                    metadata={"accepted": summary.accepted, "rows_in": summary.rows_in})
    yield dg.Output(result.validation.quarantine, output_name="quarantine",
                    metadata={"quarantined": summary.quarantined,
                              "by_reason": dg.MetadataValue.json(dict(summary.by_reason))})
    yield dg.AssetCheckResult(
        check_name="row_accounting", asset_key="responses",
        passed=summary.rows_in == summary.accepted + summary.quarantined,
        metadata={"rows_in": summary.rows_in, "accepted": summary.accepted,
                  "quarantined": summary.quarantined},
    )
    yield dg.AssetCheckResult(
        check_name="validation_failures", asset_key="quarantine",
        passed=summary.quarantined == 0, severity=dg.AssetCheckSeverity.WARN,
        metadata={"by_reason": dg.MetadataValue.json(dict(summary.by_reason))},
    )


@dg.asset(group_name=SCORING, description="Score of every scale of every instrument, per "
          "participant × wave (reverse keying, minimum items, transforms, bands).")
def scores(study: StudyResource, responses: pl.DataFrame) -> pl.DataFrame:
    """Score the validated responses."""
    return pipeline.score_study(study.study, responses)


@dg.asset_check(asset=scores, additional_ins={"participants": dg.AssetIn("participants")},
                description="Warns when any wave's response rate (participants scored / "
                "randomised) falls below 50%.")
def response_rates(scores: pl.DataFrame, participants: pl.DataFrame) -> dg.AssetCheckResult:
    """Response rate per wave against the randomised participants."""
    rates = pipeline.compute_response_rates(scores, participants)
    low = rates.filter(pl.col("response_rate") < 0.5)
    return dg.AssetCheckResult(
        passed=low.height == 0, severity=dg.AssetCheckSeverity.WARN,
        metadata={"rates": dg.MetadataValue.json(rates.to_dicts())},
    )


@dg.asset(group_name=SCORING, description="Analysis panel: scores with arm, covariates and "
          "the participant's baseline (wave 0) score of the same scale.")
def panel(scores: pl.DataFrame, participants: pl.DataFrame) -> pl.DataFrame:
    """Join scores to the randomisation table."""
    return pipeline.build_panel(scores, participants)
