"""Checkpoints and resuming, so that a resumed run continues exactly where it stopped.

- ``files.py``: the atomic on-disk protocol both kinds share (staging, publish, RNG state)
- ``single_process.py``: checkpoints of a single-process run
- ``sharded.py``: DCP checkpoints of an FSDP2 run (they reshard across world sizes), the HF export
- ``resume.py``: which checkpoint to resume from, loading either kind, a changed configuration
- ``run_lock.py``: one run per directory (an OS lock, taken over from a killed run with a note)
"""
