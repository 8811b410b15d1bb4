"""Pipeline options: the royalty settings as Beam ``PipelineOptions``, for every runner.

The same flags work on the direct runner and on Dataflow (where Beam forwards them to
the workers), and turn into the typed, validated ``PipelineConfig`` the transforms take.
Both spellings are accepted: ``--period-seconds`` and Beam's ``--period_seconds``.
"""

from __future__ import annotations

import argparse
from typing import Any

from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from pipelines.config import DATAFLOW_DEDUP_SHARDS, PipelineConfig
from pipelines.direct_runner import DIRECT_RUNNERS
from schemas.topology import PubSubNames

__all__ = ["BatchOptions", "RoyaltyOptions", "StreamingOptions", "options_help", "refuse_unknown_flags"]


def _flag(parser: Any, name: str, **kwargs: Any) -> None:
    spellings = dict.fromkeys((f"--{name.replace('_', '-')}", f"--{name}"))
    parser.add_argument(*spellings, dest=name, **kwargs)


class RoyaltyOptions(PipelineOptions):
    """Settings both royalty pipelines share."""

    @classmethod
    def _add_argparse_args(cls, parser: Any) -> None:
        defaults = PipelineConfig()
        _flag(parser, "data_dir", default=None, help="the data directory (local path or gs://...); required")
        _flag(parser, "catalog_dir", default=str(defaults.catalog_dir), help="catalog CSVs")
        _flag(parser, "period_seconds", type=int, default=defaults.period_seconds, help="accounting period")
        _flag(parser, "dedup_horizon_hours", type=int, default=defaults.dedup_horizon_hours)
        _flag(
            parser,
            "dedup_shards",
            type=int,
            default=None,
            help=(
                "keys the de-duplication state is spread over (parallelism on Dataflow; "
                f"default {defaults.dedup_shards} on the direct runner, {DATAFLOW_DEDUP_SHARDS} elsewhere)"
            ),
        )
        _flag(parser, "min_stream_ms", type=int, default=defaults.min_stream_ms, help="shortest stream")

    def _default_dedup_shards(self) -> int:
        # The direct runner (the default when none is named) runs one key at a time.
        runner = self.view_as(StandardOptions).runner
        return (
            PipelineConfig().dedup_shards
            if runner is None or runner in DIRECT_RUNNERS
            else DATAFLOW_DEDUP_SHARDS
        )

    def config(self) -> PipelineConfig:
        """The validated ``PipelineConfig``; ``ValueError`` names a bad or missing setting."""
        if not self.data_dir:
            raise ValueError("--data-dir is required")
        values: dict[str, Any] = {
            "period_seconds": self.period_seconds,
            "dedup_horizon_hours": self.dedup_horizon_hours,
            "dedup_shards": self._default_dedup_shards() if self.dedup_shards is None else self.dedup_shards,
            "min_stream_ms": self.min_stream_ms,
            "catalog_dir": self.catalog_dir,
        }
        streaming = self.view_as(StreamingOptions)
        values["early_firing_seconds"] = streaming.early_firing_seconds
        values["allowed_lateness_hours"] = streaming.allowed_lateness_hours
        values["late_firing_seconds"] = streaming.late_firing_seconds
        return PipelineConfig(**values)


class StreamingOptions(PipelineOptions):
    """Settings of the streaming pipeline: its source and its panes."""

    @classmethod
    def _add_argparse_args(cls, parser: Any) -> None:
        defaults = PipelineConfig()
        names = PubSubNames.from_env()
        _flag(parser, "subscription", default=names.royalties, help="Pub/Sub subscription to read")
        _flag(parser, "topic", default=names.topic, help="topic that heartbeats are published to")
        _flag(
            parser,
            "heartbeat_seconds",
            type=float,
            default=1.0,
            help="publish a heartbeat this often so an idle direct-runner source keeps firing panes (0: off)",
        )
        _flag(parser, "drain_timeout_seconds", type=float, default=120.0)
        _flag(parser, "early_firing_seconds", type=int, default=defaults.early_firing_seconds)
        _flag(parser, "allowed_lateness_hours", type=int, default=defaults.allowed_lateness_hours)
        _flag(parser, "late_firing_seconds", type=int, default=defaults.late_firing_seconds)


class BatchOptions(PipelineOptions):
    """Settings of the batch recompute: which period."""

    @classmethod
    def _add_argparse_args(cls, parser: Any) -> None:
        _flag(
            parser,
            "period",
            default=None,
            help="the period to recompute, by its start: 2026-11-28T07:00:00Z (UTC); required",
        )


def options_help(prog: str, description: str, *classes: type[PipelineOptions]) -> str:
    """A ``--help`` text for the given options classes (Beam's own parser prints none)."""
    parser = argparse.ArgumentParser(prog=prog, description=description, add_help=False)
    for options_class in classes:
        options_class._add_argparse_args(parser)  # type: ignore[arg-type]  # plain argparse suffices
    parser.add_argument("--runner", help="Beam runner (default: a direct runner named explicitly)")
    return parser.format_help() + "\nOther flags go to Beam (e.g. --project, --region, --temp_location).\n"


def refuse_unknown_flags(argv: list[str]) -> None:
    """``ValueError`` naming every argument no options class knows (Beam only logs them).

    Parsed as ``PipelineOptions.get_all_options`` does: every ``PipelineOptions`` subclass
    loaded (Beam's own and ours), abbreviations not allowed, so a flag Beam forwards to a
    runner is accepted and a misspelt one is refused instead of running with defaults.
    """
    parser = argparse.ArgumentParser(allow_abbrev=False, add_help=False)
    classes = {str(cls): cls for cls in PipelineOptions.__subclasses__()}
    for options_class in classes.values():
        options_class._add_argparse_args(parser)  # type: ignore[arg-type]  # plain argparse suffices
    _, unknown = parser.parse_known_args(argv)
    if unknown:
        raise ValueError(
            f"unknown argument(s): {' '.join(unknown)} (see --help for the options and their defaults)"
        )
