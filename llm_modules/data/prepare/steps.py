"""The preparation as datatrove pipeline steps.

Three pipelines, each run by a datatrove executor (``executors``) over the work folder (``work``):

- **process** (many tasks): :class:`ReadUnits` -> :class:`DocumentStages` -> :class:`CommitUnits`.
  The reader yields each unit's documents as datatrove ``Document`` objects and then an end-of-unit
  marker; the stages attach each document's :class:`~llm_modules.data.prepare.processor.Result` (a
  dropped document travels on, marked, since the report counts it); the committer writes each unit's
  records in one rename.
- **select** (one task): :class:`SelectDocuments`, the keep-first duplicate stages and the shard
  layout (``select``).
- **write** (many tasks): :class:`WriteShards` (``write``).

Why our own steps rather than datatrove's filters and dedup blocks: see the tutorial "Prepare data"
and ``benchmarks/prepare_datatrove_steps.py``; datatrove supplies the executors, task sharding,
per-task logs, statistics and completion records that make a stopped job resumable.
"""

from __future__ import annotations

from datatrove.data import Document
from datatrove.pipeline.base import PipelineStep

from llm_modules.data.prepare.processor import TIMED, Processor
from llm_modules.data.prepare.records import UnitBuilder, is_done
from llm_modules.data.prepare.select import read_plan, select
from llm_modules.data.prepare.units import UnitReader
from llm_modules.data.prepare.work import Work
from llm_modules.data.prepare.write import write_shard

UNIT_END = "unit_end"  # metadata key of the end-of-unit marker: the unit's line count
_committed = [0]  # documents committed by this process in this run (``CommitUnits.stop_after``)


class _PrepareStep(PipelineStep):
    """A step over the work folder of output ``out`` (a plain path string, so the step pickles small
    for Ray and the executors' worker processes)."""

    type = "llm-modules data prepare"

    def __init__(self, out: str):
        super().__init__()
        self.out = str(out)

    def _work(self) -> Work:
        return Work(self.out)


class ReadUnits(_PrepareStep):
    """Reader: the documents of this task's units (every ``world_size``-th, from ``rank``) that are
    not committed yet."""

    name = "read units"

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        work = self._work()
        for u in range(rank, len(work.units), world_size):
            if is_done(work.units_dir, u):
                self.stat_update("units already done")
                continue
            unit = work.units[u]
            reader = UnitReader(work.files[unit.file], unit)
            for number, text in reader:
                self.stat_update("documents")
                yield Document(text=text, id=f"{u}:{number}", metadata={"unit": u, "number": number})
            yield Document(text="", id=f"{u}:end", metadata={"unit": u, UNIT_END: reader.lines})


class DocumentStages(_PrepareStep):
    """normalize -> quality filters -> PII scrubbing -> content hash -> decontamination -> MinHash,
    per document (``processor``)."""

    name = "normalize, filter, scrub, fingerprint"

    def run(self, data, rank: int = 0, world_size: int = 1):
        processor = None
        for doc in data:
            if UNIT_END not in doc.metadata:
                if processor is None:
                    work = self._work()
                    processor = Processor(work.config, work.eval_table())
                with self.track_time():
                    result = processor(doc.text)
                doc.metadata["result"] = result
                self.stat_update(result.dropped or "passed")
            yield doc


class CommitUnits(_PrepareStep):
    """Writes each unit's records (``records``) when its end marker arrives.

    ``stop_after`` (tests; in-process tasks): raise KeyboardInterrupt once the tasks of this run have
    handled that many documents, as a kill would."""

    name = "commit units"

    def __init__(self, out: str, stop_after: int | None = None):
        super().__init__(out)
        self.stop_after = stop_after
        _committed[0] = 0

    def run(self, data, rank: int = 0, world_size: int = 1):
        work = self._work()
        num_perm = work.config.near_duplicate.num_perm
        builder = UnitBuilder(num_perm)
        for doc in data:
            meta = doc.metadata
            if UNIT_END in meta:
                builder.commit(work.units_dir, meta["unit"], meta[UNIT_END])
                self.stat_update("units")
                builder = UnitBuilder(num_perm)
                continue
            builder.add(meta["number"], meta["result"], TIMED)
            _committed[0] += 1
            if self.stop_after is not None and _committed[0] >= self.stop_after:
                raise KeyboardInterrupt(f"stopped after {_committed[0]} documents (stop_after)")
        return
        yield  # a generator: datatrove drains it


class SelectDocuments(_PrepareStep):
    name = "select (exact duplicates, decontamination, near duplicates, shard layout)"

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        plan = select(self._work())
        self.stat_update("kept", value=plan["counts"]["kept_documents"])
        return
        yield


class WriteShards(_PrepareStep):
    name = "write shards"

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        work = self._work()
        plan = read_plan(work)
        for k in range(rank, len(plan["shards"]), world_size):
            write_shard(work, plan, k)
            self.stat_update("shards")
        return
        yield
