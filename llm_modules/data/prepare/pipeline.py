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

Only the two duplicate stages depend on earlier documents; everything else is computed per document
(``processor``), optionally in ``workers`` processes, and the main process consumes the results in
input order. The output is therefore identical for any number of workers.

Resume: every ``output.checkpoint_every`` input documents, and whenever a shard is closed, the
open shard and the record logs (``state``) are fsynced and ``state.json`` is replaced atomically with
the input position, the counters and the committed lengths. Rerunning the same command after an
interrupt (Ctrl-C, a kill, a crash) truncates back to that checkpoint, replays the logs and continues;
the shards and the report's counts are the same as an uninterrupted run's.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import sys
import time
from collections import deque
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from llm_modules.data.prepare import manifest as M
from llm_modules.data.prepare.config import (
    PII_KINDS,
    RULES,
    PrepareConfig,
    semantic_dict,
)
from llm_modules.data.prepare.decontam import eval_ngrams
from llm_modules.data.prepare.minhash import LSHIndex
from llm_modules.data.prepare.processor import (
    TIMED,
    Processor,
    Result,
    init_worker,
    run_in_worker,
)
from llm_modules.data.prepare.report import Counts, build_report, empty_output_warning
from llm_modules.data.prepare.shards import ShardWriter
from llm_modules.data.prepare.state import (
    STATE_DIR,
    RecordLog,
    read_state,
    write_json_atomic,
)
from llm_modules.data.sources import SourceFile, inputs_fingerprint, resolve_paths
from llm_modules.registry import ConfigError

_DIGEST = 16  # bytes of the exact-duplicate content hash
_BATCH = 32  # documents per task sent to a worker
_AHEAD = 4  # tasks in flight per worker (bounds memory: the input is not read ahead without limit)


def prepare(config: PrepareConfig, *, overwrite: bool = False, progress: bool | None = None,
            stop_after: int | None = None) -> dict[str, Any]:
    """Run (or resume, or reuse) the preparation ``config`` describes; return its report.

    ``progress``: show a progress bar on stderr (default: when stderr is a terminal).
    ``stop_after``: for tests: raise KeyboardInterrupt after this many input documents of this run,
    without a final checkpoint, as a kill would.
    The returned report has ``"status"``: ``"complete"`` (ran to the end now), ``"resumed"`` or
    ``"already complete"`` (nothing to do).
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
        run = _Run(config, out, files, eval_files, settings, fingerprint, status == "resume")
        return run.execute(progress=sys.stderr.isatty() if progress is None else progress, stop_after=stop_after)
    finally:
        if held is not None:
            held.close()


class _Run:
    def __init__(self, config: PrepareConfig, out: Path, files: list[SourceFile], eval_files: list[SourceFile],
                 settings: dict, fingerprint: str, resume: bool):
        self.config, self.out, self.files, self.eval_files = config, out, files, eval_files
        self.settings, self.fingerprint = settings, fingerprint
        self.state_dir = out / STATE_DIR
        state = read_state(self.state_dir) if resume else None
        if state is None:  # fresh, or stopped before its first checkpoint
            if out.exists():
                M.remove_owned(out)
            out.mkdir(parents=True, exist_ok=True)
            write_json_atomic(out / M.MANIFEST, self._manifest(complete=False))
            self.state_dir.mkdir()
        self.resumed = state is not None
        state = state or {}
        nd = config.near_duplicate
        self.counts = Counts.from_dict(state["counts"]) if state else Counts()
        self.position = tuple(state.get("position", (0, 0)))
        self.elapsed_before = float(state.get("elapsed_s", 0.0))
        try:
            self.writer = ShardWriter(out, int(config.output.shard_mb * 1e6), config.output.shard_docs,
                                      state.get("writer"))
            self.exact_log = RecordLog(self.state_dir / "exact.bin", _DIGEST, state.get("exact_records", 0))
            self.sig_log = RecordLog(self.state_dir / "signatures.bin", 4 * nd.num_perm,
                                     state.get("signature_records", 0))
        except RuntimeError as err:
            raise ConfigError(f"--out {str(out)!r}: {err}; its files were changed after the run stopped: rerun "
                              "with --overwrite to start over") from None
        self.seen: set[bytes] = set()
        self.index = LSHIndex(nd.num_perm, nd.threshold, nd.bands, nd.rows, nd.verify) if nd.enabled else None
        self._replay_logs()

    # ---- setup --------------------------------------------------------------------------------------------

    def _manifest(self, complete: bool, **extra: Any) -> dict[str, Any]:
        return {"format": M.FORMAT, "version": M.VERSION, "complete": complete, "config": self.settings,
                "inputs": list(self.config.inputs), "eval_paths": list(self.config.decontamination.eval_paths),
                "inputs_fingerprint": self.fingerprint, **extra}

    def _replay_logs(self) -> None:
        data = self.exact_log.records()
        self.seen = {data[i:i + _DIGEST] for i in range(0, len(data), _DIGEST)}
        if self.index is not None and self.sig_log.count:
            sigs = np.frombuffer(self.sig_log.records(), dtype=np.uint32)
            for sig in sigs.reshape(-1, self.config.near_duplicate.num_perm):
                self.index.add(sig)

    def _eval_table(self, processor: Processor) -> np.ndarray | None:
        if not self.eval_files:
            return None
        texts = (doc.text for f in self.eval_files for doc in f.documents())
        return eval_ngrams(texts, self.config.decontamination.ngram, processor.prepare_text)

    def _items(self) -> Iterator[tuple[int, int, str, str]]:
        start_file, start_doc = self.position
        for fi in range(start_file, len(self.files)):
            skip = start_doc if fi == start_file else 0
            for di, doc in enumerate(self.files[fi].documents(screen=False)):  # the binary rule judges
                if di >= skip:
                    yield fi, di, doc.source_id, doc.text

    def _results(self, processor: Processor, pool) -> Iterator[Result]:
        items = self._items()
        if pool is None:
            yield from map(processor, items)
            return
        pending: deque = deque()
        ahead = _AHEAD * self.config.workers
        while True:
            batch = list(islice(items, _BATCH))
            if batch:
                pending.append(pool.apply_async(run_in_worker, (batch,)))
            if pending and (len(pending) >= ahead or not batch):
                yield from pending.popleft().get()
            if not batch and not pending:
                return

    # ---- the run ----------------------------------------------------------------------------------------

    def execute(self, progress: bool, stop_after: int | None) -> dict[str, Any]:
        start = time.perf_counter()
        self._start = start
        processor = Processor(self.config, None)
        table = self._eval_table(processor)
        processor = Processor(self.config, table)
        if not self.resumed:
            self._checkpoint()
        pool = None
        if self.config.workers > 1:
            # spawn, never fork: a fork of a process whose other threads hold locks (torch's thread
            # pools, a test runner's) can leave the child waiting forever on a lock nobody releases
            ctx = multiprocessing.get_context("spawn")
            pool = ctx.Pool(self.config.workers, initializer=init_worker, initargs=(self.config, table))
        bar = _progress_bar(progress, self.files, self.counts.input_bytes)
        try:
            self._loop(self._results(processor, pool), bar, stop_after)
        except BaseException:
            self._abandon()
            raise
        finally:
            if pool is not None:
                pool.terminate()
                pool.join()
            if bar is not None:
                bar.close()
        return self._finish(time.perf_counter() - start)

    def _loop(self, results: Iterable[Result], bar, stop_after: int | None) -> None:
        c = self.counts
        dropped, pii, seconds = c.dropped, c.pii, c.stage_seconds
        exact = self.config.exact_duplicate.enabled
        index, seen, writer = self.index, self.seen, self.writer
        every = self.config.output.checkpoint_every
        since = 0
        clock = time.perf_counter
        main_time = 0.0
        for done, r in enumerate(results, start=1):
            t0 = clock()
            c.input_documents += 1
            c.input_chars += r.chars
            c.input_bytes += r.nbytes
            for name, t in zip(TIMED, r.times):
                seconds[name] = seconds.get(name, 0.0) + t
            rule = r.dropped
            if rule is None and exact:
                if r.digest in seen:
                    rule = "exact_duplicate"
                else:
                    seen.add(r.digest)
                    self.exact_log.append(r.digest)
            if rule is None and r.contaminated:
                rule = "decontamination"
            if rule is None and index is not None and r.signature is not None:
                keys = index.band_keys(r.signature)
                if index.is_duplicate(r.signature, keys):
                    rule = "near_duplicate"
                else:
                    index.add(r.signature, keys)
                    self.sig_log.append(r.signature.tobytes())
            if rule is not None:
                entry = dropped[rule]
                entry[0] += 1
                entry[1] += r.chars
            else:
                writer.write(r.line)
                c.kept_documents += 1
                c.kept_chars += r.out_chars
                c.kept_bytes += r.out_bytes
                for kind, n in r.pii.items():
                    pii[kind] += n
            self.position = (r.file, r.doc + 1)
            since += 1
            main_time += clock() - t0
            if writer.full():
                writer.rotate()
                since = every  # checkpoint at every shard
            if since >= every:
                seconds["dedup+write"] = seconds.get("dedup+write", 0.0) + main_time
                main_time = 0.0
                self._checkpoint()
                since = 0
            if bar is not None:
                bar.update(r.nbytes)
            if stop_after is not None and done >= stop_after:
                raise KeyboardInterrupt(f"stopped after {done} documents (stop_after)")
        seconds["dedup+write"] = seconds.get("dedup+write", 0.0) + main_time

    def _elapsed(self) -> float:
        return self.elapsed_before + (time.perf_counter() - self._start)

    def _checkpoint(self) -> None:
        self.writer.sync()
        self.exact_log.sync()
        self.sig_log.sync()
        write_json_atomic(self.state_dir / "state.json", {
            "version": 1, "position": list(self.position), "counts": self.counts.to_dict(),
            "writer": self.writer.state(), "exact_records": self.exact_log.count,
            "signature_records": self.sig_log.count, "elapsed_s": self._elapsed(),
        })

    def _abandon(self) -> None:
        """Interrupted: close files as they are; the last checkpoint stays the resume point."""
        self.writer.close()
        self.exact_log.close()
        self.sig_log.close()

    def _finish(self, session_s: float) -> dict[str, Any]:
        self.writer.finish()
        self.exact_log.close()
        self.sig_log.close()
        elapsed = self.elapsed_before + session_s
        cfg = self.config
        active = {rule: True for rule in RULES}
        for rule in RULES[1:]:
            if rule == "decontamination":
                active[rule] = cfg.decontamination.enabled and bool(self.eval_files)
            else:
                active[rule] = cfg.section(rule).enabled
        report = build_report(self.counts, elapsed_s=elapsed, shards=self.writer.shards, workers=cfg.workers,
                              active=active)
        report["pii_enabled"] = {k: cfg.pii.enabled and k in cfg.pii.kinds for k in PII_KINDS}
        warning = empty_output_warning(report)
        report["warnings"] = [warning] if warning else []
        write_json_atomic(self.out / M.REPORT, report)
        write_json_atomic(self.out / M.MANIFEST, self._manifest(complete=True, shards=self.writer.shards))
        shutil.rmtree(self.state_dir, ignore_errors=True)
        report["status"] = "resumed" if self.resumed else "complete"
        return report


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


def _progress_bar(enabled: bool, files: list[SourceFile], done_bytes: int):
    if not enabled:
        return None
    from tqdm import tqdm

    total = 0
    for f in files:
        try:
            total += f.stat()[0]
        except OSError:
            pass
    return tqdm(total=total or None, initial=min(done_bytes, total), unit="B", unit_scale=True,
                desc="prepare", file=sys.stderr, dynamic_ncols=True, mininterval=0.5)
