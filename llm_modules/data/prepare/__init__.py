"""``llm-modules data prepare``: clean a corpus with one command and see what was removed and why.

Stages, in the order a document meets them (the report charges each dropped document to the first
rule that fires; why this order: ``pipeline``)::

    normalize -> empty -> binary -> length -> symbol_ratio -> boilerplate -> duplicate_lines -> top_ngrams
      -> duplicate_ngrams -> PII scrubbing -> exact_duplicate -> decontamination -> near_duplicate

One module per concern: ``config`` (the settings tree), ``normalize``, ``filters`` (quality rules),
``pii``, ``words`` (stable word n-gram hashes), ``minhash`` (near duplicates), ``decontam``,
``processor`` (the per-document stages), ``units`` (how the inputs are shared out), ``records``
(each unit's results), ``select`` (the duplicate stages and the shard layout), ``write``, ``shards``,
``state`` (atomic files), ``work`` (the work folder), ``manifest`` (what a prepared directory is),
``report``, ``steps`` (the stages as datatrove pipeline steps), ``executors`` (local, Slurm, Ray),
``slurm_task`` and ``pipeline`` (the run).

    from llm_modules.data.prepare import PrepareConfig, prepare
    report = prepare(PrepareConfig(inputs=["raw/"], out="prepared/web"))

A prepared directory is a data path of its own: ``TextDataModule(paths=["prepared/web"])`` reads
exactly its shards (see ``data.sources``).
"""

from llm_modules.data.prepare.config import (
           RULES,
           PrepareConfig,
           from_dict,
           load_yaml,
           set_value,
)
from llm_modules.data.prepare.manifest import MANIFEST, prepared_shards
from llm_modules.data.prepare.pipeline import prepare
from llm_modules.data.prepare.report import format_table

__all__ = ["MANIFEST", "RULES", "PrepareConfig", "format_table", "from_dict", "load_yaml", "prepare",
           "prepared_shards", "set_value"]
