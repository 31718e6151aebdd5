"""The run configuration: one tree of documented dataclasses, YAML presets, command-line overrides.

``parse_config(argv)`` builds a :class:`Config` in three layers: the dataclass defaults, a preset
(``--preset NAME`` from ``occ_fast/configs/NAME.yaml``, or a path to any YAML file; ``tiny`` when
absent) that overrides some fields, then command-line flags for any field (``--mtp.regime ce
--optim.lr 3e-6``). The result is validated as a whole, so impossible combinations fail before any
model is loaded, with messages that name the fields. A resolved config saved with :meth:`Config.to_yaml`
is itself a preset: ``--preset runs/NAME/config.yaml --run.resume auto`` continues that run.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from importlib.resources import files
from pathlib import Path
from typing import Any, Literal

import tyro
import yaml

from occ_fast.algorithm.config import Form, LossConfig, Regime
from occ_fast.algorithm.occ import Aggregation
from occ_fast.algorithm.rollout_mismatch import DEFAULT_MISMATCH_THRESHOLD, ISLevel
from occ_fast.rewards.loader import BUILTIN_REWARDS

DEFAULT_PRESET = "tiny"
PRESET_SUFFIX = ".yaml"


class ConfigError(ValueError):
    """A configuration that cannot work; the message names every offending field."""


@dataclass(frozen=True)
class TinyModelConfig:
    """Sizes of the random-init model built when ``model.name_or_path`` is None (tests, CPU runs)."""

    arch: Literal["qwen2", "llama"] = "qwen2"
    """Transformers architecture of the tiny model."""
    hidden_size: int = 64
    """Hidden size H."""
    num_layers: int = 2
    """Number of trunk decoder layers."""
    num_heads: int = 4
    """Attention heads; must divide hidden_size, with an even head dimension (RoPE)."""
    num_kv_heads: int = 2
    """Key/value heads (grouped-query attention); must divide num_heads."""
    intermediate_size: int = 128
    """MLP width."""
    vocab_size: int = 512
    """Vocabulary of the byte-level BPE trained offline for the tiny model (>= 259: 256 bytes + 3 special)."""


@dataclass(frozen=True)
class ModelConfig:
    """The policy: a local Hugging Face model or a tiny random one, with K MTP heads."""

    name_or_path: str | None = None
    """Local Hugging Face model directory (never downloaded); None builds a tiny random model from model.tiny."""
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)
    """Sizes of the tiny random model (used only when name_or_path is None)."""
    mtp_heads: int = 1
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
    """none | detach (c * CE, MTP input detached) | ce (c * CE, joint) | policy (fixed lam) | occ (calibrated lam)."""
    coef: float = 0.1
    """Fixed MTP coefficient for detach/ce (c, paper 0.1) and policy (lam, 0.1 .. 1.0); split evenly over K heads."""
    lam_plus: float = 1.0
    """OCC global scale lam_plus (paper text 1.0, reference script 0.1)."""
    aggregation: Aggregation = "paper"
    """OCC proxy aggregation: paper (ratio of sums) | code (reference code, padding counts) | code_masked."""
    form: Form = "advantage"
    """Where lam applies: 'advantage' (reference code) or 'loss' (paper formula); they differ only for lam < 0."""
    detach_lm_head: bool = False
    """Keep the MTP objective off lm_head and the embedding (the later verl fix for the detach regime)."""
    exact_every: int = 0
    """Every N RL steps also measure the exact <g_RL, g_MTP> and ||g_MTP||^2 (two extra backwards); 0 = never."""

    @property
    def detach_trunk(self) -> bool:
        """The detach regime cuts the MTP input from the trunk; every other regime lets it through."""
        return self.regime == "detach"


@dataclass(frozen=True)
class AlgorithmConfig:
    """The DAPO-style clipped policy loss and the batch shaping around it (method.md section 4).

    The GRPO group size is ``rollout.n`` (samples per prompt); it has no second field here.
    """

    eps_low: float = 0.2
    """Lower clip range: the ratio is clipped at 1 - eps_low; in [0, 1)."""
    eps_high: float = 0.28
    """Upper clip range (clip-higher): the ratio is clipped at 1 + eps_high; >= 0."""
    dual_clip_c: float = 10.0
    """Dual-clip bound for negative advantages; > 1."""
    tis_cap: float | None = None
    """Truncated importance-sampling cap on exp(lp_old - lp_rollout) against rollout/trainer mismatch; None = off."""
    tis_level: ISLevel = "token"
    """What tis_cap truncates: token = each token's ratio; sequence = exp(sum over the response of lp_old - lp_rollout), one weight per sequence."""
    is_mask_band: tuple[float, float] | None = None
    """Rollout/trainer mismatch: drop from the loss (weight 0, still counted in the token mean) every sequence whose ratio exp(sum(lp_old - lp_rollout)) is outside [low, high], e.g. 0.5 2.0; None = off."""
    mismatch_threshold: float = DEFAULT_MISMATCH_THRESHOLD
    """The metric mismatch/frac_above_threshold: share of response tokens with |lp_rollout - lp_old| above this (nats)."""
    dynamic_sampling: bool = False
    """DAPO dynamic sampling: drop groups whose rewards are all equal (zero advantage) and sample more prompts."""
    dynamic_sampling_max_rounds: int = 4
    """Most extra rollout rounds per RL step to refill the batch under dynamic sampling; then train on what there is."""
    overlong_buffer: int = 4096
    """DAPO soft overlong penalty: it ramps over the last overlong_buffer tokens before rollout.max_new_tokens."""
    overlong_penalty_factor: float = 1.0
    """Largest overlong penalty (reached at rollout.max_new_tokens); applied when reward.overlong_penalty is on."""


@dataclass(frozen=True)
class RolloutConfig:
    """How completions are sampled."""

    engine: Literal["transformers", "vllm"] = "transformers"
    """Rollout engine: 'transformers' (runs anywhere) or 'vllm' (CUDA, needs occ-fast[vllm])."""
    temperature: float = 1.0
    """Sampling temperature; > 0 (the policy loss needs the log-probs of a real distribution)."""
    top_p: float = 1.0
    """Nucleus mass in (0, 1]; 1 disables it."""
    top_k: int = 0
    """Keep the k most likely tokens; 0 disables it."""
    max_new_tokens: int = 1024
    """Completion length cap (the 'max response length')."""
    n: int = 8
    """Samples per prompt: the GRPO group size; >= 2."""
    batch_size: int = 64
    """Sequences the transformers engine generates at once (memory bound only: results do not depend on it)."""
    gpu_memory_utilization: float = 0.5
    """vLLM: share of GPU memory its KV cache may take while awake (it sleeps during training)."""
    max_model_len: int | None = None
    """vLLM: longest prompt + completion; None takes the model's own limit."""
    speculative: Literal["none", "mtp"] = "none"
    """vLLM: 'mtp' drafts with the jointly trained MTP heads (speculative decoding); acceptance is logged."""
    num_speculative_tokens: int = 1
    """vLLM: draft tokens per step when rollout.speculative='mtp' (MiMo-format heads draft 1: vLLM's MiMo drafter runs depth 1 only, more is capped with a warning)."""
    sleep_level: Literal[1, 2] = 1
    """vLLM sleep mode between rollouts: 1 offloads weights to CPU, 2 discards them (re-sent by the sync)."""
    sync_check_threshold: float = 0.1
    """vLLM: mean |log-prob| difference between engine and trainer on a probe above which a sync fails loudly."""


@dataclass(frozen=True)
class DataConfig:
    """Where prompts come from."""

    source: Literal["synthetic", "file"] = "synthetic"
    """'synthetic' (built-in arithmetic task, exact answers) or 'file' (local JSONL/Parquet at data.path)."""
    path: str | None = None
    """Local .jsonl/.parquet dataset; required for source='file', must be unset for 'synthetic'."""
    prompt_field: str = "prompt"
    """Dotted path of the prompt (string or chat messages) in each row."""
    answer_field: str = "answer"
    """Dotted path of the ground-truth answer in each row, as in evaluation; DAPO-Math-17k's is 'reward_model.ground_truth'."""
    on_error: Literal["raise", "skip"] = "raise"
    """A malformed row stops the load ('raise', naming file, row and field) or is skipped and counted ('skip')."""
    max_prompt_tokens: int | None = None
    """Prompts longer than this many tokens are dropped at load and counted; None = no limit."""
    digits: int = 2
    """Synthetic task: operand length in digits (the difficulty)."""
    ops: tuple[Literal["+", "-", "*"], ...] = ("+",)
    """Synthetic task: operators drawn from."""
    solution: Literal["answer", "carries"] = "answer"
    """Synthetic task: the completion the SFT warm start teaches: 'answer' (the number) or 'carries' (each column's sum with its carry, then \\boxed{answer}; ops '+' only)."""
    eval_fraction: float = 0.1
    """Synthetic task: share of problems held out for evaluation (never drawn for training)."""
    train_problems: int = 2048
    """Synthetic task: distinct training problems drawn once; the sampler cycles through them in epochs."""
    prompts_per_step: int = 8
    """Prompts per RL step (each sampled rollout.n times)."""
    seed: int = 0
    """Seed of the prompt order (and of the synthetic draws)."""


@dataclass(frozen=True)
class RewardConfig:
    """How completions are scored."""

    fn: str = "arithmetic"
    """Reward function: 'arithmetic', 'math' (math-verify), or 'package.module:function' (completion, answer) -> float."""
    num_workers: int = 0
    """Worker processes, each call under timeout_s; 0 scores in-process (trusted, fast functions)."""
    timeout_s: float = 10.0
    """Wall-clock limit per completion; a timeout scores 0 and is counted. Workers are killed at the limit;
    in-process (num_workers 0) a SIGALRM timer interrupts the function, which stops Python code but
    not a hang inside one C call (use workers for such functions)."""
    max_error_rate: float = 0.5
    """Stop the run when more than this share of a step's samples fail to score (exceptions and
    time-outs) for reward.error_patience steps in a row; 1 = never stop."""
    error_patience: int = 3
    """Steps in a row above reward.max_error_rate before the run stops."""
    overlong_penalty: bool = False
    """Add DAPO's soft overlong penalty (algorithm.overlong_buffer, algorithm.overlong_penalty_factor)."""


@dataclass(frozen=True)
class OptimConfig:
    """AdamW and its learning-rate schedule (see occ_fast.optim)."""

    lr: float = 1e-6
    """Peak learning rate of the RL updates."""
    weight_decay: float = 0.1
    """AdamW decoupled weight decay on matrices (never on norms, biases or embeddings)."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW (beta1, beta2)."""
    eps: float = 1e-8
    """AdamW epsilon."""
    warmup_steps: int = 10
    """RL steps of linear warm-up; the schedule advances once per RL step."""
    schedule: Literal["constant", "cosine"] = "constant"
    """After warm-up: hold the peak, or cosine-decay to min_lr_ratio * lr at train.steps."""
    min_lr_ratio: float = 0.0
    """Cosine floor as a fraction of lr; in [0, 1]."""
    grad_clip: float | None = 1.0
    """Clip the global gradient norm to this value; None = no clipping."""
    max_nonfinite_updates: int = 5
    """Stop the run after this many optimizer updates in a row with a non-finite gradient norm (each is
    skipped, never applied), naming the last checkpoint saved before them; 0 = never stop."""
    mini_batches: int = 2
    """Optimizer steps per RL step: the step's prompts split into this many mini-batches (must divide data.prompts_per_step; >= 2 for mtp.regime occ)."""
    micro_batch_size: int | None = None
    """Most sequences per forward/backward micro-batch; None = limited by micro_batch_tokens only."""
    micro_batch_tokens: int = 16384
    """Most tokens (prompt + completion) packed into one micro-batch; one whole sequence must fit."""


@dataclass(frozen=True)
class TrainConfig:
    """The outer loop."""

    steps: int = 200
    """RL steps (one rollout batch each)."""
    seed: int = 0
    """Seed of torch/numpy/python RNGs (model init, sampling)."""
    warmup_sft_steps: int = 0
    """Supervised steps on the synthetic task before RL, so a random model's rewards are not all zero."""
    sft_lr: float = 1e-3
    """Learning rate of the supervised warm-start (constant)."""
    sft_batch_size: int = 64
    """Problems per supervised warm-start step."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Training device; 'auto' takes CUDA when available."""
    bf16_autocast: bool = False
    """Run forward/backward under torch.autocast(bfloat16), keeping the weights in model.dtype."""


@dataclass(frozen=True)
class RunConfig:
    """Where the run writes, and how often."""

    output_dir: str = "./runs"
    """Parent directory of all runs."""
    name: str | None = None
    """Run directory name under output_dir; None = '<YYYYmmdd-HHMMSS>-<preset>' (fixed when the config is parsed)."""
    resume: str | None = None
    """None = fresh run; 'auto' = latest checkpoint in output_dir/name if there is one; or a checkpoint directory.
    A resume compares the config with the run's config.yaml: changes to the model, the data, the seeds,
    optim.betas/eps/weight_decay (and mtp.regime, see allow_regime_change) are refused; the rest apply
    from the resumed step (a new optim.lr replaces the peak under the same schedule multiplier) and are
    noted at the end of config.yaml."""
    allow_regime_change: bool = False
    """On resume, accept a changed mtp.regime (not to or from 'none'): the run continues under the new one."""
    save_every: int = 50
    """Checkpoint every N RL steps (and at the end); 0 = only at the end."""
    keep_last: int = 3
    """Checkpoints kept on disk (older ones are pruned)."""
    log_every: int = 1
    """Print a progress line every N RL steps (metrics.jsonl gets every step)."""
    tensorboard: bool = False
    """Also write TensorBoard events under the run directory."""
    wandb: bool = False
    """Also log to Weights & Biases (needs wandb installed and logged in)."""
    wandb_project: str = "occ-fast"
    """W&B project name."""
    plot_every: int = 10
    """Redraw the PNG plots (reward, accuracy, OCC coefficient) every N RL steps; 0 = only at the end."""


@dataclass(frozen=True)
class EvalConfig:
    """Held-out accuracy during training."""

    every: int = 0
    """Evaluate every N RL steps (and at the end); 0 = never."""
    num_problems: int = 64
    """Problems per evaluation (all of the file when it holds fewer)."""
    path: str | None = None
    """Eval dataset (same fields as data); None = the synthetic task's held-out split (file data then needs a path)."""
    n: int = 1
    """Samples per problem; accuracy is their mean (avg@n)."""
    temperature: float = 0.0
    """Eval sampling temperature; 0 = greedy."""


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

    def validate(self) -> Config:
        """Raise :class:`ConfigError` listing every field that cannot work; return self when all is well.

        Checks values and their combinations, not the filesystem: paths are checked when loaded.
        """
        errors = _problems(self)
        if not errors:
            try:
                self.to_loss_config()
            except ValueError as e:
                errors.append(f"loss configuration: {e}")
        if errors:
            raise ConfigError("invalid configuration:\n  - " + "\n  - ".join(errors))
        return self

    def resolve(self, now: datetime | None = None) -> Config:
        """Fix the fields whose defaults depend on the moment: ``run.name`` (timestamp + preset).

        Idempotent; ``resume='auto'`` keeps an unset name so that validation asks for one.
        """
        if self.run.name is not None or self.run.resume == "auto":
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
        return _plain(dataclasses.asdict(self))

    def to_yaml(self, path: str | Path | None = None) -> str:
        """The config as YAML; also written to ``path`` when given (the run directory's config.yaml)."""
        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def from_yaml(cls, path: str | Path) -> Config:
        """Defaults overridden by a YAML file (a preset or a saved config); not validated here."""
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text())
        except OSError as e:
            raise ConfigError(f"cannot read config file {path}: {e}") from e
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from e
        return _build(cls, {} if data is None else data, str(path), "")


# LossConfig field -> (section, field) of the tree; test_config checks it covers LossConfig exactly.
LOSS_FIELDS: dict[str, tuple[str, str]] = {
    "mtp_regime": ("mtp", "regime"),
    "mtp_coef": ("mtp", "coef"),
    "occ_lam_plus": ("mtp", "lam_plus"),
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


# --------------------------------------------------------------------------- presets and the CLI


def presets_dir() -> Path:
    """The packaged preset directory (works from an installed wheel as well as a checkout)."""
    return Path(str(files("occ_fast") / "configs"))


def list_presets() -> list[str]:
    """Names of the packaged presets."""
    return sorted(p.name.removesuffix(PRESET_SUFFIX) for p in presets_dir().glob(f"*{PRESET_SUFFIX}"))


def load_preset(name_or_path: str) -> Config:
    """A packaged preset by name, or any YAML file by path; ``preset`` records which."""
    packaged = presets_dir() / f"{name_or_path}{PRESET_SUFFIX}"
    if packaged.is_file():
        path = packaged
    elif Path(name_or_path).is_file():
        path = Path(name_or_path)
    else:
        raise ConfigError(
            f"--preset {name_or_path!r}: no such preset (available: {', '.join(list_presets())}) "
            "and no such YAML file"
        )
    return dataclasses.replace(Config.from_yaml(path), preset=name_or_path)


def parse_config(argv: Sequence[str] | None = None, prog: str = "python -m occ_fast.train") -> Config:
    """Preset, then command-line overrides, then :meth:`Config.resolve` and :meth:`Config.validate`.

    ``argv`` excludes the program name (None reads ``sys.argv``). ``--help`` prints every field with
    its doc and its value under the chosen preset; a malformed flag exits through tyro (status 2);
    a config that cannot work raises :class:`ConfigError`.
    """
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--preset", default=DEFAULT_PRESET)
    known, _ = pre.parse_known_args(argv)
    base = load_preset(known.preset)
    cfg = tyro.cli(Config, args=argv, default=base, prog=prog, description=Config.__doc__)
    return cfg.resolve().validate()


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m occ_fast.config [flags]``: print the resolved configuration (a dry run of the flags)."""
    print(parse_config(argv, prog="python -m occ_fast.config").to_yaml(), end="")


# --------------------------------------------------------------------------- YAML -> dataclasses


def _build(cls: type, data: Any, source: str, prefix: str) -> Any:
    """A ``cls`` from a nested mapping; unknown keys and ill-typed values name ``source`` and the key."""
    where = prefix.rstrip(".") or "top level"
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: {where}: expected a mapping of fields, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            raise ConfigError(
                f"{source}: unknown key {prefix}{key!s} (fields of {where}: {', '.join(sorted(names))})"
            )
    kwargs = {}
    for key, value in data.items():
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value, source, f"{prefix}{key}.")
        else:
            kwargs[key] = _convert(tp, value, source, f"{prefix}{key}")
    return cls(**kwargs)


def _convert(tp: Any, value: Any, source: str, key: str) -> Any:
    """Check (and lightly coerce) one YAML value against a field's annotation."""

    def fail(expected: str) -> ConfigError:
        return ConfigError(f"{source}: {key}: expected {expected}, got {value!r}")

    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _convert(inner, value, source, key)
    if origin is Literal:
        if value not in args:
            raise fail(f"one of {list(args)}")
        return value
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise fail("a list")
        item_types = [args[0]] * len(value) if args[-1] is Ellipsis else list(args)
        if len(item_types) != len(value):
            raise fail(f"a list of {len(item_types)} items")
        return tuple(_convert(t, v, source, f"{key}[{i}]") for i, (t, v) in enumerate(zip(item_types, value)))
    if tp is bool:
        if not isinstance(value, bool):
            raise fail("true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise fail("an integer")
        return value
    if tp is float:
        if isinstance(value, str):  # PyYAML reads '1e-6' (no dot) as a string
            try:
                return float(value)
            except ValueError:
                raise fail("a number") from None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise fail("a number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise fail("a string")
        return value
    raise TypeError(f"config field {key}: unsupported annotation {tp!r}")


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


# --------------------------------------------------------------------------- validation


def _problems(cfg: Config) -> list[str]:
    """Every reason ``cfg`` cannot work, each naming its field(s)."""
    errors: list[str] = []

    def need(ok: bool, message: str) -> None:
        if not ok:
            errors.append(message)

    def finite(name: str, value: float, low: float, *, strict: bool) -> None:
        ok = math.isfinite(value) and (value > low if strict else value >= low)
        need(ok, f"{name} must be finite and {'>' if strict else '>='} {low}, got {value}")

    m, tiny, mtp, alg, ro = cfg.model, cfg.model.tiny, cfg.mtp, cfg.algorithm, cfg.rollout
    data, rw, opt, tr, run, ev = cfg.data, cfg.reward, cfg.optim, cfg.train, cfg.run, cfg.eval
    cpu = tr.device == "cpu"

    # model
    if m.name_or_path is None:
        for name in ("hidden_size", "num_layers", "num_heads", "num_kv_heads", "intermediate_size"):
            need(getattr(tiny, name) >= 1, f"model.tiny.{name} must be >= 1, got {getattr(tiny, name)}")
        if tiny.num_heads >= 1 and tiny.num_kv_heads >= 1:
            need(
                tiny.hidden_size % tiny.num_heads == 0 and (tiny.hidden_size // tiny.num_heads) % 2 == 0,
                f"model.tiny.num_heads={tiny.num_heads} must divide model.tiny.hidden_size={tiny.hidden_size} "
                "into an even head dimension (RoPE)",
            )
            need(
                tiny.num_heads % tiny.num_kv_heads == 0,
                f"model.tiny.num_kv_heads={tiny.num_kv_heads} must divide model.tiny.num_heads={tiny.num_heads}",
            )
        need(
            tiny.vocab_size >= 259,
            f"model.tiny.vocab_size must be >= 259 (256 bytes + 3 special), got {tiny.vocab_size}",
        )
        need(
            m.mtp_init != "checkpoint",
            "model.mtp_init='checkpoint' needs model.name_or_path (the tiny random model has no MTP weights)",
        )
    need(m.mtp_heads >= 0, f"model.mtp_heads must be >= 0, got {m.mtp_heads}")
    need(not (m.use_liger and cpu), "model.use_liger needs a CUDA device, but train.device='cpu'")
    need(
        not (m.attn_implementation == "flash_attention_2" and cpu),
        "model.attn_implementation='flash_attention_2' needs a CUDA device, but train.device='cpu'",
    )

    # mtp
    need(
        mtp.regime == "none" or m.mtp_heads >= 1,
        f"mtp.regime={mtp.regime!r} needs model.mtp_heads >= 1 (or use mtp.regime='none')",
    )
    finite("mtp.coef", mtp.coef, 0.0, strict=False)
    finite("mtp.lam_plus", mtp.lam_plus, 0.0, strict=False)
    need(mtp.exact_every >= 0, f"mtp.exact_every must be >= 0 (0 = never), got {mtp.exact_every}")
    need(mtp.exact_every == 0 or m.mtp_heads >= 1, "mtp.exact_every > 0 needs model.mtp_heads >= 1")
    need(
        not (mtp.exact_every and mtp.regime == "none"),
        "mtp.exact_every > 0 needs an MTP term: mtp.regime must not be 'none'",
    )

    # algorithm
    need(0.0 <= alg.eps_low < 1.0, f"algorithm.eps_low must be in [0, 1), got {alg.eps_low}")
    finite("algorithm.eps_high", alg.eps_high, 0.0, strict=False)
    finite("algorithm.dual_clip_c", alg.dual_clip_c, 1.0, strict=True)
    if alg.tis_cap is not None:
        finite("algorithm.tis_cap", alg.tis_cap, 0.0, strict=True)
    finite("algorithm.mismatch_threshold", alg.mismatch_threshold, 0.0, strict=True)
    need(
        alg.tis_level == "token" or alg.tis_cap is not None,
        "algorithm.tis_level='sequence' needs algorithm.tis_cap (the cap it truncates the sequence ratio at)",
    )
    band = alg.is_mask_band
    need(
        band is None or 0.0 < band[0] <= 1.0 <= band[1] < math.inf,
        f"algorithm.is_mask_band must be (low, high) with 0 < low <= 1 <= high, got {band}",
    )
    need(
        alg.dynamic_sampling_max_rounds >= 0,
        f"algorithm.dynamic_sampling_max_rounds must be >= 0, got {alg.dynamic_sampling_max_rounds}",
    )
    finite("algorithm.overlong_penalty_factor", alg.overlong_penalty_factor, 0.0, strict=False)
    if rw.overlong_penalty:
        need(
            0 < alg.overlong_buffer <= ro.max_new_tokens,
            f"reward.overlong_penalty needs 0 < algorithm.overlong_buffer <= rollout.max_new_tokens, "
            f"got {alg.overlong_buffer} and {ro.max_new_tokens}",
        )

    # rollout
    need(
        not (ro.engine == "vllm" and cpu), "rollout.engine='vllm' needs a CUDA device, but train.device='cpu'"
    )
    finite("rollout.temperature", ro.temperature, 0.0, strict=True)
    need(0.0 < ro.top_p <= 1.0, f"rollout.top_p must be in (0, 1], got {ro.top_p}")
    need(ro.top_k >= 0, f"rollout.top_k must be >= 0 (0 disables it), got {ro.top_k}")
    need(ro.max_new_tokens >= 1, f"rollout.max_new_tokens must be >= 1, got {ro.max_new_tokens}")
    need(ro.n >= 2, f"rollout.n must be >= 2 for GRPO group normalisation, got {ro.n}")
    need(ro.batch_size >= 1, f"rollout.batch_size must be >= 1, got {ro.batch_size}")
    need(
        0 < ro.gpu_memory_utilization <= 1,
        f"rollout.gpu_memory_utilization must be in (0, 1], got {ro.gpu_memory_utilization}",
    )
    need(
        ro.num_speculative_tokens >= 1,
        f"rollout.num_speculative_tokens must be >= 1, got {ro.num_speculative_tokens}",
    )
    need(
        not (ro.speculative == "mtp" and ro.engine != "vllm"),
        "rollout.speculative='mtp' needs rollout.engine='vllm'",
    )
    need(
        not (ro.speculative == "mtp" and cfg.model.mtp_heads < 1),
        "rollout.speculative='mtp' needs model.mtp_heads >= 1",
    )

    # data
    if data.source == "file":
        need(bool(data.path), "data.path is required when data.source='file'")
    else:
        need(
            data.path is None,
            f"data.path={data.path!r} is set but data.source='synthetic' (use --data.source file)",
        )
    need(bool(data.prompt_field), "data.prompt_field must not be empty")
    need(bool(data.answer_field), "data.answer_field must not be empty")
    need(
        data.max_prompt_tokens is None or data.max_prompt_tokens >= 1,
        f"data.max_prompt_tokens must be None or >= 1, got {data.max_prompt_tokens}",
    )
    need(1 <= data.digits <= 18, f"data.digits must be in [1, 18], got {data.digits}")
    need(len(data.ops) >= 1, "data.ops must name at least one operator")
    need(
        data.solution != "carries" or tuple(data.ops) == ("+",),
        f"data.solution='carries' is defined for data.ops ['+'] only, got {list(data.ops)}",
    )
    need(0.0 < data.eval_fraction < 1.0, f"data.eval_fraction must be in (0, 1), got {data.eval_fraction}")
    need(data.prompts_per_step >= 1, f"data.prompts_per_step must be >= 1, got {data.prompts_per_step}")
    need(data.train_problems >= 1, f"data.train_problems must be >= 1, got {data.train_problems}")

    # reward
    need(
        rw.fn in BUILTIN_REWARDS or _is_import_path(rw.fn),
        f"reward.fn={rw.fn!r} must be one of {sorted(BUILTIN_REWARDS)} or 'package.module:function'",
    )
    need(rw.num_workers >= 0, f"reward.num_workers must be >= 0 (0 = in-process), got {rw.num_workers}")
    finite("reward.timeout_s", rw.timeout_s, 0.0, strict=True)
    need(0.0 <= rw.max_error_rate <= 1.0, f"reward.max_error_rate must be in [0, 1], got {rw.max_error_rate}")
    need(rw.error_patience >= 1, f"reward.error_patience must be >= 1, got {rw.error_patience}")

    # optim
    finite("optim.lr", opt.lr, 0.0, strict=True)
    finite("optim.weight_decay", opt.weight_decay, 0.0, strict=False)
    need(all(0.0 <= b < 1.0 for b in opt.betas), f"optim.betas must both be in [0, 1), got {opt.betas}")
    finite("optim.eps", opt.eps, 0.0, strict=True)
    need(opt.warmup_steps >= 0, f"optim.warmup_steps must be >= 0, got {opt.warmup_steps}")
    need(0.0 <= opt.min_lr_ratio <= 1.0, f"optim.min_lr_ratio must be in [0, 1], got {opt.min_lr_ratio}")
    if opt.grad_clip is not None:
        finite("optim.grad_clip", opt.grad_clip, 0.0, strict=True)
    need(opt.mini_batches >= 1, f"optim.mini_batches must be >= 1, got {opt.mini_batches}")
    need(
        opt.max_nonfinite_updates >= 0,
        f"optim.max_nonfinite_updates must be >= 0 (0 = never stop), got {opt.max_nonfinite_updates}",
    )
    need(
        not (mtp.regime == "occ" and opt.mini_batches == 1),
        "mtp.regime='occ' with optim.mini_batches=1 never trains the MTP head: OCC's coefficient is 0 on "
        "the first mini-batch of an RL step (its weights are the rollout weights, so d_rl = 0); set "
        "optim.mini_batches >= 2 (the paper uses 4), or another mtp.regime",
    )
    if opt.mini_batches >= 1 and data.prompts_per_step >= 1:
        need(
            data.prompts_per_step % opt.mini_batches == 0,
            f"optim.mini_batches={opt.mini_batches} must divide the number of prompts per step "
            f"(data.prompts_per_step={data.prompts_per_step})",
        )
    need(
        opt.micro_batch_size is None or opt.micro_batch_size >= 1,
        f"optim.micro_batch_size must be None or >= 1, got {opt.micro_batch_size}",
    )
    longest = ro.max_new_tokens + (data.max_prompt_tokens or 1)
    need(
        opt.micro_batch_tokens >= longest,
        f"optim.micro_batch_tokens={opt.micro_batch_tokens} cannot hold one whole sequence "
        f"(data.max_prompt_tokens + rollout.max_new_tokens = {longest})",
    )

    # train
    need(tr.steps >= 1, f"train.steps must be >= 1, got {tr.steps}")
    need(tr.warmup_sft_steps >= 0, f"train.warmup_sft_steps must be >= 0, got {tr.warmup_sft_steps}")
    need(
        tr.warmup_sft_steps == 0 or data.source == "synthetic",
        "train.warmup_sft_steps > 0 needs data.source='synthetic' (file answers are not whole completions)",
    )
    finite("train.sft_lr", tr.sft_lr, 0.0, strict=True)
    need(tr.sft_batch_size >= 1, f"train.sft_batch_size must be >= 1, got {tr.sft_batch_size}")

    # run
    need(bool(run.output_dir), "run.output_dir must not be empty")
    if run.name is not None:
        need(
            bool(run.name) and "/" not in run.name and "\\" not in run.name and run.name not in (".", ".."),
            f"run.name={run.name!r} must be a plain directory name (no path separators)",
        )
    need(
        not (run.resume == "auto" and run.name is None),
        "run.resume='auto' needs run.name (the run directory under run.output_dir to continue)",
    )
    need(run.resume != "", "run.resume must be None, 'auto' or a checkpoint directory, got ''")
    need(run.save_every >= 0, f"run.save_every must be >= 0 (0 = only at the end), got {run.save_every}")
    need(run.keep_last >= 1, f"run.keep_last must be >= 1, got {run.keep_last}")
    need(run.log_every >= 1, f"run.log_every must be >= 1, got {run.log_every}")
    need(run.plot_every >= 0, f"run.plot_every must be >= 0 (0 = only at the end), got {run.plot_every}")

    # eval
    need(ev.every >= 0, f"eval.every must be >= 0 (0 = never), got {ev.every}")
    need(ev.num_problems >= 1, f"eval.num_problems must be >= 1, got {ev.num_problems}")
    need(ev.n >= 1, f"eval.n must be >= 1, got {ev.n}")
    finite("eval.temperature", ev.temperature, 0.0, strict=False)
    need(
        not (ev.every > 0 and data.source == "file" and ev.path is None),
        "eval.every > 0 with data.source='file' needs eval.path (there is no held-out split of a file)",
    )
    return errors


def _is_import_path(spec: str) -> bool:
    module, sep, attr = spec.partition(":")
    return bool(sep and module and attr)


if __name__ == "__main__":
    main()
