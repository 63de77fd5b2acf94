"""What trained runs say about the planner and about expert choice.

- ``validate`` (with ``rows``, ``measure`` and ``calibrate``): predictions next to
  measurements of launched runs and GPU result files;
- ``adaptive``: how expert choice spreads its compute over tokens, layers and timesteps;
- ``alignment``: GenEval-style scoring of images against the shapes set's captions;
- ``runs``: a run directory read for evaluation, its trained model and held-out samples.

Rendering (tables for a terminal) belongs to ``cli/evaluate.py``.
"""
