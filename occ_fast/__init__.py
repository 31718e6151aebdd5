"""occ-fast: RLVR (GRPO/DAPO) with jointly trained MTP heads via Optimal Coefficient Calibration."""

from occ_fast.threads import set_wait_policy

set_wait_policy()  # before any entry point imports torch, which loads OpenMP (see occ_fast.threads)

__version__ = "0.1.0"
