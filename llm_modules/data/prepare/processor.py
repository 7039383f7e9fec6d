"""The per-document stages: everything about a document that does not depend on other documents.

Why split this way: normalisation, the quality filters, PII scrubbing, the content hash, the
decontamination check and the MinHash signature are pure functions of one document's text, so they
run in any task of the per-document stage (``steps.ProcessUnits``) in any order, while the two
stages that remember earlier documents (exact and near duplicates) run once, in input order
(``select``). The result is therefore the same for any executor and number of workers, and for a
run that was interrupted and resumed.

A :class:`Result` carries what the later stages need (``records`` stores it): the rule that dropped
the document (or None), its final text (JSON-encoded), its PII counts, a 128-bit content hash,
whether it is contaminated and its MinHash signature, plus the seconds each stage took (for the
benchmark's per-stage table).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field

import numpy as np

from llm_modules.data.prepare.config import PrepareConfig
from llm_modules.data.prepare.decontam import contaminated
from llm_modules.data.prepare.filters import Doc, build_rules
from llm_modules.data.prepare.minhash import MinHasher
from llm_modules.data.prepare.normalize import normalize
from llm_modules.data.prepare.pii import Scrubber

#: stages timed per document (main-process stages are added by the pipeline)
TIMED = ("normalize", "filters", "pii", "hash", "decontamination", "minhash")


@dataclass(slots=True)
class Result:
    chars: int  # characters of the input document
    nbytes: int  # UTF-8 bytes of the input document
    dropped: str | None = None  # the per-document rule that fired, if any
    text_json: bytes | None = None  # the final text as a JSON string (``records.output_line`` makes the line)
    out_chars: int = 0  # characters of the final text
    out_bytes: int = 0  # UTF-8 bytes of the final text
    pii: dict[str, int] = field(default_factory=dict)
    digest: bytes | None = None
    contaminated: bool = False
    signature: np.ndarray | None = None
    times: tuple[float, ...] = ()


class Processor:
    """Runs the per-document stages of one config (built once per process)."""

    def __init__(self, config: PrepareConfig, eval_table: np.ndarray | None = None):
        self.config = config
        self.rules = build_rules(config.filters)
        self.scrub = Scrubber(config.pii) if config.pii.enabled and config.pii.kinds else None
        self.exact = config.exact_duplicate.enabled
        decon = config.decontamination
        self.eval_table = eval_table if (decon.enabled and eval_table is not None and len(eval_table)) else None
        self.eval_n = decon.ngram
        nd = config.near_duplicate
        self.minhash = MinHasher(nd.num_perm, nd.ngram, nd.seed) if nd.enabled else None

    def prepare_text(self, text: str) -> str:
        """Normalisation and PII scrubbing alone: what evaluation texts get before decontamination."""
        text = normalize(text, self.config.normalize)
        return self.scrub(text)[0] if self.scrub is not None else text

    def __call__(self, raw: str) -> Result:
        clock = time.perf_counter
        t0 = clock()
        r = Result(len(raw), len(raw.encode("utf-8")))
        text = normalize(raw, self.config.normalize)
        t1 = clock()
        if not text:
            r.dropped, r.times = "empty", (t1 - t0, 0.0, 0.0, 0.0, 0.0, 0.0)
            return r
        view = Doc(text)
        for rule in self.rules:
            if rule.drops(view):
                r.dropped = rule.name
                break
        t2 = clock()
        if r.dropped is not None:
            r.times = (t1 - t0, t2 - t1, 0.0, 0.0, 0.0, 0.0)
            return r
        if self.scrub is not None:
            scrubbed, r.pii = self.scrub(text)
            if r.pii:
                text, view = scrubbed, Doc(scrubbed)
        t3 = clock()
        encoded = text.encode("utf-8")
        r.out_chars, r.out_bytes = len(text), len(encoded)
        r.text_json = json.dumps(text, ensure_ascii=False).encode("utf-8")
        if self.exact:
            r.digest = hashlib.blake2b(encoded, digest_size=16).digest()
        t4 = clock()
        if self.eval_table is not None:
            r.contaminated = contaminated(view.hashes, self.eval_table, self.eval_n)
        t5 = clock()
        if self.minhash is not None and not r.contaminated:
            r.signature = self.minhash.signature(view.hashes)
        t6 = clock()
        r.times = (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5)
        return r
