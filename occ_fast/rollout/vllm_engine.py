"""Rollouts with vLLM's offline ``LLM``, colocated with training in the same processes (CUDA only).

Written for vLLM 0.10.2+ (V1 engine, ``GPUModelRunner``). One engine per process: under torchrun it
joins the trainer's process group (``distributed_executor_backend="external_launcher"``); alone it
runs in-process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``), so weights reach the workers by reference.
Sleep mode hands GPU memory back to training between rollouts: level 1 offloads weights to CPU and
drops the KV cache; level 2 drops weights too (no CPU copy either way, faster) and relies on
:meth:`VLLMEngine.sync_weights`, which the trainer calls after every optimizer step anyway.

Log-probs: vLLM returns, by default, log-probs of the *raw* logits (before temperature and top-k/p).
We ask for ``logprobs_mode="processed_logprobs"``: those of the distribution actually sampled from,
which is what :mod:`occ_fast.rollout.base` promises.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Literal

import torch

from occ_fast.model import naming as names
from occ_fast.rollout.base import FinishReason, ProgressCallback, RolloutResult, SamplingParams

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'occ-fast[vllm]' (Linux + CUDA only)"
_FINISH: dict[str, FinishReason] = {"stop": "eos", "length": "length"}
_SPEC = "vllm:spec_decode_num_"
NamedTensors = list[tuple[str, torch.Tensor]]


class WeightSyncError(RuntimeError):
    """vLLM is not sampling from the trainer's weights."""


def check_logprobs_agree(
    engine: torch.Tensor | Sequence[torch.Tensor],
    trainer: torch.Tensor | Sequence[torch.Tensor],
    *,
    threshold: float,
    context: str = "",
) -> float:
    """Mean |engine - trainer| log-prob over the same tokens; raises :class:`WeightSyncError` above
    ``threshold`` (stale or garbage weights in the engine) or when any value is not finite."""
    e = torch.cat([t.flatten() for t in engine]) if isinstance(engine, Sequence) else engine.flatten()
    t = torch.cat([x.flatten() for x in trainer]) if isinstance(trainer, Sequence) else trainer.flatten()
    if e.shape != t.shape or e.numel() == 0:
        raise ValueError(
            f"check_logprobs_agree: need equal, non-empty token counts, got {e.numel()} and {t.numel()}"
        )
    diff = (e.double().cpu() - t.double().cpu()).abs()
    mean = float(diff.mean())
    if not torch.isfinite(diff).all() or mean > threshold:
        raise WeightSyncError(
            f"rollout engine log-probs disagree with the trainer's{context}: mean |diff| = {mean:.4f} over "
            f"{e.numel()} tokens (threshold {threshold}). The engine is not sampling from the trainer's "
            "weights: the weight sync failed or was skipped (e.g. weights lost in sleep mode)."
        )
    return mean


def bucketed(named: Iterable[tuple[str, torch.Tensor]], max_bytes: int) -> Iterator[NamedTensors]:
    """Consecutive groups of at most ``max_bytes``, in order; a larger tensor travels alone."""
    if max_bytes <= 0:
        raise ValueError(f"bucket size must be > 0 bytes, got {max_bytes}")
    bucket: NamedTensors = []
    size = 0
    for name, tensor in named:
        nbytes = tensor.numel() * tensor.element_size()
        if bucket and size + nbytes > max_bytes:
            yield bucket
            bucket, size = [], 0
        bucket.append((name, tensor))
        size += nbytes
    if bucket:
        yield bucket


def drafter_weights(model: Any) -> Iterator[tuple[str, torch.Tensor]]:
    """An :class:`~occ_fast.model.MTPModel`'s MTP heads under the checkpoint names vLLM's MTP drafter
    loads (as :func:`~occ_fast.model.save_mtp_model` writes them), plus the shared embedding and
    lm_head the drafter holds its own handle to."""
    base, naming = model.base, model.naming
    layers_n = base.config.num_hidden_layers
    embed, head = base.get_input_embeddings().weight, base.get_output_embeddings().weight
    if naming == "mimo":  # MiMoMTP.load_weights takes the trunk's own names for these
        yield from (("model.embed_tokens.weight", embed), ("lm_head.weight", head))
    for depth, layer in enumerate(model.mtp, start=1):
        for key, tensor in layer.state_dict().items():
            yield names.checkpoint_key(naming, depth, layers_n, key), names.convert(naming, key, tensor)
        for suffix, tensor in zip(names.SHARED_COPIES[naming], (embed, head)):
            yield names.prefix(naming, depth, layers_n) + suffix, tensor


def spec_counters(metrics: Iterable[Any]) -> dict[str, Any]:
    """vLLM's cumulative spec-decode counters from ``LLM.get_metrics()`` (V1, log stats on; one engine)."""
    out: dict[str, Any] = {}
    for m in metrics:
        if m.name.startswith(_SPEC):
            key = m.name[len(_SPEC) :]
            out[key] = list(m.values) if hasattr(m, "values") else m.value  # Vector: per draft position
    return out


def acceptance_stats(before: dict[str, Any], after: dict[str, Any]) -> dict[str, float]:
    """Draft acceptance between two :func:`spec_counters` snapshots; empty if nothing was drafted."""
    drafts = after.get("drafts", 0) - before.get("drafts", 0)
    drafted = after.get("draft_tokens", 0) - before.get("draft_tokens", 0)
    if drafts <= 0 or drafted <= 0:
        return {}
    accepted = after.get("accepted_tokens", 0) - before.get("accepted_tokens", 0)
    stats = {"acceptance_rate": accepted / drafted, "mean_acceptance_length": 1 + accepted / drafts}
    old = before.get("accepted_tokens_per_pos", [])
    for i, v in enumerate(after.get("accepted_tokens_per_pos", [])):
        stats[f"acceptance_rate_pos{i}"] = (v - (old[i] if i < len(old) else 0)) / drafts
    return stats


def sampling_kwargs(params: SamplingParams, seed: int) -> dict[str, Any]:
    """Our :class:`SamplingParams` as ``vllm.SamplingParams`` keywords: only ``eos_token_ids`` stop a
    completion (the model's own EOS is ignored unless listed), and the sampled token's log-prob comes back."""
    return dict(
        n=params.n,
        temperature=params.temperature,
        top_p=params.top_p,
        top_k=params.top_k or -1,
        max_tokens=params.max_new_tokens,
        seed=seed,
        logprobs=0,
        ignore_eos=True,
        stop_token_ids=list(params.eos_token_ids),
        detokenize=False,
    )


def to_results(
    prompts: list[list[int]], outputs: Sequence[Any], params: SamplingParams
) -> list[RolloutResult]:
    """vLLM ``RequestOutput``s (one per prompt, in order) as prompt-major :class:`RolloutResult`s."""
    if len(outputs) != len(prompts):
        raise RuntimeError(f"vLLM returned {len(outputs)} outputs for {len(prompts)} prompts")
    results = []
    for p, (prompt, out) in enumerate(zip(prompts, outputs)):
        samples = sorted(out.outputs, key=lambda c: c.index)
        if len(samples) != params.n:
            raise RuntimeError(f"vLLM returned {len(samples)} samples for prompt {p}, expected n={params.n}")
        for s, c in enumerate(samples):
            ids = list(c.token_ids)
            reason = _FINISH.get(c.finish_reason)
            if reason is None or (reason == "eos" and (not ids or ids[-1] not in params.eos_token_ids)):
                raise RuntimeError(
                    f"vLLM ended prompt {p} sample {s} with {c.finish_reason!r}, tokens {ids[-3:]}"
                )
            if params.temperature == 0:  # greedy: the sampled distribution is a point mass
                logprobs = torch.zeros(len(ids))
            elif c.logprobs is None or len(c.logprobs) != len(ids):
                raise RuntimeError(f"vLLM returned no log-prob for some tokens of prompt {p} sample {s}")
            else:
                logprobs = torch.tensor(
                    [c.logprobs[i][t].logprob for i, t in enumerate(ids)], dtype=torch.float32
                )
            results.append(RolloutResult(p, s, prompt, ids, logprobs, reason))
    return results


def _materialise(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    full = tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor  # DTensor (FSDP2) shards
    return full.detach().to(device, torch.bfloat16)


def load_bucket(llm: Any, bucket: NamedTensors, *, into_drafter: bool) -> None:
    """Load one bucket through the vLLM model's own ``load_weights`` (it maps HF names, fuses qkv and
    gate/up, shards for TP). Written for vLLM 0.10-0.1x V1: ``LLM.collective_rpc`` with a callable
    runs it on every local worker, in-process (tensors by reference); the MTP drafter is the
    ``EagleProposer``'s ``model``. The V2 model runner and V0 engine are not supported."""

    def load(worker: Any) -> int:
        runner = worker.model_runner
        target = runner.drafter.model if into_drafter else runner.get_model()
        return len(target.load_weights(weights=bucket) or ())

    if not any(llm.collective_rpc(load)):
        where = "MTP drafter" if into_drafter else "model"
        raise WeightSyncError(f"vLLM's {where} loaded none of {len(bucket)} tensors, e.g. {bucket[0][0]!r}")


def llm_kwargs(
    model_path: str,
    *,
    gpu_memory_utilization: float,
    max_model_len: int | None,
    seed: int,
    speculative: Literal["none", "mtp"],
    num_speculative_tokens: int,
    torchrun: bool,
) -> dict[str, Any]:
    """``vllm.LLM`` keywords for a colocated engine (bf16, sleep mode, processed log-probs)."""
    kwargs: dict[str, Any] = dict(
        model=model_path,
        dtype="bfloat16",
        seed=seed,
        gpu_memory_utilization=gpu_memory_utilization,
        max_model_len=max_model_len,
        enable_sleep_mode=True,
        logprobs_mode="processed_logprobs",
        generation_config="vllm",  # no sampling defaults from the model's generation_config.json
        skip_tokenizer_init=True,  # prompts arrive as token ids
        disable_log_stats=speculative == "none",  # get_metrics() needs stats
    )
    if torchrun:  # one engine per rank, inside the trainer's processes and process group
        kwargs["distributed_executor_backend"] = "external_launcher"
    if speculative == "mtp":
        kwargs["speculative_config"] = {"method": "mtp", "num_speculative_tokens": num_speculative_tokens}
    return kwargs


class VLLMEngine:
    """A :class:`~occ_fast.rollout.base.RolloutEngine` on vLLM, asleep between rollouts.

    ``model_path``: local HF directory with the initial weights (with MTP heads, as ``save_mtp_model``
    writes them, when ``speculative="mtp"``). After a sync (every ``check_every``-th; 0 = never) a
    fixed probe compares vLLM's log-probs with the trainer's: this flags garbage weights at once and
    skipped syncs once the policy has moved by more than ``check_threshold``. ``engine_kwargs``
    override/extend the ``vllm.LLM`` keywords (e.g. ``speculative_config`` with a model-specific method).
    """

    def __init__(
        self,
        model_path: str | os.PathLike,
        *,
        gpu_memory_utilization: float = 0.5,
        max_model_len: int | None = None,
        seed: int = 0,
        speculative: Literal["none", "mtp"] = "none",
        num_speculative_tokens: int = 1,
        sleep_level: Literal[1, 2] = 1,
        bucket_bytes: int = 1 << 30,
        check_threshold: float = 0.1,
        check_every: int = 1,
        engine_kwargs: dict[str, Any] | None = None,
    ) -> None:
        for ok, what in [
            (
                0 < gpu_memory_utilization <= 1,
                f"gpu_memory_utilization={gpu_memory_utilization} (need (0, 1])",
            ),
            (speculative in ("none", "mtp"), f"speculative={speculative!r} (need 'none' or 'mtp')"),
            (num_speculative_tokens >= 1, f"num_speculative_tokens={num_speculative_tokens} (need >= 1)"),
            (sleep_level in (1, 2), f"sleep_level={sleep_level} (need 1 or 2)"),
            (
                bucket_bytes > 0 and check_every >= 0,
                f"bucket_bytes={bucket_bytes}, check_every={check_every}",
            ),
        ]:
            if not ok:
                raise ValueError(f"VLLMEngine: bad {what}")
        try:
            import vllm
        except ImportError as e:
            raise ImportError(
                f"rollout.engine='vllm' needs vLLM, which is not installed: {INSTALL_HINT}"
            ) from e
        if "logprobs_mode" not in vllm.EngineArgs.__dataclass_fields__:
            raise ImportError(f"vLLM {vllm.__version__} lacks logprobs_mode (need >= 0.10.2): {INSTALL_HINT}")
        if not os.path.isdir(model_path):
            raise FileNotFoundError(f"VLLMEngine: model_path {model_path} is not a directory")
        torchrun = "WORLD_SIZE" in os.environ
        if not torchrun:  # keep the engine core in this process, so weights pass by reference
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        self.rank = int(os.environ.get("RANK", "0"))
        kwargs = llm_kwargs(
            str(model_path),
            gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=max_model_len,
            seed=seed + self.rank,
            speculative=speculative,
            num_speculative_tokens=num_speculative_tokens,
            torchrun=torchrun,
        )
        self._vllm = vllm
        self.llm = vllm.LLM(**{**kwargs, **(engine_kwargs or {})})
        self.speculative, self.sleep_level, self.bucket_bytes = speculative, sleep_level, bucket_bytes
        self.check_threshold, self.check_every = check_threshold, check_every
        self.last_spec_stats: dict[str, float] = {}
        """Draft acceptance of the last generate() (``acceptance_rate`` etc.); empty without speculation."""
        self.last_sync_logprob_diff: float | None = None
        self._awake = {"weights", "kv_cache"}
        self._weights_valid = True
        self._syncs = 0
        self._warned_truncation = False
        logger.info("vLLM %s engine on %s, speculative=%s", vllm.__version__, model_path, speculative)

    def generate(
        self,
        prompt_token_ids: Sequence[Sequence[int]],
        params: SamplingParams,
        *,
        progress: ProgressCallback | None = None,
    ) -> list[RolloutResult]:
        """Sample ``params.n`` completions per prompt (prompt-major), then sleep."""
        prompts = [list(map(int, p)) for p in prompt_token_ids]
        empty = [i for i, p in enumerate(prompts) if not p]
        if empty:
            raise ValueError(f"generate: prompts {empty[:5]} are empty")
        if (params.top_p < 1 or params.top_k > 0) and not self._warned_truncation:
            logger.warning(
                "top_p/top_k truncate the sampling distribution: rollout log-probs are those of the "
                "renormalised truncated distribution, so ratios against the trainer's full softmax are biased"
            )
            self._warned_truncation = True
        seed = params.seed if params.seed is not None else int(torch.randint(0, 2**62, (1,)).item())
        seed += self.rank << 40  # ranks sample differently even from equal seeds
        # vLLM seeds sample i of a request with seed + i: prompt p's samples get seed + p*n + i.
        sampling = [self._sampling(params, seed + p * params.n) for p in range(len(prompts))]
        self._wake("weights", "kv_cache")
        before = spec_counters(self.llm.get_metrics()) if self.speculative == "mtp" else {}
        outputs = self.llm.generate([{"prompt_token_ids": p} for p in prompts], sampling, use_tqdm=False)
        if self.speculative == "mtp":
            self.last_spec_stats = acceptance_stats(before, spec_counters(self.llm.get_metrics()))
        self._sleep()
        results = to_results(prompts, outputs, params)
        if progress is not None:
            progress(len(results), len(results))
        return results

    def sync_weights(self, model: torch.nn.Module) -> None:
        """Copy ``model``'s weights (an :class:`~occ_fast.model.MTPModel` or a plain HF causal LM) into
        vLLM in ``bucket_bytes`` buckets, MTP heads into the drafter when speculating; then probe."""
        base = getattr(model, "base", model)
        self._wake("weights")
        device = torch.device("cuda", torch.cuda.current_device())
        streams = [(base.state_dict().items(), False)]
        if self.speculative == "mtp":
            streams.append((drafter_weights(model), True))
        for named, into_drafter in streams:
            for bucket in bucketed(named, self.bucket_bytes):
                # Materialised a bucket at a time: bounds memory for fp32, CPU-offloaded or DTensor sources.
                ready = [(n, _materialise(t, device)) for n, t in bucket]
                load_bucket(self.llm, ready, into_drafter=into_drafter)
        self.llm.reset_prefix_cache()  # cached KV was computed with the old weights
        self._weights_valid = True
        self._syncs += 1
        if self.check_every and (self._syncs == 1 or self._syncs % self.check_every == 0):
            # Under FSDP2 the MTP model is the root: its embedding and lm_head stay sharded unless it
            # unshards them, because the probe calls the trunk directly (the layers gather their own).
            root = model if hasattr(model, "unshard") else None
            if root is not None:
                root.unshard()
            self.last_sync_logprob_diff = self._probe(base)
            if root is not None:
                root.reshard()

    def _probe(self, base: torch.nn.Module) -> float:
        """Sample 16 tokens for a fixed prompt in vLLM (T=1) and score them with the trainer's model."""
        vocab = base.get_input_embeddings().num_embeddings
        prompt = [(7 * i + 3) % vocab for i in range(16)]
        params = SamplingParams(max_new_tokens=16, seed=0)
        self._wake("kv_cache")
        out = self.llm.generate([{"prompt_token_ids": prompt}], self._sampling(params, 0), use_tqdm=False)
        result = to_results([prompt], out, params)[0]
        ids = torch.tensor([prompt + result.token_ids], device=base.get_input_embeddings().weight.device)
        with torch.no_grad():
            logits = base(input_ids=ids).logits[0, len(prompt) - 1 : -1].float()
        trainer = logits.log_softmax(-1).gather(-1, ids[0, len(prompt) :, None]).squeeze(-1)
        context = f" after sync {self._syncs}"
        return check_logprobs_agree(result.logprobs, trainer, threshold=self.check_threshold, context=context)

    def _sampling(self, params: SamplingParams, seed: int) -> Any:
        return self._vllm.SamplingParams(**sampling_kwargs(params, seed))

    def _wake(self, *tags: str) -> None:
        if not self._weights_valid and "kv_cache" in tags:
            raise WeightSyncError("sleep_level=2 discarded vLLM's weights; call sync_weights before generate")
        missing = [t for t in tags if t not in self._awake]
        if missing:
            self.llm.wake_up(tags=missing)
            self._awake.update(missing)

    def _sleep(self) -> None:
        self.llm.sleep(level=self.sleep_level)
        self._awake.clear()
        self._weights_valid = self.sleep_level == 1
