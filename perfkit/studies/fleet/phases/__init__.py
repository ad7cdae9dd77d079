"""The fleet study's phases, one module each, in the order a run measures them.

Each module holds a phase's measurement (``measure``, on a :class:`..phase_run.PhaseRun`) and the reading of what
it recorded (its table or summary), side by side: the tags and variants one writes are the keys the other reads,
and a change to one is a change to both."""
