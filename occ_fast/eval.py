"""Score a model on held-out benchmarks: ``python -m occ_fast.eval --model PATH --benchmarks FILE ...``.

The paper reports avg@32 (the mean reward over 32 samples of every problem) on each of six math
benchmarks and their plain average; this command measures exactly that for any local model, so
that runs can be compared on the same footing.

Benchmark files are local ``.jsonl`` (one JSON object per line) or ``.parquet`` files, one row per
problem. A row needs a prompt and a ground-truth answer, found at the dotted paths
``--prompt-field`` (default ``prompt``) and ``--answer-field`` (default ``answer``); nested fields
are written ``reward_model.ground_truth``. The prompt is either a string, tokenised as is, or a chat
``messages`` list of ``{"role", "content"}`` objects, put through the tokenizer's chat template:
it is used verbatim, so a file should carry the same prompt format (instructions included) as the
training data. The answer is a string or a number, passed to the reward function as the ground truth::

    {"prompt": "12 + 30 =", "answer": "42"}
    {"prompt": [{"role": "user", "content": "What is 6 * 7?"}], "reward_model": {"ground_truth": "42"}}

A run writes, under ``--output``: ``results.json`` (the configuration, per-benchmark metrics and
their average over benchmarks) and ``samples_<benchmark>.jsonl`` (every completion with its problem,
sample index, answer, reward and finish reason); a table is printed at the end.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import torch
import transformers
import tyro
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.table import Table
from transformers import AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

from occ_fast.avg_at_k import evaluate
from occ_fast.data import PromptRecord, load_prompt_file
from occ_fast.model import choose_attn_implementation, load_config
from occ_fast.monitoring.progress import progress_bars
from occ_fast.rewards import RewardScorer
from occ_fast.rollout import RolloutEngine, TransformersEngine
from occ_fast.tokenizer import load_tokenizer

logger = logging.getLogger(__name__)

RESULTS_FILE = "results.json"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # benchmark names become file names
_WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin")


class EvalError(ValueError):
    """Input that cannot be evaluated; the message names the flag, file, row or field at fault."""


@dataclass(frozen=True)
class EvalArgs:
    """Score a model on benchmark files: avg@k (mean reward over k samples per problem) and pass@k
    (share of problems with at least one correct sample), per benchmark and averaged over them."""

    model: str
    """Hugging Face model directory (e.g. a run's model/), or a run directory whose model/ is used."""
    benchmarks: tuple[str, ...]
    """Benchmark files (.jsonl/.parquet), each NAME=PATH or a plain PATH (named after the file stem)."""
    prompt_field: str = "prompt"
    """Dotted path of the prompt (a string, or chat messages) in each row."""
    answer_field: str = "answer"
    """Dotted path of the ground-truth answer in each row (e.g. reward_model.ground_truth for DAPO files)."""
    on_error: Literal["raise", "skip"] = "raise"
    """A malformed row stops the run ('raise', naming file, row and field) or is skipped and counted ('skip')."""
    k: int = 1
    """Samples per problem (the paper reports avg@32)."""
    temperature: float | None = None
    """Sampling temperature; None = 1.0 when k > 1 (the policy's own distribution), 0.0 (greedy) when k = 1."""
    top_p: float = 1.0
    """Nucleus mass in (0, 1]; 1 disables it."""
    max_new_tokens: int = 1024
    """Completion length cap; completions that reach it are counted as truncated (and usually score 0)."""
    max_problems: int | None = None
    """Evaluate only the first N problems of each benchmark; None = all."""
    reward: str = "math"
    """Reward function: 'math' (math-verify), 'arithmetic', or 'package.module:function' (completion, answer) -> float."""
    reward_workers: int = 4
    """Reward worker processes, each call under --reward-timeout-s; 0 scores in-process without a time limit."""
    reward_timeout_s: float = 10.0
    """Wall-clock limit per completion in a worker; a time-out scores 0 and is counted."""
    seed: int = 0
    """Sampling seed: the same seed, model and files give the same completions."""
    output: str | None = None
    """Output directory; None = <run dir>/eval-<timestamp> for a run's model, else ./eval-<timestamp>."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Device of the transformers engine; 'auto' takes CUDA when available (vLLM always runs on CUDA)."""
    dtype: Literal["auto", "bf16", "fp32"] = "auto"
    """Weight dtype; 'auto' = bf16 on CUDA, fp32 on CPU."""
    engine: Literal["transformers", "vllm"] = "transformers"
    """Generation backend: 'transformers' (anywhere) or 'vllm' (CUDA, needs occ-fast[vllm])."""
    batch_size: int = 64
    """Sequences the transformers engine generates at once (memory bound only: results do not depend on it)."""
    gpu_memory_utilization: float = 0.9
    """Share of GPU memory vLLM may take (engine 'vllm' only)."""


DESCRIPTION = (
    " ".join((EvalArgs.__doc__ or "").split())
    + " Example, from the repository root on the model a default run writes: python -m"
    + " occ_fast.eval --model runs/NAME --benchmarks occ_fast/data/samples/addition_heldout.jsonl"
    + " --reward arithmetic --k 4 --max-new-tokens 8; the paper's metric is --k 32 on your benchmark"
    + " files (file schema: README, Evaluate)."
)


@dataclass
class Benchmark:
    """One benchmark file, loaded (and capped at --max-problems) before any generation."""

    name: str
    path: Path
    records: list[PromptRecord]
    num_skipped: int


def parse_args(argv: Sequence[str] | None = None) -> EvalArgs:
    """Command-line flags to :class:`EvalArgs` (``argv`` excludes the program name; None reads sys.argv)."""
    return tyro.cli(EvalArgs, args=argv, prog="python -m occ_fast.eval", description=DESCRIPTION)


def run_eval(args: EvalArgs, *, console: Console | None = None) -> dict[str, Any]:
    """Evaluate ``args.model`` on every benchmark, write the results, and return what results.json holds.

    Inputs are all checked (flags, files, rows, reward function, model directory) before any
    generation starts, so a bad path fails in seconds rather than after the first benchmark.
    """
    console = console or Console(stderr=True)
    started = datetime.now()
    temperature = check_args(args)
    benchmarks = [load_benchmark(spec, args) for spec in args.benchmarks]
    _check_unique([b.name for b in benchmarks])
    model_dir = resolve_model_dir(args.model)
    output = Path(args.output) if args.output else default_output(model_dir, started)
    try:
        scorer = RewardScorer(args.reward, num_workers=args.reward_workers, timeout_s=args.reward_timeout_s)
    except ImportError as e:
        raise EvalError(f"--reward: {e}") from e
    with scorer:
        tokenizer = _load_tokenizer(model_dir)
        _check_chat_template(tokenizer, benchmarks, model_dir)
        engine = make_engine(args, model_dir)
        output.mkdir(parents=True, exist_ok=True)
        logger.info("writing to %s", output)
        metrics = {}
        progress = progress_bars(console)
        with progress:
            for bench in benchmarks:
                task = progress.add_task(bench.name, total=len(bench.records) * args.k)
                begin = time.perf_counter()
                result = evaluate(
                    engine,
                    tokenizer,
                    bench.records,
                    scorer,
                    k=args.k,
                    temperature=temperature,
                    top_p=args.top_p,
                    max_new_tokens=args.max_new_tokens,
                    seed=args.seed,
                    progress=lambda done, total, task=task: progress.update(
                        task, completed=done, total=total
                    ),
                )
                samples_file = f"samples_{bench.name}.jsonl"
                with (output / samples_file).open("w", encoding="utf-8") as f:
                    for sample in result.samples:
                        f.write(json.dumps(sample, ensure_ascii=False) + "\n")
                metrics[bench.name] = {
                    "path": str(bench.path),
                    "num_problems": result.num_problems,
                    "num_skipped_rows": bench.num_skipped,
                    "k": result.k,
                    "avg_at_k": result.avg_at_k,
                    "pass_at_k": result.pass_at_k,
                    "num_truncated": sum(s["finish_reason"] == "length" for s in result.samples),
                    "num_timeouts": result.num_timeouts,
                    "num_errors": result.num_errors,
                    "time_s": time.perf_counter() - begin,
                    "samples_file": samples_file,
                }
                if result.num_timeouts or result.num_errors:
                    logger.warning(
                        "%s: %d reward time-outs and %d reward errors (scored 0)",
                        bench.name,
                        result.num_timeouts,
                        result.num_errors,
                    )
    results = {
        "model": str(model_dir),
        "started": started.isoformat(timespec="seconds"),
        "config": {**dataclasses.asdict(args), "temperature": temperature, "output": str(output)},
        "benchmarks": metrics,
        "average": {
            "avg_at_k": math.fsum(m["avg_at_k"] for m in metrics.values()) / len(metrics),
            "pass_at_k": math.fsum(m["pass_at_k"] for m in metrics.values()) / len(metrics),
            "num_benchmarks": len(metrics),
        },
    }
    (output / RESULTS_FILE).write_text(json.dumps(results, indent=2) + "\n")
    return results


def check_args(args: EvalArgs) -> float:
    """Raise :class:`EvalError` listing every flag that cannot work; return the sampling temperature."""
    temperature = args.temperature if args.temperature is not None else (1.0 if args.k > 1 else 0.0)
    checks = [
        (bool(args.benchmarks), "--benchmarks: give at least one benchmark file"),
        (args.k >= 1, f"--k must be >= 1, got {args.k}"),
        (math.isfinite(temperature) and temperature >= 0, f"--temperature must be >= 0, got {temperature}"),
        (
            not (temperature == 0 and args.k > 1),
            f"--k {args.k} with --temperature 0 would sample the same greedy completion {args.k} times: "
            "use --k 1 for greedy, or a temperature > 0",
        ),
        (0 < args.top_p <= 1, f"--top-p must be in (0, 1], got {args.top_p}"),
        (args.max_new_tokens >= 1, f"--max-new-tokens must be >= 1, got {args.max_new_tokens}"),
        (
            args.max_problems is None or args.max_problems >= 1,
            f"--max-problems must be >= 1 (or None for all), got {args.max_problems}",
        ),
        (args.reward_workers >= 0, f"--reward-workers must be >= 0, got {args.reward_workers}"),
        (args.reward_timeout_s > 0, f"--reward-timeout-s must be > 0, got {args.reward_timeout_s}"),
        (args.batch_size >= 1, f"--batch-size must be >= 1, got {args.batch_size}"),
        (
            0 < args.gpu_memory_utilization <= 1,
            f"--gpu-memory-utilization must be in (0, 1], got {args.gpu_memory_utilization}",
        ),
        (
            not (args.engine == "vllm" and args.device == "cpu"),
            "--engine vllm runs on CUDA only; use --engine transformers with --device cpu",
        ),
    ]
    errors = [message for ok, message in checks if not ok]
    if errors:
        raise EvalError("invalid arguments:\n  - " + "\n  - ".join(errors))
    return temperature


def parse_benchmark_spec(spec: str) -> tuple[str, Path]:
    """``NAME=PATH`` or a plain ``PATH`` (named after its stem); a ``/`` before the ``=`` means a plain path."""
    name, sep, path = spec.partition("=")
    if not sep or "/" in name or "\\" in name:
        name, path = Path(spec).stem, spec
    if not _NAME.fullmatch(name):
        raise EvalError(
            f"--benchmarks {spec!r}: benchmark name {name!r} must be letters, digits, '.', '_' or '-' "
            "(it names the samples file); give one as NAME=PATH"
        )
    return name, Path(path)


def load_benchmark(spec: str, args: EvalArgs) -> Benchmark:
    """Read one benchmark file (the first ``args.max_problems`` rows); errors name the file and row."""
    name, path = parse_benchmark_spec(spec)
    if not path.is_file():
        raise EvalError(f"benchmark {name!r}: file {path} does not exist")
    try:
        dataset = load_prompt_file(path, args.prompt_field, args.answer_field, on_error=args.on_error)
    except ValueError as e:  # DatasetRowError, unsupported type, unreadable Parquet, no usable rows
        raise EvalError(f"benchmark {name!r}: {e}") from e
    if dataset.num_skipped:
        logger.warning(
            "%s: skipped %d malformed rows, e.g. %s", path, dataset.num_skipped, dataset.skipped[0]
        )
    records = dataset.records[: args.max_problems]
    logger.info("benchmark %s: %d problems from %s", name, len(records), path)
    return Benchmark(name=name, path=path, records=records, num_skipped=dataset.num_skipped)


def _check_unique(names: list[str]) -> None:
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise EvalError(
            f"--benchmarks: the name(s) {', '.join(repeated)} appear more than once; "
            "give distinct names as NAME=PATH"
        )


def resolve_model_dir(path: str) -> Path:
    """The Hugging Face directory to load: ``path`` itself, or ``path/model`` for a run directory."""
    given = Path(path)
    if not given.is_dir():
        raise EvalError(f"--model {path}: no such directory")
    model_dir = given / "model" if (given / "model" / "config.json").is_file() else given
    if not (model_dir / "config.json").is_file():
        raise EvalError(
            f"--model {path}: no config.json: expected a Hugging Face model directory, or a run "
            "directory holding model/ (a run writes model/ when training ends)"
        )
    if not any(any(model_dir.glob(pattern)) for pattern in _WEIGHT_PATTERNS):
        raise EvalError(f"--model {path}: {model_dir} holds no weights ({' or '.join(_WEIGHT_PATTERNS)})")
    return model_dir


def default_output(model_dir: Path, now: datetime) -> Path:
    """``<run dir>/eval-<timestamp>`` when ``model_dir`` is a run's ``model/``, else ``./eval-<timestamp>``;
    never an existing directory, so a second evaluation never overwrites the first."""
    is_run = model_dir.name == "model" and (model_dir.parent / "config.yaml").is_file()
    base = (model_dir.parent if is_run else Path(".")) / f"eval-{now:%Y%m%d-%H%M%S}"
    candidate, n = base, 1
    while candidate.exists():
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")
    return candidate


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Hide transformers' warnings about a checkpoint of ours: the MiMo ``model_type`` (read as Qwen2
    by load_config) and MTP tensors the bare LM does not use are expected, not problems."""
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        yield
    finally:
        transformers.logging.set_verbosity(verbosity)


def _load_tokenizer(model_dir: Path) -> PreTrainedTokenizerBase:
    try:
        with _quiet_transformers():
            return load_tokenizer(model_dir)
    except (OSError, ValueError) as e:
        raise EvalError(f"--model {model_dir}: {e}") from e


def _check_chat_template(
    tokenizer: PreTrainedTokenizerBase, benchmarks: list[Benchmark], model_dir: Path
) -> None:
    """Chat-message prompts need a chat template; say so before generating rather than mid-run."""
    if tokenizer.chat_template is not None:
        return
    for bench in benchmarks:
        chat = next((r for r in bench.records if not isinstance(r.prompt, str)), None)
        if chat is not None:
            raise EvalError(
                f"{chat.source}: the prompt is a chat messages list, but the tokenizer in {model_dir} "
                "has no chat template; give plain-text prompts or a tokenizer with one"
            )


def resolve_device(requested: str) -> torch.device:
    if requested == "cuda" and not torch.cuda.is_available():
        raise EvalError("--device cuda: no CUDA device is available")
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def make_engine(args: EvalArgs, model_dir: Path) -> RolloutEngine:
    """The generation backend on the model's weights (its main head: MTP heads play no part in sampling)."""
    if args.engine == "vllm":
        from occ_fast.rollout.vllm_engine import VLLMEngine

        try:
            return VLLMEngine(
                model_dir,
                gpu_memory_utilization=args.gpu_memory_utilization,
                seed=args.seed,
                check_every=0,  # nothing to check: the engine samples the weights it loaded itself
                engine_kwargs={"dtype": "float32"} if args.dtype == "fp32" else None,
            )
        except ImportError as e:
            raise EvalError(f"--engine vllm: {e}") from e
    device = resolve_device(args.device)
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}.get(
        args.dtype, torch.bfloat16 if device.type == "cuda" else torch.float32
    )
    model = load_causal_lm(model_dir, dtype).to(device)
    logger.info("model %s on %s (%s)", model_dir, device, dtype)
    return TransformersEngine(model, max_batch_size=args.batch_size)


def load_causal_lm(model_dir: Path, dtype: torch.dtype) -> PreTrainedModel:
    """The bare causal LM, loaded as load_mtp_model loads its trunk, without building MTP heads.

    transformers' load report, which would list every MTP tensor, is silenced and the loading info
    checked here instead: a trunk weight missing from the checkpoint would be left at random init,
    which must stop the evaluation rather than score noise.
    """
    with _quiet_transformers():
        model, info = AutoModelForCausalLM.from_pretrained(
            model_dir,
            config=load_config(model_dir),
            dtype=dtype,
            attn_implementation=choose_attn_implementation("auto"),
            output_loading_info=True,
        )
    missing = sorted(info["missing_keys"])
    if missing:
        raise EvalError(
            f"--model {model_dir}: the checkpoint lacks {len(missing)} weights of {type(model).__name__} "
            f"(e.g. {', '.join(missing[:3])}); they would be random"
        )
    unused = sorted(info["unexpected_keys"])
    if unused:
        logger.info(
            "not loaded (MTP heads play no part in sampling): %d tensors, e.g. %s", len(unused), unused[0]
        )
    return model


def results_table(results: dict[str, Any]) -> Table:
    """One row per benchmark and their unweighted average (the paper's headline number)."""
    k = results["config"]["k"]
    table = Table(title=f"{results['model']}  (k={k}, temperature={results['config']['temperature']})")
    # At 80 columns (a pipe, a narrow terminal) the names fold and every figure stays whole.
    table.add_column("benchmark", overflow="fold", min_width=len("average"))
    widths = {
        "problems": 8,
        "k": 2,
        f"avg@{k}": 6,
        f"pass@{k}": 6,
        "truncated": 9,
        "time-outs": 9,
        "errors": 6,
    }
    for column, width in widths.items():
        table.add_column(column, justify="right", no_wrap=True, min_width=max(len(column), width))
    for name, m in results["benchmarks"].items():
        samples = m["num_problems"] * m["k"]
        table.add_row(
            name,
            str(m["num_problems"]),
            str(m["k"]),
            f"{m['avg_at_k']:.4f}",
            f"{m['pass_at_k']:.4f}",
            f"{m['num_truncated']}/{samples}",
            str(m["num_timeouts"]),
            str(m["num_errors"]),
        )
    avg = results["average"]
    table.add_section()
    table.add_row(
        "average",
        "",
        "",
        f"{avg['avg_at_k']:.4f}",
        f"{avg['pass_at_k']:.4f}",
        "",
        "",
        "",
    )
    return table


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m occ_fast.eval``: evaluate, print the table; exit status 2 on bad input (a message, no
    traceback), as training gives for a user's error (and a misspelt flag gives here too)."""
    console = Console(stderr=True)
    logging.basicConfig(
        level=logging.INFO, format="%(message)s", handlers=[RichHandler(console=console, show_path=False)]
    )
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        results = run_eval(args, console=console)
    except EvalError as e:
        console.print(f"[bold red]error[/] {escape(str(e))}", soft_wrap=True)
        return 2
    Console().print(results_table(results))
    console.print(f"results: {Path(results['config']['output']) / RESULTS_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
