"""Watching a run: what it records, shows, measures, and when it stops.

- ``metrics.py``: ``metrics.jsonl``, TensorBoard and W&B, PNG plots
- ``report.py``: the per-step console line, which plots a run draws, the final summary
- ``progress.py``: the progress bars
- ``diagnostics.py``: exact ``<g_RL, g_MTP>`` and ``||g_MTP||^2`` against the OCC proxy
- ``spec_forecast.py``: the speculative-decoding acceptance forecast from the MTP heads' hits
- ``health.py``: each step's health (which checkpoint pruning keeps, a collapsed policy), stops on
  repeated non-finite updates or failing rewards
- ``interrupt.py``: Ctrl-C / SIGTERM: finish the step, checkpoint, print the resume command
- ``early_interrupt.py``: Ctrl-C while the trainer is still importing: one line, not a traceback
- ``output.py``: run-directory and checkpoint-write failures as one line
"""
