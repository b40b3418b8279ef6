"""Stored mail → case: the runner (runner.py) takes each stored mail through the stages
(stages/, their order in `stages.STAGES`) in one database transaction."""

from mailbridge.pipeline.runner import (
    TRANSIENT_DB_ERRORS,
    Pipeline,
    PipelineWorker,
    ProcessResult,
    StageError,
    run_pipeline_loop,
)

__all__ = [
    "TRANSIENT_DB_ERRORS",
    "Pipeline",
    "PipelineWorker",
    "ProcessResult",
    "StageError",
    "run_pipeline_loop",
]
