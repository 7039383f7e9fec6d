"""The run's work folder, ``OUT/.prepare-state``: everything a task on any machine needs, as plain files.

Why files rather than objects handed to tasks: a Slurm job starts a fresh process on another node
from a submission script, and a resumed run starts from a new command; both must see the same
inputs, units and settings as the first run. So the driver writes, once, ``config.json`` (the whole
settings tree), ``plan.json`` (the input files and their units) and ``eval.npy`` (the evaluation
n-gram table), and every stage reads them; tasks write their results under ``units/`` and
``select/``, and datatrove its per-task logs and completion records under ``logs/STAGE``. The folder
goes away when the preparation completes. Nothing here is pickled.
"""

from __future__ import annotations

import json
import time
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from llm_modules.data.prepare.config import ExecutorConfig, PrepareConfig, from_dict, to_dict
from llm_modules.data.prepare.state import STATE_DIR, write_json_atomic
from llm_modules.data.prepare.units import Unit
from llm_modules.data.sources import SourceFile


class Work:
    def __init__(self, out: str | Path):
        self.out = Path(out)
        self.root = self.out / STATE_DIR
        self.units_dir = self.root / "units"
        self.select_dir = self.root / "select"

    def logs(self, stage: str) -> Path:
        return self.root / "logs" / stage

    # ---- written once by the driver --------------------------------------------------------------

    def create(self, config: PrepareConfig, files: list[SourceFile], units: list[Unit],
               eval_table: np.ndarray | None) -> None:
        self.units_dir.mkdir(parents=True, exist_ok=True)
        self.select_dir.mkdir(exist_ok=True)
        if eval_table is not None:
            np.save(self.root / "eval.npy", eval_table)
        plan = {"files": [{"path": str(f.path), "source_id": f.source_id, "kind": f.kind, "field": f.field,
                           "text_field": f.text_field} for f in files],
                "units": [[u.file, u.start, u.end] for u in units]}
        write_json_atomic(self.root / "plan.json", plan)
        write_json_atomic(self.root / "run.json", {"started": time.time(), "elapsed_s": 0.0})
        write_json_atomic(self.root / "config.json", to_dict(config))  # last: its presence means "created"

    def exists(self) -> bool:
        return (self.root / "config.json").is_file()

    def use_run_settings(self, workers: int, executor: ExecutorConfig) -> None:
        """This command's worker count and executor over the stored settings: they do not change the
        output, so a run resumed elsewhere (Slurm after local, more workers) may differ in them."""
        stored = to_dict(self.config)
        stored["workers"] = workers
        stored["executor"] = to_dict(executor)
        write_json_atomic(self.root / "config.json", stored)
        self.__dict__.pop("config", None)  # read again by the next ``config``

    # ---- read by every task ----------------------------------------------------------------------

    @cached_property
    def config(self) -> PrepareConfig:
        return from_dict(json.loads((self.root / "config.json").read_text(encoding="utf-8")))

    @cached_property
    def _plan(self) -> dict[str, Any]:
        return json.loads((self.root / "plan.json").read_text(encoding="utf-8"))

    @cached_property
    def files(self) -> list[SourceFile]:
        return [SourceFile(Path(f["path"]), f["source_id"], f["kind"], f["field"], f["text_field"])
                for f in self._plan["files"]]

    @cached_property
    def units(self) -> list[Unit]:
        return [Unit(*u) for u in self._plan["units"]]

    def eval_table(self) -> np.ndarray | None:
        path = self.root / "eval.npy"
        return np.load(path, allow_pickle=False) if path.is_file() else None

    # ---- the driver's clock (time spent across resumed runs) ---------------------------------------

    def run_info(self) -> dict[str, Any]:
        return json.loads((self.root / "run.json").read_text(encoding="utf-8"))

    def add_elapsed(self, seconds: float) -> None:
        info = self.run_info()
        info["elapsed_s"] = info.get("elapsed_s", 0.0) + seconds
        write_json_atomic(self.root / "run.json", info)
