"""Resources, chosen in one place.

Locally (the embedded default) tables are Parquet files in the study's ``output_dir``; a
deployment past one machine swaps :func:`build_resources` for object storage and
PostgreSQL-backed instance storage without touching an asset. Assets never read
environment variables.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

import dagster as dg
import polars as pl

from orchestration.pipeline import Study, load_study


class StudyResource(dg.ConfigurableResource):
    """The study an asset works on: its spec (``study.toml``) and instrument library."""

    spec_path: str

    @cached_property
    def study(self) -> Study:
        """The loaded study (spec + library), loaded once per run."""
        return load_study(self.spec_path)


class ParquetIOManager(dg.ConfigurableIOManager):
    """Stores each polars-frame asset as ``<output_dir>/<asset name>.parquet``.

    Assets whose value is not a frame (reports, release bundles) write their own files and
    return ``None``; nothing is stored for them here.
    """

    output_dir: str

    def _path(self, key: dg.AssetKey) -> Path:
        return Path(self.output_dir) / f"{key.path[-1]}.parquet"

    def handle_output(self, context: dg.OutputContext, obj: object) -> None:  # noqa: D102
        if obj is None:
            return
        if not isinstance(obj, pl.DataFrame):
            raise TypeError(f"asset {context.asset_key.to_user_string()} returned {type(obj)}")
        path = self._path(context.asset_key)
        path.parent.mkdir(parents=True, exist_ok=True)
        obj.write_parquet(path)
        context.add_output_metadata(
            {"rows": obj.height, "path": dg.MetadataValue.path(str(path))}
        )

    def load_input(self, context: dg.InputContext) -> pl.DataFrame:  # noqa: D102
        return pl.read_parquet(self._path(context.asset_key))


def build_resources(spec_path: Path | str) -> dict[str, object]:
    """The resources for a study run on the embedded (local) deployment."""
    study = load_study(spec_path)
    return {
        "study": StudyResource(spec_path=str(Path(spec_path).resolve())),
        "io_manager": ParquetIOManager(output_dir=str(study.spec.output_path)),
    }
