"""Multi-process training under torchrun: the process group, FSDP2 sharding of an
:class:`~occ_fast.model.MTPModel`, and the cross-rank reductions the RL loop needs.

- ``process_group.py``: joining the group torchrun describes; this process's rank and device
- ``fsdp.py``: FSDP2 sharding, gradient clipping over the shards
- ``data_parallel.py``: each rank's share of the prompts, a rank-independent group order, padding
  micro-batches
- ``collectives.py``: global sums and counts, per-rank metrics combined

Data parallelism splits a step's prompts (whole groups) across ranks; every rank packs its own
micro-batches. The token-mean loss must still divide by the *global* token count of the
mini-batch (:func:`~occ_fast.distributed.collectives.global_sum`), otherwise each rank's gradient
would be scaled by its own share and the FSDP gradient average would weight tokens unequally. FSDP
runs collectives in every forward and backward, so all ranks must run the same number of
micro-batches (:func:`~occ_fast.distributed.data_parallel.pad_micro_batches`).

Sharded checkpoints and the Hugging Face export live in :mod:`occ_fast.checkpointing.sharded`.
"""
