"""Scoring a model on held-out problems: avg@k and pass@k with k samples per problem.

Shared by periodic evaluation during training and by ``python -m occ_fast.eval``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from transformers import PreTrainedTokenizerBase

from occ_fast.data import PromptRecord
from occ_fast.prompts import encode_prompt
from occ_fast.rewards import RewardScorer
from occ_fast.rollout import RolloutEngine, SamplingParams
from occ_fast.rollout.base import ProgressCallback


@dataclass
class EvalResult:
    avg_at_k: float  # mean reward over all k samples of every problem (the paper's avg@32)
    pass_at_k: float  # fraction of problems with at least one correct sample
    k: int
    num_problems: int
    num_timeouts: int
    num_errors: int
    samples: list[dict] = field(default_factory=list)  # per completion, for inspection


def evaluate(
    engine: RolloutEngine,
    tokenizer: PreTrainedTokenizerBase,
    records: Sequence[PromptRecord],
    scorer: RewardScorer,
    *,
    k: int = 1,
    temperature: float = 0.0,
    top_p: float = 1.0,
    max_new_tokens: int = 1024,
    seed: int = 0,
    progress: ProgressCallback | None = None,
) -> EvalResult:
    """Sample ``k`` completions per problem (greedy when ``temperature`` is 0) and score them."""
    if not records:
        raise ValueError("evaluate: no problems to evaluate")
    params = SamplingParams(
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        n=k,
        seed=seed,
        eos_token_ids=(tokenizer.eos_token_id,),
    )
    prompts = [encode_prompt(tokenizer, r) for r in records]
    results = engine.generate(prompts, params, progress=progress)
    texts = [tokenizer.decode(r.content_ids) for r in results]
    truths = [records[r.prompt_index].answer for r in results]
    scored = scorer.score(texts, truths)
    correct = [reward > 0 for reward in scored.rewards]
    solved = {r.prompt_index for r, ok in zip(results, correct) if ok}
    samples = [
        {
            "problem": records[r.prompt_index].source,
            "sample": r.sample_index,
            "completion": text,
            "answer": truth,
            "reward": reward,
            "finish_reason": r.finish_reason,
        }
        for r, text, truth, reward in zip(results, texts, truths, scored.rewards)
    ]
    return EvalResult(
        avg_at_k=sum(scored.rewards) / len(scored.rewards),
        pass_at_k=len(solved) / len(records),
        k=k,
        num_problems=len(records),
        num_timeouts=scored.num_timeouts,
        num_errors=scored.num_errors,
        samples=samples,
    )
