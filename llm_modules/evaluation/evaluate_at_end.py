"""A fit config's ``evaluate`` section: lm-evaluation-harness tasks on the trained model when training ends.

    evaluate:
      tasks: [my_tasks/arith.yaml, hellaswag]   # names or task YAML paths, as ``llm-modules evaluate --tasks``
      num_fewshot: 5
      limit: 100

After ``fit``, global rank zero wraps the model in memory (``LLMModulesLM(module=...)``, no checkpoint
read back) and runs ``evaluation.runner.evaluate_tasks``. Every task metric goes to the run's loggers
as ``eval/<task>/<metric>`` at the step of the last training step (so it sits with the run's other
metrics in metrics.csv and TensorBoard), and lm-eval's results JSON is written to the run folder as
``lm_eval_results.json``. The other ranks do not evaluate and do not wait: nothing collective runs at the end (the run folder is
asked for in ``setup``, on every rank, since ``trainer.log_dir`` is a broadcast).

The section is checked when the command line is parsed, before any data or model is built: a bad value
is one line naming the field (``evaluate.num_fewshot``, ``evaluate.tasks``, ...), and so is a task
name that does not exist, a task whose data is not on this machine, a task that runs generated code
without ``confirm_run_unsafe_code``, or a missing lm-eval.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from lightning.pytorch.callbacks import Callback

from llm_modules.registry import ConfigError

log = logging.getLogger(__name__)

RESULTS_FILE = "lm_eval_results.json"
PREFIX = "eval"


@dataclass
class EvaluateSection:
    """Tasks to evaluate the trained model on when ``fit`` ends (lm-evaluation-harness)."""

    tasks: list[str] = field(default_factory=list)
    """lm-eval task names, bundled task names or paths of task YAML files"""
    num_fewshot: int | None = None
    """demonstrations before each question (default: each task's own, else 0)"""
    limit: int | float | None = None
    """documents per task (a value below 1 is a fraction); default every document"""
    batch_size: int = 8
    """requests per forward"""
    seed: int = 1234
    """seed for the choice of demonstrations and any sampling"""
    include_path: list[str] = field(default_factory=list)
    """folders of task YAML files to search as well"""
    confirm_run_unsafe_code: bool = False
    """allow tasks that run code the model writes"""
    prompting: dict[str, Any] | None = None
    """demonstration design and chain-of-thought (``evaluation.prompting.PromptDesign`` fields, e.g.
    {demonstrations: bm25, cot: zeroshot, self_consistency: 5}); default: each task as written"""


def _get(section: Any, name: str, default: Any = None) -> Any:
    if isinstance(section, dict):
        return section.get(name, default)
    return getattr(section, name, default)


def _whole(limit: int | float | None) -> int | float | None:
    """A limit YAML gives as 100.0 is 100 documents (lm-eval reads a float below 1 as a fraction)."""
    return int(limit) if isinstance(limit, float) and limit.is_integer() and limit >= 1 else limit


def check_section(section: Any) -> None:
    """Refuse a bad ``evaluate`` section in one line naming the field, before anything is built."""
    from llm_modules.evaluation import runner

    tasks = _get(section, "tasks") or []
    if isinstance(tasks, str):
        tasks = [t for t in tasks.split(",")]
    if not tasks or not all(isinstance(t, str) and t.strip() for t in tasks):
        raise ConfigError("evaluate.tasks: name at least one task (lm-eval task names or task YAML paths), "
                          "e.g. evaluate: {tasks: [my_tasks/arith.yaml]}")
    runner.check_counts(_get(section, "num_fewshot"), _whole(_get(section, "limit")), where="evaluate.")
    batch_size = _get(section, "batch_size", 8)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"evaluate.batch_size {batch_size!r}: give a number of requests >= 1")
    for folder in _get(section, "include_path") or []:
        if not Path(folder).is_dir():
            raise ConfigError(f"evaluate.include_path {folder!r} is not a folder; give a folder of task YAML files")
    _design(section)
    try:  # names resolved and data read now, not after hours of training
        runner.prepare(tasks, _get(section, "include_path") or [], bool(_get(section, "confirm_run_unsafe_code")))
    except ConfigError as err:
        raise ConfigError(f"evaluate.tasks: {err}") from None


def _design(section: Any):
    """The section's ``PromptDesign`` (None without ``prompting``); a bad field is one line naming it."""
    from llm_modules.evaluation.prompting import PromptDesign

    try:
        return PromptDesign.from_dict(_get(section, "prompting"))
    except ConfigError as err:  # "similarity: ..." or "prompting: unknown field ..."
        where = "evaluate." if str(err).startswith("prompting") else "evaluate.prompting."
        raise ConfigError(f"{where}{err}") from None


def check_strategy(trainer) -> None:
    """Only a strategy whose rank zero holds the whole model can evaluate it alone: one device or DDP.
    Under FSDP, DeepSpeed or model/pipeline parallelism a forward on one rank would wait for the others
    for ever; such a run is refused before training (evaluate its checkpoint with ``llm-modules evaluate``)."""
    from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy

    strategy = trainer.strategy
    sharded = any("DeepSpeed" in cls.__name__ for cls in type(strategy).__mro__)
    if sharded or not isinstance(strategy, (SingleDeviceStrategy, DDPStrategy)):
        raise ConfigError(f"evaluate: the trained model cannot be evaluated in this run under "
                          f"{type(strategy).__name__} (its weights are split across processes); remove the "
                          "evaluate section and run 'llm-modules evaluate CKPT --tasks ...' on the checkpoint")


def callback_for(section: Any) -> "EvaluateAtEnd | None":
    """The callback for a parsed ``evaluate`` section (a dataclass, a Namespace or a dict), or None without one."""
    if section is None or not (_get(section, "tasks") or []):
        return None
    names = ("tasks", "num_fewshot", "limit", "batch_size", "seed", "include_path", "confirm_run_unsafe_code")
    options = {n: _get(section, n) for n in names if _get(section, n) is not None}
    options["design"] = _design(section)
    if isinstance(options["tasks"], str):
        options["tasks"] = [t.strip() for t in options["tasks"].split(",") if t.strip()]
    return EvaluateAtEnd(**options)


class EvaluateAtEnd(Callback):
    """Evaluate the trained model on lm-eval tasks when ``fit`` ends (global rank zero only); log every
    task metric and write lm-eval's results JSON to the run folder. ``prepare_tasks`` is passed on to
    ``evaluate_tasks`` (demonstration design, chain-of-thought)."""

    def __init__(self, tasks: list[str], num_fewshot: int | None = None, limit: int | float | None = None,
                 batch_size: int = 8, seed: int = 1234, include_path: list[str] | tuple[str, ...] = (),
                 confirm_run_unsafe_code: bool = False, design=None,
                 prepare_tasks: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.tasks, self.num_fewshot, self.limit = list(tasks), num_fewshot, _whole(limit)
        self.batch_size, self.seed, self.include_path = batch_size, seed, list(include_path)
        self.confirm_run_unsafe_code, self.prepare_tasks = confirm_run_unsafe_code, prepare_tasks
        self.design = design  # a PromptDesign: applied to the tasks with the trained model (its embeddings)
        self.results: dict[str, Any] | None = None
        self.folder: Path | None = None

    def setup(self, trainer, pl_module, stage: str) -> None:
        # ``trainer.log_dir`` is a broadcast under DDP: asked here, on every rank, never at the end on rank 0 alone.
        self.folder = Path(trainer.log_dir or trainer.default_root_dir)

    def on_fit_end(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero or trainer.interrupted:
            return
        from llm_modules.atomic_files import write_text
        from llm_modules.evaluation import runner
        from llm_modules.evaluation.lm_eval_model import LLMModulesLM

        # Lightning has moved the model to the CPU (strategy teardown): evaluate on the device it trained on,
        # then put it back where teardown left it.
        was_training, where = pl_module.training, pl_module.device
        try:
            lm = LLMModulesLM(module=pl_module, batch_size=self.batch_size, device=str(trainer.strategy.root_device))
            prepare = self.prepare_tasks
            if prepare is None and self.design is not None:
                from llm_modules.evaluation.prompting import task_preparer

                prepare = task_preparer(self.design, lm)
            results = runner.evaluate_tasks(
                lm, self.tasks, num_fewshot=self.num_fewshot, limit=self.limit, seed=self.seed,
                include_paths=self.include_path, prepare_tasks=prepare,
                confirm_run_unsafe_code=self.confirm_run_unsafe_code, model_name=type(pl_module).__name__,
            )
        finally:
            pl_module.to(where).train(was_training)
        results["config"]["prompt_design"] = self.design.to_dict() if self.design is not None else None
        self.results = results
        step = max(trainer.global_step - 1, 0)  # the step the last training step's metrics were logged at
        metrics = {f"{PREFIX}/{name}": value for name, value in runner.task_metrics(results).items()}
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)
            logger.save()
        path = write_text((self.folder or Path(trainer.default_root_dir)) / RESULTS_FILE, runner.to_json(results))
        log.info("lm-eval results (step %d) written to %s\n%s", step, path, runner.table(results))
