"""Ignite handlers: smooth parameter averaging, training schedules, checkpoints, resume, reports and multi-process
training."""

from medkd_ext.handlers.averaging import SmoothAveragingHandler, recompute_batchnorm
from medkd_ext.handlers.checkpoint import BestStateDictSaver, StateDictSaver, ValidationProtocol
from medkd_ext.handlers.distributed import DistributedTraining
from medkd_ext.handlers.nonfinite import NonFiniteLossError, StopOnNonFiniteLoss
from medkd_ext.handlers.reports import (
    ClassificationReportHandler,
    ProbabilityWriter,
    SegmentationReportHandler,
    source_filename,
)
from medkd_ext.handlers.resume import TrainingState, state_path
from medkd_ext.handlers.schedules import DANNLambdaHandler, DecayHandler, RampHandler, decay_value, ramp_value

__all__ = [
    "DistributedTraining",
    "StateDictSaver",
    "BestStateDictSaver",
    "ValidationProtocol",
    "StopOnNonFiniteLoss",
    "NonFiniteLossError",
    "ClassificationReportHandler",
    "SegmentationReportHandler",
    "ProbabilityWriter",
    "source_filename",
    "SmoothAveragingHandler",
    "recompute_batchnorm",
    "RampHandler",
    "DecayHandler",
    "DANNLambdaHandler",
    "ramp_value",
    "decay_value",
    "TrainingState",
    "state_path",
]
