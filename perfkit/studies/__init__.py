"""The five studies. Each has ``run(ctx)`` (measure, resumable), ``analyze(ctx)`` (from recorded
data only, no server) and ``conclusions(result)`` (text built from the measured numbers)."""

from . import cold_start, config_tuning, fleet, model_size, quantization
from ._context import Session, StudyContext

STUDY_MODULES = {"cold_start": cold_start, "model_size": model_size, "quantization": quantization,
                 "config_tuning": config_tuning, "fleet": fleet}


def run_or_load(params_path, run_dir, study: str, measure: bool = True):
    """What a notebook calls: measure (or, with ``measure=False``, re-read recorded data) and analyze."""
    from ..runlock import start_lifeline

    start_lifeline()  # under `perfkit run`: this kernel and its engines die with perfkit (see perfkit.runlock)
    ctx = StudyContext(params_path, run_dir, study)
    mod = STUDY_MODULES[study]
    return mod.run(ctx) if measure else mod.analyze(ctx)


__all__ = ["StudyContext", "Session", "STUDY_MODULES", "run_or_load"]
