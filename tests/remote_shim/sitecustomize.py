"""Put on PYTHONPATH by a test (with PERFKIT_TEST_EVERY_HOST_REMOTE=1) so that every Python perfkit starts, the
study kernels included, treats every server as on another host: the scripted Ollama then stands in for a user's
GPU server that perfkit sees only through its HTTP API and its telemetry."""

import os

if os.environ.get("PERFKIT_TEST_EVERY_HOST_REMOTE") == "1":
    from perfkit.servers import procs

    procs.is_local_host = lambda host: False
