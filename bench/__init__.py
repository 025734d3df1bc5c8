"""bgworker benchmarks: every contender in one invocation, so ratios hold on a noisy machine.

Run ``python -m bench run`` (or ``make bench``); ``--quick`` runs each benchmark briefly.
See BENCHMARKS.md.
"""
