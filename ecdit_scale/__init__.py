"""ecdit-scale: a scaling-law simulator and planner for EC-DiT.

Importing the package loads nothing heavy: the planner and the scaling analysis need no torch,
and the commands import their layers when they run.
"""

__version__ = "0.1.0"  # the one place the version is set (pyproject.toml reads it)
