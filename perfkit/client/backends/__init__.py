"""The interface every server's API client implements (each server kind's own client lives with its kind, in
``perfkit.kinds``; :func:`perfkit.kinds.create` builds one by the kind's name)."""

from perfkit.client.backends.base import DEFAULT_TIMEOUT_S, Backend, Capabilities, ModelFacts, Sampling

__all__ = ["Backend", "Capabilities", "ModelFacts", "Sampling", "DEFAULT_TIMEOUT_S"]
