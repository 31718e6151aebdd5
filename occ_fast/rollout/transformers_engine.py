"""Rollouts with any HF causal LM: a plain KV-cached sampling loop, no vLLM needed.

This is the engine for CPU tests, small models and machines without vLLM. It writes its own loop
instead of calling ``model.generate`` so the reported log-probs are, by construction, those of the
distribution the token was drawn from (``sampling.sampling_logprobs``).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch
from torch.distributed.tensor import DTensor
from transformers import PreTrainedModel

from occ_fast.rollout.base import ProgressCallback, RolloutResult, SamplingParams
from occ_fast.rollout.sampling import sample_tokens, sampling_logprobs


class TransformersEngine:
    """Batched, left-padded generation with ``model``.

    The model may be the trainer's own model (colocated: ``sync_weights`` is then a no-op) or a
    separate copy. Sequences run ``max_batch_size`` at a time, and rows that finish leave the batch
    (and its KV cache) as it decodes; results depend on neither.
    """

    def __init__(self, model: PreTrainedModel, *, max_batch_size: int = 64) -> None:
        if max_batch_size < 1:
            raise ValueError(f"TransformersEngine: max_batch_size must be >= 1, got {max_batch_size}")
        self.model = model
        self.max_batch_size = max_batch_size
        # transformers 5.24 renamed the forward's `past_key_values` to `cache`; accept either.
        self._cache_kwarg = (
            "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        )

    def sync_weights(self, model: torch.nn.Module) -> None:
        """Copy ``model``'s weights (a HF causal LM, or an MTP model's ``base``) in by parameter name;
        extra source entries (e.g. MTP) are ignored. An FSDP2-sharded source is all-gathered one
        tensor at a time (a collective: every rank calls this, in the same order)."""
        model = getattr(model, "base", model)
        if model is self.model:
            return
        source = model.state_dict()
        target = self.model.state_dict()
        missing = [name for name in target if name not in source]
        if missing:
            raise KeyError(f"sync_weights: the source model lacks {len(missing)} tensors, e.g. {missing[:3]}")
        with torch.no_grad():
            for name, tensor in target.items():
                if source[name].shape != tensor.shape:
                    raise ValueError(
                        f"sync_weights: {name} has shape {tuple(source[name].shape)} in the source model, "
                        f"{tuple(tensor.shape)} in the engine"
                    )
                value = source[name]
                tensor.copy_(value.full_tensor() if isinstance(value, DTensor) else value)

    def generate(
        self,
        prompt_token_ids: Sequence[Sequence[int]],
        params: SamplingParams,
        *,
        progress: ProgressCallback | None = None,
    ) -> list[RolloutResult]:
        """Sample ``params.n`` completions per prompt; results are prompt-major."""
        prompts = [list(map(int, p)) for p in prompt_token_ids]
        self._check_prompts(prompts)
        rows = [(p, s) for p in range(len(prompts)) for s in range(params.n)]
        seed = params.seed if params.seed is not None else int(torch.randint(0, 2**62, (1,)).item())
        generator = torch.Generator().manual_seed(seed)
        # Row r always gets the r-th row of uniforms, whatever the micro-batching.
        uniforms = torch.rand(len(rows), params.max_new_tokens, generator=generator)

        was_training = self.model.training
        self.model.eval()
        results: list[RolloutResult] = []
        try:
            for start in range(0, len(rows), self.max_batch_size):
                chunk = rows[start : start + self.max_batch_size]
                batch = [prompts[p] for p, _ in chunk]
                tokens, logprobs, lengths, hit_eos = self._generate_batch(
                    batch, uniforms[start : start + len(chunk)], params
                )
                for i, (p, s) in enumerate(chunk):
                    n = int(lengths[i])
                    results.append(
                        RolloutResult(
                            prompt_index=p,
                            sample_index=s,
                            prompt_token_ids=prompts[p],
                            token_ids=tokens[i, :n].tolist(),
                            logprobs=logprobs[i, :n].clone(),
                            finish_reason="eos" if hit_eos[i] else "length",
                        )
                    )
                if progress is not None:
                    progress(len(results), len(rows))
        finally:
            self.model.train(was_training)
        return results

    def _check_prompts(self, prompts: list[list[int]]) -> None:
        vocab = self.model.get_input_embeddings().num_embeddings
        for i, prompt in enumerate(prompts):
            if not prompt:
                raise ValueError(f"generate: prompt {i} is empty")
            bad = [t for t in prompt if not 0 <= t < vocab]
            if bad:
                raise ValueError(f"generate: prompt {i} has token ids outside [0, {vocab}): {bad[:5]}")

    @torch.inference_mode()
    def _generate_batch(
        self, prompts: list[list[int]], uniforms: torch.Tensor, params: SamplingParams
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns CPU tensors: tokens [B, T], logprobs [B, T], lengths [B], hit_eos [B]."""
        device = self.model.get_input_embeddings().weight.device
        batch, width, steps = len(prompts), max(map(len, prompts)), params.max_new_tokens
        input_ids = torch.zeros(batch, width, dtype=torch.long)  # pad id is irrelevant: it is masked
        attention_mask = torch.zeros(batch, width, dtype=torch.long)
        for i, prompt in enumerate(prompts):
            input_ids[i, width - len(prompt) :] = torch.tensor(prompt)
            attention_mask[i, width - len(prompt) :] = 1
        input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        uniforms = uniforms.to(device)
        eos = torch.tensor(params.eos_token_ids, dtype=torch.long, device=device)

        tokens = torch.zeros(batch, steps, dtype=torch.long, device=device)
        logprobs = torch.zeros(batch, steps, dtype=torch.float32, device=device)
        lengths = torch.zeros(batch, dtype=torch.long, device=device)
        hit_eos = torch.zeros(batch, dtype=torch.bool, device=device)

        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=True,
            logits_to_keep=1,
        )
        active = torch.arange(batch, device=device)  # batch row of each row still being decoded
        live = torch.ones(batch, dtype=torch.bool, device=device)  # per decoded row: no EOS yet
        for t in range(steps):
            lp = sampling_logprobs(out.logits[:, -1], params.temperature, params.top_k, params.top_p)
            token = sample_tokens(lp, uniforms[active, t])
            tokens[active, t] = torch.where(live, token, 0)
            logprobs[active, t] = torch.where(live, lp.gather(-1, token[:, None]).squeeze(-1), 0.0)
            lengths[active] += live.long()
            stopped = live & torch.isin(token, eos)
            hit_eos[active] |= stopped
            live &= ~stopped
            if t == steps - 1:
                break
            num_live = int(live.sum())  # the one host sync per decoding step
            if num_live == 0:
                break
            cache = out[self._cache_kwarg]
            if num_live <= len(active) * 3 // 4:
                # Stop decoding finished rows: drop them from the KV cache and the inputs once a
                # quarter of the rows are done (each drop copies the cache, so not at every EOS).
                keep = live.nonzero().squeeze(-1)
                cache.batch_select_indices(keep)
                active, live, token = active[keep], live[keep], token[keep]
                attention_mask, position_ids = attention_mask[keep], position_ids[keep]
            attention_mask = torch.cat([attention_mask, attention_mask.new_ones(len(active), 1)], dim=-1)
            position_ids = position_ids[:, -1:] + 1
            out = self.model(
                input_ids=token[:, None],
                attention_mask=attention_mask,
                position_ids=position_ids,
                use_cache=True,
                **{self._cache_kwarg: cache},
            )
        return tokens.cpu(), logprobs.cpu(), lengths.cpu(), hit_eos.cpu()
