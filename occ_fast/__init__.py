"""occ-fast: RLVR (GRPO/DAPO) with jointly trained MTP heads via Optimal Coefficient Calibration."""

__version__ = "0.1.0"
