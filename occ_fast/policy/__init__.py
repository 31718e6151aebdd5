"""The policy on training data: rollout samples packed into micro-batches (``batching.py``) and one
forward pass giving every head's per-token log-probs (``forward.py``), shared by the RL update, the
warm start and the diagnostics."""
