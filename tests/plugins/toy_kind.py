"""A server kind written only against perfkit's plugin interface (tests/test_plugin_study.py registers it through
$PERFKIT_KINDS): a server that speaks the /v1 protocol, is recognised by its own route, names one setting its own
way and offers it to tuning."""

from perfkit import kinds
from perfkit.client.compatible import CompatibleBackend
from perfkit.client.probe import ProbeSpec
from perfkit.core import settings

settings.register_names([settings.Name("TOY_SLOTS", settings.PARALLEL)])


class ToyBackend(CompatibleBackend):
    name = "toy-server"


def _identify(body, shown, status):
    if "data" not in body:
        raise ValueError("without a model list")
    return f"a toy server at {shown}"


@kinds.register
class ToyServer(kinds.ServerKind):
    name = "toy-server"
    title = "a toy server"
    backend = ToyBackend
    probe = ProbeSpec("/v1/models", "the toy API", "toy-serve", _identify)
    tuning_space = {settings.PARALLEL: [1, 3]}

    def deploy_files(self, setting, head, model):
        slots = settings.value_of(setting, settings.PARALLEL)
        return {"toy.conf": head + (f"slots = {slots}\n" if slots else "")}
