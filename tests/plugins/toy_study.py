"""A study written only against perfkit's plugin interface (tests/test_plugin_study.py registers it through
$PERFKIT_STUDIES): warm requests to one model, one figure."""

from pathlib import Path

from pydantic import Field

from perfkit.analysis import figures as F
from perfkit.analysis.figures import FigureSet
from perfkit.analysis.requests import failures, measured
from perfkit.core.schema import Strict
from perfkit.measure.runner import plan
from perfkit.studies import Study, StudyResult, register


class ToyParams(Strict):
    model: str
    reps: int = Field(4, ge=1, le=100)


@register
class Toy(Study):
    name = "toy"
    title = "Toy: warm requests"
    question = "How fast is a warm request?"
    Params = ToyParams
    notebook = Path(__file__).with_name("toy.ipynb")

    def measure(self, ctx):
        with ctx.session() as s:
            s.runner.run(plan([ctx.cfg.model], ctx.cfg.reps, prefix="toy", seed=ctx.params.seed), desc="toy")

    def analyze(self, ctx):
        df = ctx.store.trials()
        fig = F.per_request("toy", "ttft", measured(df), "ttft_s", where={"model": ctx.cfg.model}, model=ctx.cfg.model,
                            headline="toy TTFT")
        return StudyResult("toy", FigureSet([fig]), df, ctx.store.manifest(), failures(df))

    def conclusions(self, result):
        f = result.figures.get(f"toy/ttft/{result.trials['model'].iloc[0]}") if len(result.trials) else None
        return f"A warm request's first token: {f.text() if f else 'not measured'}."
