"""Training: one RL step and everything a run builds for it.

Read in this order:

- ``step.py``: :func:`~occ_fast.training.step.rl_step`, one RL step top to bottom, each stage one call
- ``groups.py``: stages 1-3, prompts -> rollouts -> rewards (dynamic sampling refills)
- ``update.py``: stages 5-6, mini-batches, old log-probs, one optimizer step per mini-batch
- ``update_stats.py``: the updates' loss metrics, summed on the device, read once per step
- ``heldout.py``: avg@k / pass@k on held-out problems every ``eval.every`` steps
- ``setup.py``: :class:`~occ_fast.training.setup.Run` and the setup that builds or restores it
- ``build.py``: tokenizer, model and datasets from the config
- ``engine.py``: the rollout engine (transformers or vLLM)
- ``warm_start.py``: the supervised warm start on reference completions
- ``optim.py``: AdamW with its weight-decay split, and the learning-rate schedule

The loop around the step (logging, evaluation, checkpoints, signals) is ``occ_fast/train.py``.
"""
