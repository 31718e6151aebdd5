"""Experiments built on the trainer: sweeps that produce tables and plots (``python -m occ_fast.experiments.NAME``)."""
