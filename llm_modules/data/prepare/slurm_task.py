"""What a Slurm array task runs: ``python -m llm_modules.data.prepare.slurm_task OUT STAGE``.

The stage is rebuilt from the work folder's JSON (``work``), never unpickled; datatrove's executor
then reads the array task id and runs that rank. ``finish`` (a one-task job after the last stage)
writes ``report.json`` and the complete manifest.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from llm_modules.data.prepare.executors import slurm_stage, slurm_tasks
    from llm_modules.data.prepare.pipeline import finish
    from llm_modules.data.prepare.work import Work

    out, stage = argv if argv is not None else sys.argv[1:]
    work = Work(out)
    if stage == "finish":
        finish(work)
    else:
        slurm_stage(work, stage, slurm_tasks(work, stage)).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
