"""Held-out evaluation during training (``eval.every``): avg@k and pass@k, data parallel."""

from __future__ import annotations

import torch

from occ_fast.avg_at_k import evaluate
from occ_fast.distributed.collectives import global_sum
from occ_fast.training.build import eval_records
from occ_fast.training.setup import Run


def run_eval(run: Run, step: int) -> dict[str, float]:
    """avg@k and pass@k on the held-out problems; data parallel, each rank scores every W-th problem."""
    cfg, rank, world = run.cfg, run.dist.rank, run.dist.world_size
    records = eval_records(cfg)[rank::world]
    totals = torch.zeros(3)  # sum of avg@k, sum of pass@k, problems: each weighted by its problems
    if records:
        task = run.progress.add_task(f"step {step}: eval", total=None)
        result = evaluate(
            run.engine,
            run.tokenizer,
            records,
            run.scorer,
            k=cfg.eval.n,
            temperature=cfg.eval.temperature,
            max_new_tokens=cfg.rollout.max_new_tokens,
            seed=cfg.train.seed,
        )
        run.progress.remove_task(task)
        totals = torch.tensor([result.avg_at_k, result.pass_at_k, 1.0]) * len(records)
    totals = global_sum(totals).cpu()
    return {"eval/avg_at_k": float(totals[0] / totals[2]), "eval/pass_at_k": float(totals[1] / totals[2])}
