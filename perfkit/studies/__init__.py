"""The five studies. Each has ``run(ctx)`` (measure, resumable), ``analyze(ctx)`` (from recorded
data only, no server) and ``conclusions(result)`` (text built from the measured numbers)."""

from perfkit.studies import cold_start
from perfkit.studies import config_tuning
from perfkit.studies import fleet
from perfkit.studies import model_size
from perfkit.studies import quantization
from perfkit.studies.base import Session, StudyContext

STUDY_MODULES = {"cold_start": cold_start, "model_size": model_size, "quantization": quantization,
                 "config_tuning": config_tuning, "fleet": fleet}


def run_or_load(params_path, run_dir, study: str, measure: bool = True):
    """What a notebook calls: measure (or, with ``measure=False``, re-read recorded data) and analyze."""
    from perfkit.core.children import start_lifeline

    start_lifeline()  # under `perfkit run`: this kernel and its engines die with perfkit (see perfkit.core.children)
    ctx = StudyContext(params_path, run_dir, study)
    mod = STUDY_MODULES[study]
    return mod.run(ctx) if measure else mod.analyze(ctx)


__all__ = ["StudyContext", "Session", "STUDY_MODULES", "run_or_load"]
