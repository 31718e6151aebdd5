"""The configuration tree: one dataclass per section, each field with its type, default, doc and constraint.

The field docstrings are the ``--help`` text (tyro); the ``Annotated[..., Field(...)]`` constraints are
checked by pydantic wherever a value enters (a YAML file, the command line), see ``loading``. Rules that
tie several fields together live in ``rules``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, ConfigDict, Field, with_config

from occ_fast.algorithm.config import Form, LossConfig, Regime
from occ_fast.algorithm.occ import Aggregation
from occ_fast.algorithm.rollout_mismatch import DEFAULT_MISMATCH_THRESHOLD, ISLevel
from occ_fast.config import rules
from occ_fast.config.loading import ConfigError, as_dict, field_problems, invalid, read_yaml
from occ_fast.rewards.loader import BUILTIN_REWARDS

PRESET_SUFFIX = ".yaml"


def _reward_fn(spec: str) -> str:
    """A built-in reward or an import path; the import itself happens when the run starts."""
    module, sep, attr = spec.partition(":")
    if spec not in BUILTIN_REWARDS and not (sep and module and attr):
        raise ValueError(f"one of {sorted(BUILTIN_REWARDS)} or 'package.module:function'")
    return spec


def _plain_dir_name(name: str) -> str:
    """``run.name`` is one directory under ``run.output_dir``, never a path out of it."""
    if not name or "/" in name or "\\" in name or name in (".", ".."):
        raise ValueError("a plain directory name (no path separators)")
    return name


@dataclass(frozen=True)
class TinyModelConfig:
    """Sizes of the random-init model built when ``model.name_or_path`` is None (tests, CPU runs)."""

    arch: Literal["qwen2", "llama"] = "qwen2"
    """Transformers architecture of the tiny model."""
    hidden_size: Annotated[int, Field(ge=1)] = 64
    """Hidden size H."""
    num_layers: Annotated[int, Field(ge=1)] = 2
    """Number of trunk decoder layers."""
    num_heads: Annotated[int, Field(ge=1)] = 4
    """Attention heads; must divide hidden_size, with an even head dimension (RoPE)."""
    num_kv_heads: Annotated[int, Field(ge=1)] = 2
    """Key/value heads (grouped-query attention); must divide num_heads."""
    intermediate_size: Annotated[int, Field(ge=1)] = 128
    """MLP width."""
    vocab_size: Annotated[int, Field(ge=259)] = 512
    """Vocabulary of the byte-level BPE trained offline for the tiny model (>= 259: 256 bytes + 3 special)."""


@dataclass(frozen=True)
class ModelConfig:
    """The policy: a local Hugging Face model or a tiny random one, with K MTP heads."""

    name_or_path: str | None = None
    """Local Hugging Face model directory (never downloaded); None builds a tiny random model from model.tiny."""
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)
    """Sizes of the tiny random model (used only when name_or_path is None)."""
    mtp_heads: Annotated[int, Field(ge=0)] = 1
    """Number of MTP depths K; 0 trains the main head alone."""
    mtp_init: Literal["auto", "checkpoint", "fresh"] = "auto"
    """MTP weights: 'checkpoint' requires them in name_or_path, 'fresh' copies the last trunk layer, 'auto' loads them when present."""
    attn_implementation: Literal["auto", "sdpa", "flash_attention_2", "eager"] = "auto"
    """Attention kernel; 'auto' takes flash_attention_2 when installed, else sdpa."""
    use_liger: bool = False
    """Swap the trunk's RMSNorm/SwiGLU/RoPE for Liger Triton kernels (CUDA, needs occ-fast[liger])."""
    dtype: Literal["auto", "bf16", "fp32"] = "auto"
    """Weight dtype; 'auto': bf16 on CUDA, fp32 on CPU. Under torchrun (FSDP2), bf16 means bf16 compute
    with fp32 master weights and fp32 gradient reduction."""
    gradient_checkpointing: bool = False
    """Recompute trunk activations in backward: less memory, about a third more compute."""


@dataclass(frozen=True)
class MTPConfig:
    """How the MTP heads are trained alongside the policy (method.md sections 5 and 7)."""

    regime: Regime = "occ"
    """none | detach (c * CE, MTP input detached) | ce (c * CE, joint) | policy (fixed lam) | occ (calibrated lam) | oracle (diagnostic, not the method: lam = lam_plus * c_cross / v2 from exact gradients every mini-batch; slow, single process)."""
    coef: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 0.1
    """Fixed MTP coefficient for detach/ce (c, paper 0.1) and policy (lam, 0.1 .. 1.0); split evenly over K heads."""
    lam_plus: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 1.0
    """OCC global scale lam_plus, also the oracle's (paper text 1.0, reference script 0.1)."""
    aggregation: Aggregation = "paper"
    """OCC proxy aggregation: paper (ratio of sums) | code (reference code, padding counts) | code_masked."""
    form: Form = "advantage"
    """Where lam applies: 'advantage' (reference code) or 'loss' (paper formula); they differ only for lam < 0."""
    detach_lm_head: bool = False
    """Keep the MTP objective off lm_head and the embedding (the later verl fix for the detach regime)."""
    head_ce_coef: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 0.0
    """policy/occ only, not part of the method: also add head_ce_coef * the MTP heads' cross-entropy (as ce does), so the draft heads keep training while lam is near 0; 0 = as published."""
    exact_every: Annotated[int, Field(ge=0)] = 0
    """Every N RL steps also measure the exact <g_RL, g_MTP> and ||g_MTP||^2, same-sample and cross-fitted, the CE gradient's c and the one-step gain (extra backwards and optimizer steps, undone); 0 = never."""

    @property
    def detach_trunk(self) -> bool:
        """The detach regime cuts the MTP input from the trunk; every other regime lets it through."""
        return self.regime == "detach"


@dataclass(frozen=True)
class AlgorithmConfig:
    """The DAPO-style clipped policy loss and the batch shaping around it (method.md section 4).

    The GRPO group size is ``rollout.n`` (samples per prompt); it has no second field here.
    """

    eps_low: Annotated[float, Field(ge=0, lt=1)] = 0.2
    """Lower clip range: the ratio is clipped at 1 - eps_low; in [0, 1)."""
    eps_high: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 0.28
    """Upper clip range (clip-higher): the ratio is clipped at 1 + eps_high; >= 0."""
    dual_clip_c: Annotated[float, Field(gt=1, allow_inf_nan=False)] = 10.0
    """Dual-clip bound for negative advantages; > 1."""
    tis_cap: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = None
    """Truncated importance-sampling cap on exp(lp_old - lp_rollout) against rollout/trainer mismatch; None = off."""
    tis_level: ISLevel = "token"
    """What tis_cap truncates: token = each token's ratio; sequence = exp(sum over the response of lp_old - lp_rollout), one weight per sequence."""
    is_mask_band: (
        tuple[Annotated[float, Field(gt=0, le=1)], Annotated[float, Field(ge=1, allow_inf_nan=False)]] | None
    ) = None
    """Rollout/trainer mismatch: drop from the loss (weight 0, still counted in the token mean) every sequence whose ratio exp(sum(lp_old - lp_rollout)) is outside [low, high], e.g. 0.5 2.0; None = off."""
    mismatch_threshold: Annotated[float, Field(gt=0, allow_inf_nan=False)] = DEFAULT_MISMATCH_THRESHOLD
    """The metric mismatch/frac_above_threshold: share of response tokens with |lp_rollout - lp_old| above this (nats)."""
    dynamic_sampling: bool = False
    """DAPO dynamic sampling: drop groups whose rewards are all equal (zero advantage) and sample more prompts."""
    dynamic_sampling_max_rounds: Annotated[int, Field(ge=0)] = 4
    """Most extra rollout rounds per RL step to refill the batch under dynamic sampling; then train on what there is."""
    overlong_buffer: int = 4096
    """DAPO soft overlong penalty: it ramps over the last overlong_buffer tokens before rollout.max_new_tokens."""
    overlong_penalty_factor: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 1.0
    """Largest overlong penalty (reached at rollout.max_new_tokens); applied when reward.overlong_penalty is on."""


@dataclass(frozen=True)
class RolloutConfig:
    """How completions are sampled."""

    engine: Literal["transformers", "vllm"] = "transformers"
    """Rollout engine: 'transformers' (runs anywhere) or 'vllm' (needs occ-fast[vllm] on CUDA, or vLLM's CPU build, which runs plain rollouts only: no rollout.speculative)."""
    temperature: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 1.0
    """Sampling temperature; > 0 (the policy loss needs the log-probs of a real distribution)."""
    top_p: Annotated[float, Field(gt=0, le=1)] = 1.0
    """Nucleus mass in (0, 1]; 1 disables it."""
    top_k: Annotated[int, Field(ge=0)] = 0
    """Keep the k most likely tokens; 0 disables it."""
    max_new_tokens: Annotated[int, Field(ge=1)] = 1024
    """Completion length cap (the 'max response length')."""
    n: Annotated[int, Field(ge=2)] = 8
    """Samples per prompt: the GRPO group size; >= 2."""
    batch_size: Annotated[int, Field(ge=1)] = 64
    """Sequences the transformers engine generates at once (memory bound only: results do not depend on it)."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """vLLM: the engine's weights and compute; 'auto' = the trainer's compute dtype (model.dtype, bf16 under train.bf16_autocast on CUDA), so that rollout and trainer log-probs agree to that precision."""
    enforce_eager: bool | None = None
    """vLLM: no torch.compile or CUDA graphs (faster start, slower decoding); None = on for a CPU engine (it starts in seconds instead of compiling), off on GPU."""
    kv_cache_gib: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = None
    """vLLM: KV-cache size in GiB (vLLM's kv_cache_memory_bytes; overrides gpu_memory_utilization); None = 1 GiB on a CPU engine, on GPU the share gpu_memory_utilization."""
    gpu_memory_utilization: Annotated[float, Field(gt=0, le=1)] = 0.5
    """vLLM on GPU: share of GPU memory the engine (weights and KV cache) may take while awake (it sleeps during training); unused when rollout.kv_cache_gib is set, and on a CPU engine."""
    max_model_len: int | None = None
    """vLLM: longest prompt + completion; None takes the model's own limit."""
    speculative: Literal["none", "mtp"] = "none"
    """vLLM: 'mtp' drafts with the jointly trained MTP heads (speculative decoding); acceptance is logged."""
    num_speculative_tokens: Annotated[int, Field(ge=1)] = 1
    """vLLM: draft tokens per step when rollout.speculative='mtp' (MiMo-format heads draft 1: vLLM's MiMo drafter runs depth 1 only, more is capped with a warning)."""
    sleep_level: Literal[1, 2] = 1
    """vLLM sleep mode between rollouts: 1 offloads weights to CPU, 2 discards them (re-sent by the sync)."""
    on_nonfinite_logprobs: Literal["stop", "drop"] = "stop"
    """A step whose rollout log-probs hold a NaN or an infinity: 'stop' the run there, naming the step and the count, before training on it; or 'drop' every group holding one (counted in rollout/dropped_groups) and roll out new prompts in their place, in at most algorithm.dynamic_sampling_max_rounds rounds, after which a step still short stops the run."""
    sync_check_threshold: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = None
    """vLLM: mean |log-prob| difference between engine and trainer on a probe above which a sync stops the run; None = by the engine's dtype (float32 1e-3, float16 0.05, bfloat16 0.1)."""


@dataclass(frozen=True)
class DataConfig:
    """Where prompts come from."""

    source: Literal["synthetic", "file"] = "synthetic"
    """'synthetic' (built-in arithmetic task, exact answers) or 'file' (local JSONL/Parquet at data.path)."""
    path: str | None = None
    """Local .jsonl/.parquet dataset; required for source='file', must be unset for 'synthetic'."""
    prompt_field: Annotated[str, Field(min_length=1)] = "prompt"
    """Dotted path of the prompt (string or chat messages) in each row."""
    answer_field: Annotated[str, Field(min_length=1)] = "answer"
    """Dotted path of the ground-truth answer in each row, as in evaluation; DAPO-Math-17k's is 'reward_model.ground_truth'."""
    on_error: Literal["raise", "skip"] = "raise"
    """A malformed row stops the load ('raise', naming file, row and field) or is skipped and counted ('skip')."""
    max_prompt_tokens: Annotated[int, Field(ge=1)] | None = None
    """Prompts longer than this many tokens are dropped at load and counted; None = only the model's own limit (max_position_embeddings - rollout.max_new_tokens), which always applies."""
    digits: Annotated[int, Field(ge=1, le=18)] = 2
    """Synthetic task: operand length in digits (the difficulty)."""
    ops: Annotated[tuple[Literal["+", "-", "*"], ...], Field(min_length=1)] = ("+",)
    """Synthetic task: operators drawn from."""
    solution: Literal["answer", "carries"] = "answer"
    """Synthetic task: the completion the SFT warm start teaches: 'answer' (the number) or 'carries' (each column's sum with its carry, then \\boxed{answer}; ops '+' only)."""
    eval_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.1
    """Synthetic task: share of problems held out for evaluation (never drawn for training)."""
    train_problems: Annotated[int, Field(ge=1)] = 2048
    """Synthetic task: distinct training problems drawn once; the sampler cycles through them in epochs."""
    prompts_per_step: Annotated[int, Field(ge=1)] = 8
    """Prompts per RL step (each sampled rollout.n times)."""
    seed: int = 0
    """Seed of the prompt order (and of the synthetic draws)."""


@dataclass(frozen=True)
class RewardConfig:
    """How completions are scored."""

    fn: Annotated[str, AfterValidator(_reward_fn)] = "arithmetic"
    """Reward function: 'arithmetic', 'math' (math-verify), or 'package.module:function' (completion, answer) -> float."""
    num_workers: Annotated[int, Field(ge=0)] = 0
    """Worker processes, each call under timeout_s; 0 scores in-process (trusted, fast functions)."""
    timeout_s: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 10.0
    """Wall-clock limit per completion; a timeout scores 0 and is counted. Workers are killed at the limit;
    in-process (num_workers 0) a SIGALRM timer interrupts the function, which stops Python code but
    not a hang inside one C call (use workers for such functions)."""
    max_error_rate: Annotated[float, Field(ge=0, le=1)] = 0.5
    """Stop the run when more than this share of a step's samples fail to score (exceptions and
    time-outs) for reward.error_patience steps in a row; 1 = never stop."""
    error_patience: Annotated[int, Field(ge=1)] = 3
    """Steps in a row above reward.max_error_rate before the run stops."""
    overlong_penalty: bool = False
    """Add DAPO's soft overlong penalty (algorithm.overlong_buffer, algorithm.overlong_penalty_factor)."""


@dataclass(frozen=True)
class OptimConfig:
    """AdamW and its learning-rate schedule (see occ_fast.optim)."""

    lr: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 1e-6
    """Peak learning rate of the RL updates."""
    weight_decay: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 0.1
    """AdamW decoupled weight decay on matrices (never on norms, biases or embeddings)."""
    betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = (0.9, 0.999)
    """AdamW (beta1, beta2)."""
    eps: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 1e-8
    """AdamW epsilon."""
    warmup_steps: Annotated[int, Field(ge=0)] = 10
    """RL steps of linear warm-up; the schedule advances once per RL step."""
    schedule: Literal["constant", "cosine"] = "constant"
    """After warm-up: hold the peak, or cosine-decay to min_lr_ratio * lr at train.steps."""
    min_lr_ratio: Annotated[float, Field(ge=0, le=1)] = 0.0
    """Cosine floor as a fraction of lr; in [0, 1]."""
    grad_clip: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = 1.0
    """Clip the global gradient norm to this value; None = no clipping."""
    max_nonfinite_updates: Annotated[int, Field(ge=0)] = 5
    """Stop the run after this many optimizer updates in a row with a non-finite gradient norm (each is
    skipped, never applied), naming the last checkpoint saved while the run was healthy; 0 = never stop."""
    max_update_ratio: Annotated[float, Field(gt=0)] = 1.0
    """An RL step whose updates grow the weights' norm by more than this share of it (so the update is at
    least that many times the weights' norm: a learning rate that blows up) leaves the run unhealthy;
    its checkpoint never pushes out the last healthy one (see run.keep_last); inf = never."""
    collapse_steps: Annotated[int, Field(ge=0)] = 5
    """A collapsed policy: after a healthy step, reward/mean and the gradient norm both 0 for this many RL
    steps in a row (the learning signal lost, e.g. to a learning rate that ruined the weights). Warned
    once, naming the last healthy checkpoint, or a stop with optim.stop_on_collapse; 0 = never judged.
    With an MTP cross-entropy term (mtp.regime ce/detach, mtp.head_ce_coef > 0) the gradient norm never
    reaches 0, and only non-finite updates and optim.max_update_ratio judge the run."""
    stop_on_collapse: bool = False
    """Stop the run (exit status 1) when the policy collapses (optim.collapse_steps) instead of warning."""
    mini_batches: Annotated[int, Field(ge=1)] = 2
    """Optimizer steps per RL step: the step's prompts split into this many mini-batches (must divide data.prompts_per_step; >= 2 for mtp.regime occ)."""
    micro_batch_size: Annotated[int, Field(ge=1)] | None = None
    """Most sequences per forward/backward micro-batch; None = limited by micro_batch_tokens only."""
    micro_batch_tokens: int = 16384
    """Most tokens (prompt + completion) packed into one micro-batch; one whole sequence must fit."""


@dataclass(frozen=True)
class TrainConfig:
    """The outer loop."""

    steps: Annotated[int, Field(ge=1)] = 200
    """RL steps (one rollout batch each)."""
    seed: int = 0
    """Seed of torch/numpy/python RNGs (model init, sampling)."""
    warmup_sft_steps: Annotated[int, Field(ge=0)] = 0
    """Supervised steps on the synthetic task (data.digits, data.ops) before RL, so a random model's rewards
    are not all zero; with data.source='file' only for the tiny model, RL then training on the file."""
    sft_lr: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 1e-3
    """Peak learning rate of the supervised warm-start (see sft_warmup_steps, sft_schedule)."""
    sft_batch_size: Annotated[int, Field(ge=1)] = 64
    """Problems per supervised warm-start step."""
    sft_warmup_steps: Annotated[int, Field(ge=0)] = 0
    """Supervised steps of linear warm-up to sft_lr, as optim.warmup_steps does for RL."""
    sft_schedule: Literal["constant", "cosine"] = "constant"
    """After the warm-up: hold sft_lr, or cosine-decay it to 0 at train.warmup_sft_steps."""
    sft_betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = (0.9, 0.999)
    """AdamW (beta1, beta2) of the supervised warm-start."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Training device; 'auto' takes CUDA when available."""
    bf16_autocast: bool = False
    """Run forward/backward under torch.autocast(bfloat16), keeping the weights in model.dtype."""


@dataclass(frozen=True)
class RunConfig:
    """Where the run writes, and how often."""

    output_dir: Annotated[str, Field(min_length=1)] = "./runs"
    """Parent directory of all runs."""
    name: Annotated[str, AfterValidator(_plain_dir_name)] | None = None
    """Run directory name under output_dir; None = '<YYYYmmdd-HHMMSS>-<preset>' (fixed when the config is parsed)."""
    resume: Annotated[str, Field(min_length=1)] | None = None
    """None = fresh run; 'auto' = latest checkpoint in output_dir/name, or a new run (said in one line) if it has
    none; 'must' = the same, but no run there is an error naming the runs in output_dir; or a checkpoint directory.
    Checkpoints are checked against the sizes and sha256 written at save: 'auto'/'must' name a damaged one and
    resume the newest intact one; a damaged directory given by path is refused. train.steps below the
    checkpoint's steps is refused; equal to them, there is nothing to train (exit 0).
    A resume compares the config with the run's config.yaml: changes to the model, the data, the seeds,
    optim.betas/eps/weight_decay (and mtp.regime, see allow_regime_change) are refused; the rest apply
    from the resumed step (a new optim.lr replaces the peak under the same schedule multiplier) and are
    noted at the end of config.yaml."""
    allow_regime_change: bool = False
    """On resume, accept a changed mtp.regime (not to or from 'none'): the run continues under the new one."""
    save_every: Annotated[int, Field(ge=0)] = 50
    """Checkpoint every N RL steps (and at the end); 0 = only at the end."""
    keep_last: Annotated[int, Field(ge=1)] = 3
    """Checkpoints kept on disk (older ones are pruned). Besides them, pruning keeps the newest checkpoint
    known healthy: saved while the run was healthy (no non-finite update; optim.max_update_ratio,
    optim.collapse_steps) and older than the newest, whose weights no step has sampled yet; so
    keep_last 1 keeps two."""
    log_every: Annotated[int, Field(ge=1)] = 1
    """Print a progress line every N RL steps (metrics.jsonl gets every step)."""
    tensorboard: bool = False
    """Also write TensorBoard events under the run directory."""
    wandb: bool = False
    """Also log to Weights & Biases (needs wandb installed and logged in)."""
    wandb_project: str = "occ-fast"
    """W&B project name."""
    plot_every: Annotated[int, Field(ge=0)] = 10
    """Redraw the PNG plots (reward, accuracy, OCC coefficient) every N RL steps; 0 = only at the end."""


@dataclass(frozen=True)
class EvalConfig:
    """Held-out accuracy during training."""

    every: Annotated[int, Field(ge=0)] = 0
    """Evaluate every N RL steps (and at the end); 0 = never."""
    num_problems: Annotated[int, Field(ge=1)] = 64
    """Problems per evaluation (all of the file when it holds fewer)."""
    path: str | None = None
    """Eval dataset (same fields as data); None = the synthetic task's held-out split (file data then needs a path)."""
    n: Annotated[int, Field(ge=1)] = 1
    """Samples per problem; accuracy is their mean (avg@n)."""
    temperature: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 0.0
    """Eval sampling temperature; 0 = greedy."""


# Read strictly (no coercion but int -> float and lists -> tuples), unknown keys refused, and inf/nan
# kept when written out; pydantic applies this config to every section below Config.
@with_config(ConfigDict(strict=True, extra="forbid", ser_json_inf_nan="constants"))
@dataclass(frozen=True)
class Config:
    """occ-fast: RLVR (GRPO/DAPO) with Multi-Token Prediction heads trained jointly through OCC."""

    preset: str | None = None
    """Base preset: a name from occ_fast/configs/ or a path to a YAML file; flags override it (default tiny)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    mtp: MTPConfig = field(default_factory=MTPConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    data: DataConfig = field(default_factory=DataConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    run: RunConfig = field(default_factory=RunConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_loss_config(self) -> LossConfig:
        """The algorithm's :class:`LossConfig`, field by field through :data:`LOSS_FIELDS`."""
        return LossConfig(**{name: _get(self, path) for name, path in LOSS_FIELDS.items()})

    def validate(self, source: str = "configuration") -> Config:
        """Raise :class:`ConfigError` listing every field that cannot work; return self when all is well.

        Checks each field against its declared type and constraint (problems name ``source``, where
        the values came from) and the fields' combinations (``rules``), not the filesystem: paths are
        checked when loaded.
        """
        errors = field_problems(self, source) + rules.problems(self)
        if not errors:
            try:
                self.to_loss_config()
            except ValueError as e:
                errors.append(f"loss configuration: {e}")
        if errors:
            raise invalid(errors)
        return self

    def resolve(self, now: datetime | None = None) -> Config:
        """Fix the fields whose defaults depend on the moment: ``run.name`` (timestamp + preset).

        Idempotent; ``resume='auto'`` or ``'must'`` keeps an unset name so that validation asks for one.
        """
        if self.run.name is not None or self.run.resume in ("auto", "must"):
            return self
        stamp = (now or datetime.now()).strftime("%Y%m%d-%H%M%S")
        name = f"{stamp}-{Path(self.preset).name.removesuffix(PRESET_SUFFIX) if self.preset else 'custom'}"
        return dataclasses.replace(self, run=dataclasses.replace(self.run, name=name))

    @property
    def run_dir(self) -> Path:
        """``run.output_dir / run.name``; needs a resolved name."""
        if self.run.name is None:
            raise ConfigError(
                "run.name is not set: call Config.resolve() (parse_config does) or set --run.name"
            )
        return Path(self.run.output_dir) / self.run.name

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (tuples as lists), for YAML and experiment trackers."""
        return as_dict(self)

    def to_yaml(self, path: str | Path | None = None) -> str:
        """The config as YAML; also written to ``path`` when given (the run directory's config.yaml)."""
        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def from_yaml(cls, path: str | Path) -> Config:
        """Defaults overridden by a YAML file (a preset or a saved config), each value checked against
        its field's type and constraint; the combinations are checked by :meth:`validate`."""
        return read_yaml(cls, Path(path))


# LossConfig field -> (section, field) of the tree; test_config checks it covers LossConfig exactly.
LOSS_FIELDS: dict[str, tuple[str, str]] = {
    "mtp_regime": ("mtp", "regime"),
    "mtp_coef": ("mtp", "coef"),
    "occ_lam_plus": ("mtp", "lam_plus"),
    "mtp_head_ce_coef": ("mtp", "head_ce_coef"),
    "occ_aggregation": ("mtp", "aggregation"),
    "occ_form": ("mtp", "form"),
    "eps_low": ("algorithm", "eps_low"),
    "eps_high": ("algorithm", "eps_high"),
    "dual_clip_c": ("algorithm", "dual_clip_c"),
    "tis_cap": ("algorithm", "tis_cap"),
    "tis_level": ("algorithm", "tis_level"),
    "is_mask_band": ("algorithm", "is_mask_band"),
}


def _get(cfg: Config, path: tuple[str, str]) -> Any:
    return getattr(getattr(cfg, path[0]), path[1])
