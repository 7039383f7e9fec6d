"""Run lm-evaluation-harness tasks on an lm-eval model: the one evaluation loop behind
``llm-modules evaluate`` and a fit config's ``evaluate`` section.

``evaluate_tasks(lm, ["my_task", "tasks/arith.yaml"], num_fewshot=5)`` returns lm-eval's own results
dict (``results``, ``configs``, ``n-shot``, ``versions``, ...: what ``lm_eval`` writes as JSON), so a
table (``lm_eval.utils.make_table``) and any tooling made for lm-eval's output read it unchanged.

Tasks are named three ways: an lm-eval task (or group, or tag) name; a task of ours bundled under
``llm_modules/eval_tasks`` (found whenever that folder exists); or the path of a local task YAML,
whose folder is searched and whose ``task:`` is the name. Indexing lm-eval's ~15,000 task files takes
seconds of CPU, so it is done only when a name is not found among the local tasks (a YAML file's
folder, ``include_paths``, the bundled ones).

Nothing is downloaded: a run sets ``HF_DATASETS_OFFLINE``/``HF_HUB_OFFLINE`` unless the user has set
them, so a task whose data is not on this machine fails at once, in one line naming it, instead of
hanging on the network. Every refusal is a ``ConfigError`` (one line, exit 2 under the CLI).

``prepare_tasks(tasks)`` is a hook called with ``{name: Task}`` after the few-shot count is set and
before any request is built: demonstration design and chain-of-thought options
(``llm_modules.evaluation.prompting``) change the tasks there. A sampler a hook puts in place keeps
lm-eval's ``set_rnd(seed)``, which the evaluator calls afterwards with the few-shot seed.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from llm_modules.registry import ConfigError

INSTALL_HINT = "install the eval extra: pip install 'llm-modules[eval]'"
OFFLINE_VARIABLES = ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")
YAML_SUFFIXES = (".yaml", ".yml")


def require_lm_eval() -> None:
    """Refuse, in one line, to evaluate without lm-eval (an optional dependency)."""
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise ConfigError(f"lm-eval is not installed; {INSTALL_HINT}") from None


def bundled_tasks_dir() -> Path | None:
    """``llm_modules/eval_tasks``: the tasks made for our tutorial and tests (None if an installation lacks
    them). Found by path, not imported: eval_tasks uses this package (pass@k, the sandbox), not the reverse."""
    folder = Path(__file__).resolve().parents[1] / "eval_tasks"
    return folder if folder.is_dir() else None


def check_counts(num_fewshot: int | None, limit: int | float | None, where: str = "--") -> None:
    """Few-shot count and limit are non-negative (``where`` prefixes the field names: ``--`` or ``evaluate.``)."""
    if num_fewshot is not None and (isinstance(num_fewshot, bool) or not isinstance(num_fewshot, int)
                                    or num_fewshot < 0):
        raise ConfigError(f"{where}num_fewshot {num_fewshot!r}: give a whole number of demonstrations >= 0")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, float)) or limit <= 0):
        raise ConfigError(f"{where}limit {limit!r}: give a number of documents per task > 0 "
                          "(or a fraction below 1), or leave it out for every document")


def yaml_task_name(path: str | os.PathLike) -> str:
    """The ``task:`` (or ``group:``) a local task YAML defines; a file that defines none is refused."""
    from lm_eval.tasks._yaml_loader import load_yaml

    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"task file {str(path)!r} does not exist; give the path of a task YAML or a task name")
    try:
        config = load_yaml(file, resolve_func=False)
    except OSError as err:
        raise ConfigError(f"task file {str(path)!r}: cannot read it ({err.strerror or err})") from None
    except Exception as err:  # yaml's errors, an include that is missing
        text = " ".join(str(err).split())[:200]
        raise ConfigError(f"task file {str(path)!r} is not a valid task YAML ({text}); fix the file") from None
    name = None
    if isinstance(config, dict):  # a task file names itself in 'task:'; a group file in 'group:' (its 'task:' lists)
        name = config.get("task") if isinstance(config.get("task"), str) else config.get("group")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"task file {str(path)!r} does not define a task: it needs a 'task: NAME' line "
                          "(with dataset_path/data_files, output_type, doc_to_text, ...)")
    return name


def _is_yaml_path(spec: str) -> bool:
    return spec.endswith(YAML_SUFFIXES) or os.sep in spec or "/" in spec


def resolve_tasks(tasks: Sequence[str], include_paths: Sequence[str | os.PathLike] = ()) -> tuple[Any, list[str]]:
    """(lm-eval TaskManager, task names) for ``tasks`` given by name or YAML path; unknown names are
    refused with the closest known name."""
    from lm_eval.tasks import TaskManager

    specs = [str(t).strip() for t in tasks if str(t).strip()]
    if not specs:
        raise ConfigError("--tasks is empty; name at least one task (an lm-eval task name or a task YAML file)")
    folders: list[Path] = [p for p in [bundled_tasks_dir()] if p is not None]
    for path in include_paths:
        if not Path(path).is_dir():
            raise ConfigError(f"--include_path {str(path)!r} is not a folder; give a folder of task YAML files")
        folders.append(Path(path))
    names = []
    for spec in specs:
        if _is_yaml_path(spec):
            names.append(yaml_task_name(spec))
            folders.append(Path(spec).resolve().parent)
        else:
            names.append(spec)
    folders = list(dict.fromkeys(p.resolve() for p in folders))
    manager = TaskManager(include_path=folders, include_defaults=False) if folders else None
    if manager is None or any(n not in manager.all_tasks for n in _with_group_members(manager, names)):
        manager = TaskManager(include_path=folders or None)  # lm-eval's own tasks too
    for name, spec in zip(names, specs):
        if name not in manager.all_tasks:
            if name != spec:  # a YAML file whose task did not index (a duplicate name, a broken include)
                raise ConfigError(f"task file {spec!r} defines task {name!r}, which lm-eval could not index; "
                                  "check the file's other keys")
            close = difflib.get_close_matches(name, manager.all_tasks, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"unknown task {name!r}{hint}; give an lm-eval task name (lm-eval ls tasks), "
                              "a bundled task or the path of a task YAML")
    return manager, names


def _with_group_members(manager: Any, names: Sequence[str]) -> list[str]:
    """``names`` and, for each that is a group in ``manager``'s index, the task names its YAML lists
    (recursively): a local group of lm-eval tasks needs lm-eval's index too."""
    from lm_eval.tasks._yaml_loader import load_yaml

    out, todo = [], list(names)
    while todo:
        name = todo.pop()
        if name in out:
            continue
        out.append(name)
        entry = manager.task_index.get(name)
        if entry is not None and entry.yaml_path is not None and getattr(entry.kind, "name", "") == "GROUP":
            members = load_yaml(entry.yaml_path, resolve_func=False).get("task") or []
            todo += [m for m in members if isinstance(m, str)]
    return out


@contextlib.contextmanager
def offline() -> Iterator[None]:
    """No download during the run unless the user asked for one: the offline switches of ``datasets``
    and ``huggingface_hub`` are set (their environment variables, and their module flags when the
    modules were already imported, since they read the variables at import) and restored afterwards."""
    if any(os.environ.get(v) is not None for v in OFFLINE_VARIABLES):
        yield
        return
    saved: list[tuple[Any, str, Any]] = []
    for module_name, attrs in (("huggingface_hub.constants", ("HF_HUB_OFFLINE",)),
                               ("datasets.config", ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))):
        module = sys.modules.get(module_name)
        for attr in attrs if module is not None else ():
            if hasattr(module, attr):
                saved.append((module, attr, getattr(module, attr)))
                setattr(module, attr, True)
    os.environ.update({v: "1" for v in OFFLINE_VARIABLES})
    try:
        yield
    finally:
        for v in OFFLINE_VARIABLES:
            os.environ.pop(v, None)
        for module, attr, value in saved:
            setattr(module, attr, value)


def _offline_failure(err: BaseException) -> bool:
    """Whether ``err`` (or what it arose from) is a download refused or impossible offline."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        kind = type(err).__name__
        if kind in ("OfflineModeIsEnabled", "DatasetNotFoundError", "ConnectionError", "LocalEntryNotFoundError",
                    "HfHubHTTPError") or "offline" in str(err).lower():
            return True
        err = err.__cause__ or err.__context__
    return False


def load_tasks(manager: Any, names: Sequence[str]) -> dict[str, Any]:
    """lm-eval's task dict (``tasks``, ``groups``, ``group_map``) for ``names``, loaded one name at a
    time so that a task whose data is missing is named."""
    merged: dict[str, Any] = {"tasks": {}, "groups": {}, "group_map": {}}
    for name in names:
        try:
            loaded = manager.load([name])
        except Exception as err:
            if _offline_failure(err):
                raise ConfigError(f"task {name!r}: its data is not available offline (nothing is downloaded during "
                                  "evaluation); put the dataset in the Hugging Face cache first, or use a task YAML "
                                  "with local data files") from None
            missing = _missing_file(err)
            if missing is not None:
                what = f"data file {missing.filename!r} does not exist" if missing.filename else str(missing)
                raise ConfigError(f"task {name!r}: {what}; check the task's data_files") from None
            if isinstance(err, (KeyError, ValueError, TypeError)):  # the task's configuration
                text = " ".join(str(err).split())[:300]
                raise ConfigError(f"task {name!r} could not be loaded ({type(err).__name__}: {text}); "
                                  "check its YAML") from None
            raise
        for key in merged:
            merged[key].update(loaded.get(key) or {})
    return merged


def prepare(tasks: Sequence[str], include_paths: Sequence[str | os.PathLike] = (),
            confirm_run_unsafe_code: bool = False) -> tuple[Any, dict[str, Any]]:
    """(TaskManager, loaded task dict) for ``tasks``, their data read (offline): everything that can be
    refused is refused here, so a fit can check its ``evaluate`` section before training."""
    require_lm_eval()
    with offline():
        manager, names = resolve_tasks(tasks, include_paths)
        task_dict = load_tasks(manager, names)
    for name, task in task_dict["tasks"].items():
        if getattr(task, "UNSAFE_CODE", False) and not confirm_run_unsafe_code:
            raise ConfigError(f"task {name!r} runs code the model writes; pass --confirm_run_unsafe_code "
                              "(evaluate.confirm_run_unsafe_code: true) to allow it")
    return manager, task_dict


def _missing_file(err: BaseException) -> FileNotFoundError | None:
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, FileNotFoundError):
            return err
        err = err.__cause__ or err.__context__
    return None


def _roots(task_dict: dict[str, Any]) -> list[Any]:
    """The objects named at the top (groups that are nobody's child, tasks in no group), for lm-eval's evaluator."""
    children = {c for kids in task_dict["group_map"].values() for c in kids}
    groups = [g for name, g in task_dict["groups"].items() if name not in children]
    grouped = {t.task_name for g in task_dict["groups"].values() for t in g.get_all_tasks()}
    return groups + [t for name, t in task_dict["tasks"].items() if name not in grouped]


def evaluate_tasks(lm: Any, tasks: Sequence[str], num_fewshot: int | None = None, limit: int | float | None = None,
                   seed: int = 1234, include_paths: Sequence[str | os.PathLike] = (), log_samples: bool = False,
                   prepare_tasks: Callable[[dict[str, Any]], None] | None = None, bootstrap_iters: int = 100000,
                   confirm_run_unsafe_code: bool = False, model_name: str | None = None) -> dict[str, Any]:
    """Evaluate the lm-eval model ``lm`` on ``tasks`` (names or YAML paths) and return lm-eval's results
    dict. ``num_fewshot`` replaces each task's own count (except a task that fixes 0, as lm-eval does);
    ``limit`` caps the documents per task; ``seed`` seeds Python, NumPy, torch and the choice of
    demonstrations; ``log_samples`` keeps every document's prompt, answer and metrics under ``samples``."""
    require_lm_eval()
    check_counts(num_fewshot, limit)
    from lm_eval import simple_evaluate

    with offline():
        manager, task_dict = prepare(tasks, include_paths, confirm_run_unsafe_code)
        for task in task_dict["tasks"].values():
            if num_fewshot is not None and task.get_config("num_fewshot") != 0:
                task.set_config(key="num_fewshot", value=num_fewshot)  # what lm-eval's evaluator does
            elif task.get_config("num_fewshot") is None:
                task.set_config(key="num_fewshot", value=0)
            task.set_fewshot_seed(seed=seed)
        if prepare_tasks is not None:
            prepare_tasks(task_dict["tasks"])
        results = simple_evaluate(
            model=lm, tasks=_roots(task_dict), task_manager=manager, limit=limit, log_samples=log_samples,
            bootstrap_iters=bootstrap_iters, random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed,
            fewshot_random_seed=seed, confirm_run_unsafe_code=confirm_run_unsafe_code,
        )
    if results is not None:
        results["config"]["model"] = model_name or results["config"].get("model")
    return results


def to_json(results: dict[str, Any]) -> str:
    """lm-eval's results as JSON, made serialisable the way lm-eval's own CLI does."""
    import json

    from lm_eval.utils import handle_non_serializable

    return json.dumps(results, indent=2, default=handle_non_serializable, ensure_ascii=False) + "\n"


def table(results: dict[str, Any]) -> str:
    """lm-eval's printed table(s): one row per task and metric, and one per group when there are groups."""
    from lm_eval.utils import make_table

    text = make_table(results)
    if results.get("groups"):
        text += "\n" + make_table(results, "groups")
    return text


def task_metrics(results: dict[str, Any]) -> dict[str, float]:
    """``{"<task>/<metric>": value}`` (``<metric>_<filter>`` for a filter other than lm-eval's "none") for every
    numeric result, stderr included, to log."""
    out = {}
    for task, metrics in (results.get("results") or {}).items():
        for key, value in metrics.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or key in ("alias", "sample_len"):
                continue
            metric, _, flt = key.partition(",")
            name = metric if flt in ("", "none") else f"{metric}_{flt}"
            out[f"{task}/{name}"] = float(value)
    return out
