"""The preparation run: inputs -> stages -> shards, checkpointed, resumable, reported.

Stage order (each dropped document is charged to the first rule that fires)::

    normalize -> empty -> quality filters -> PII scrubbing -> exact duplicate -> decontamination
              -> near duplicate -> write

Why this order:

- Normalisation first, so every rule and hash sees one canonical text.
- The quality filters are cheap and drop most junk; running them before anything that keeps state
  means junk never enters the duplicate indexes.
- PII scrubbing before deduplication: two copies of a page that differ only in an e-mail address
  become exact duplicates after scrubbing, and the hashes describe the text that is written.
- Exact duplicates before the n-gram stages: one hash lookup is the cheapest way to drop a copy.
- Decontamination before near duplicates: the near-duplicate index must only hold documents that
  are kept. Were a contaminated document indexed first, a clean later near-copy would be dropped as
  its duplicate and both would be lost. Keep-first holds for both duplicate stages: the first copy
  in input order survives.

How it runs (datatrove executors, ``executors``; the pipelines are in ``steps``):

1. **process**, many tasks: the inputs are cut into units (``units``); each task reads its units and
   runs the per-document stages (``processor``), committing each unit's records at once (``records``).
2. **select**, one task: exact duplicates, decontamination and near duplicates in input order, keep-first,
   and the shard layout (``select``).
3. **write**, many tasks: each shard written from the layout (``write``).
4. **finish**: ``report.json`` and the complete manifest; the work folder is removed.

The output is therefore identical for any executor, task count and number of workers.

Resume: a unit, a shard and a stage are each committed atomically (a rename; datatrove's completion
record per task). Rerunning the same command after an interrupt (Ctrl-C, a kill, a preempted job)
skips what was committed and redoes the rest; the shards and the report's counts are the same as an
uninterrupted run's. The work folder (``work``) holds what every task needs as plain files.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any

from llm_modules.data.prepare import manifest as M
from llm_modules.data.prepare.config import PII_KINDS, RULES, PrepareConfig, semantic_dict
from llm_modules.data.prepare.decontam import eval_ngrams
from llm_modules.data.prepare.processor import Processor
from llm_modules.data.prepare.report import Counts, build_report, empty_output_warning
from llm_modules.data.prepare.select import read_plan
from llm_modules.data.prepare.state import write_json_atomic
from llm_modules.data.prepare.units import plan_units
from llm_modules.data.prepare.work import Work
from llm_modules.data.sources import SourceFile, inputs_fingerprint, resolve_paths
from llm_modules.registry import ConfigError


def prepare(config: PrepareConfig, *, overwrite: bool = False, progress: bool | None = None,
            stop_after: int | None = None) -> dict[str, Any]:
    """Run (or resume, or reuse) the preparation ``config`` describes; return its report.

    ``progress``: print a line per stage on stderr (default: when stderr is a terminal).
    ``stop_after``: for tests: raise KeyboardInterrupt after this many input documents of this run
    (local executor, one worker), as a kill would.
    The returned report has ``"status"``: ``"complete"`` (ran to the end now), ``"resumed"``,
    ``"already complete"`` (nothing to do) or, for Slurm, ``"submitted"`` (with the jobs).
    """
    config.validate()
    if not config.inputs:
        raise ConfigError("inputs: no input given; list text files, directories, globs or JSONL files")
    if not config.out:
        raise ConfigError("out: no output directory given; pass --out DIR (created if missing)")
    out = Path(config.out).expanduser()
    _check_not_inside_inputs(out, config.inputs)
    files = resolve_paths(config.inputs, pattern=config.pattern, text_field=config.text_field, field="inputs")
    decon = config.decontamination
    eval_files: list[SourceFile] = []
    if decon.enabled and decon.eval_paths:
        eval_files = resolve_paths(decon.eval_paths, text_field=decon.text_field,
                                   field="decontamination.eval_paths")
    fingerprint = inputs_fingerprint(files + eval_files)
    settings = _jsonable(semantic_dict(config))
    M.check_writable(out)  # before creating anything in it
    held = M.lock(out)
    try:
        status = M.open_output(out, settings, fingerprint, overwrite)
        if status == "complete":
            report = _read_report(out)
            report["status"] = "already complete"
            return report
        work = Work(out.resolve())  # absolute: Slurm jobs and Ray workers may start elsewhere
        resumed = status == "resume" and work.exists()
        if not resumed:
            _start(work, config, files, eval_files, settings, fingerprint)
        # a resumed run keeps the first run's settings and units, and takes this command's workers and executor
        work.use_run_settings(config.workers, config.executor)
        show = sys.stderr.isatty() if progress is None else progress
        if config.executor.kind == "slurm":
            from llm_modules.data.prepare.executors import submit_slurm

            return {"status": "submitted", "jobs": submit_slurm(work), "out": str(out)}
        return _run_here(work, show, stop_after, resumed)
    finally:
        if held is not None:
            held.close()


def _start(work: Work, config: PrepareConfig, files: list[SourceFile], eval_files: list[SourceFile],
           settings: dict, fingerprint: str) -> None:
    """A fresh run: an empty output with an unfinished manifest, and the work folder."""
    out = work.out
    if out.exists():
        M.remove_owned(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / M.MANIFEST, _manifest(config, settings, fingerprint, complete=False))
    table = None
    if eval_files:
        texts = (doc.text for f in eval_files for doc in f.documents())
        table = eval_ngrams(texts, config.decontamination.ngram, Processor(config, None).prepare_text)
    units = plan_units(files, max(1, int(config.executor.unit_mb * 1e6)))
    work.create(config, files, units, table)


def _run_here(work: Work, show: bool, stop_after: int | None, resumed: bool) -> dict[str, Any]:
    """Local or Ray: run the stages one after the other from this process, then finish."""
    from llm_modules.data.prepare import executors as X

    kind = work.config.executor.kind
    connected = X.connect_ray(work.config.executor.ray.address) if kind == "ray" else False
    start = time.perf_counter()
    try:
        for stage in X.STAGES:
            shards = len(read_plan(work)["shards"]) if stage == "write" else 0
            tasks = X.stage_tasks(work, stage, shards)
            t0 = time.perf_counter()
            with X.quiet_datatrove():  # its Ray executor warns, on every stage, that a local folder must be shared
                if kind == "ray":
                    executor = X.ray_stage(work, stage, tasks)
                else:
                    executor = X.local_stage(work, stage, tasks, stop_after if stage == "process" else None)
                with _progress(work, show and stage == "process"):
                    executor.run()
            missing = executor.get_incomplete_ranks(skip_completed=True)
            if missing:
                logs = Path(executor.logging_dir.path) / "logs"
                why = _why(logs, missing[0])
                raise ConfigError(f"data prepare: {len(missing)} of {tasks} {stage} task(s) failed{why}"
                                  f"; their logs are in {logs}; fix that and rerun the same command to retry them")
            if show:
                print(f"prepare: {stage}: {tasks} task(s) done in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    finally:
        work.add_elapsed(time.perf_counter() - start)
        if connected:
            import ray

            ray.shutdown()
    report = finish(work)
    report["status"] = "resumed" if resumed else "complete"
    return report


@contextlib.contextmanager
def _progress(work: Work, enabled: bool):
    """A progress bar of input bytes while the per-document stage runs, whatever runs its tasks: a
    thread watches the units being committed to the work folder."""
    if not enabled:
        yield
        return
    from tqdm import tqdm

    from llm_modules.data.prepare.records import is_done

    sizes = [u.end - u.start for u in work.units]
    bar = tqdm(total=sum(sizes) or None, unit="B", unit_scale=True, desc="prepare", file=sys.stderr,
               dynamic_ncols=True, mininterval=0.5)
    stop = threading.Event()
    done: set[int] = set()

    def watch() -> None:
        while True:
            stopping = stop.wait(0.5)
            for u in range(len(sizes)):
                if u not in done and is_done(work.units_dir, u):
                    done.add(u)
                    bar.update(sizes[u])
            if stopping:  # a last look after the stage ended, so the bar ends at what was committed
                return

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        yield
    finally:
        stop.set()
        watcher.join()
        bar.close()


def _why(logs: Path, rank: int) -> str:
    """The error a failed task logged last (its exception's message), as ``": MESSAGE"``."""
    try:
        lines = (logs / f"task_{rank:05d}.log").read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return ""
    errors = [line for line in lines if "| ERROR" in line]
    if not errors:
        return ""
    return ": " + errors[-1].split(" - ", 1)[-1].strip()


def finish(work: Work) -> dict[str, Any]:
    """Write ``report.json`` and the complete manifest, remove the work folder; return the report."""
    config = work.config
    plan = read_plan(work)
    counts = Counts.from_dict(plan["counts"])
    info = work.run_info()
    elapsed = info["elapsed_s"] if config.executor.kind != "slurm" else time.time() - info["started"]
    active = {rule: True for rule in RULES}
    for rule in RULES[1:]:
        if rule == "decontamination":
            active[rule] = config.decontamination.enabled and (work.root / "eval.npy").is_file()
        else:
            active[rule] = config.section(rule).enabled
    shards = [{k: s[k] for k in ("name", "documents", "bytes")} for s in plan["shards"]]
    missing = [s["name"] for s in shards if not (work.out / s["name"]).is_file()]
    if missing:
        raise RuntimeError(f"data prepare: shard {missing[0]} was not written; rerun the same command")
    report = build_report(counts, elapsed_s=elapsed, shards=shards, workers=config.workers, active=active)
    report["pii_enabled"] = {k: config.pii.enabled and k in config.pii.kinds for k in PII_KINDS}
    report["executor"] = config.executor.kind
    warning = empty_output_warning(report)
    report["warnings"] = [warning] if warning else []
    manifest = M.read_manifest(work.out) or {}
    write_json_atomic(work.out / M.REPORT, report)
    write_json_atomic(work.out / M.MANIFEST, {**manifest, "complete": True, "shards": shards})
    shutil.rmtree(work.root, ignore_errors=True)
    return report


def _manifest(config: PrepareConfig, settings: dict, fingerprint: str, complete: bool) -> dict[str, Any]:
    return {"format": M.FORMAT, "version": M.VERSION, "complete": complete, "config": settings,
            "inputs": list(config.inputs), "eval_paths": list(config.decontamination.eval_paths),
            "inputs_fingerprint": fingerprint}


# ---- helpers ----------------------------------------------------------------------------------------------


def _jsonable(data: Any) -> Any:
    import json

    return json.loads(json.dumps(data))


def _read_report(out: Path) -> dict[str, Any]:
    import json

    try:
        return json.loads((out / M.REPORT).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        raise ConfigError(f"--out {str(out)!r} is marked complete but its {M.REPORT} is missing or damaged; "
                          "rerun with --overwrite to rebuild it") from None


def _check_not_inside_inputs(out: Path, inputs: list[str]) -> None:
    target = out.resolve()
    for i, entry in enumerate(inputs):
        p = Path(os.path.expandvars(os.path.expanduser(str(entry))))
        if p.is_dir():
            root = p.resolve()
            if target == root or root in target.parents:
                raise ConfigError(f"--out {str(out)!r} is inside input inputs[{i}] {str(entry)!r}: the output would be "
                                  "read back as input; choose an output directory outside the inputs")
