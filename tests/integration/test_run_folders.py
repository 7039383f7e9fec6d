"""Run folders (llm_modules.cli.run_folder): claimed atomically, locked while a run writes them, one
run per metrics.csv after a resume, evaluation kept apart, nothing left by a run that never stepped,
and ``--trainer.default_root_dir`` honoured."""

from __future__ import annotations

import csv
import json
import os
import shutil
import threading
from pathlib import Path

import pytest
import torch

from llm_modules.cli import main
from llm_modules.cli.run_folder import LOCK, claim_version
from llm_modules.file_lock import hold

from _fit_helpers import CONFIGS, launch, metric_rows, tiny

QUICKSTART = CONFIGS / "quickstart.yaml"


def fit_args(corpus: Path, cache: Path, *extra: str, steps: int = 8) -> list[str]:
    """Validation and a checkpoint every 3 steps, every step logged."""
    return ["fit", *tiny(QUICKSTART, corpus, cache, "--trainer.val_check_interval", "3",
                         "--trainer.log_every_n_steps", "1", "--checkpoint.every_n_train_steps", "3",
                         "--data.init_args.samples_per_epoch", "40", *extra, steps=steps)]


def rows(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def without_timings(table: list[dict[str, str]]) -> list[dict[str, str]]:
    return [{k: v for k, v in row.items() if not k.startswith("perf/")} for row in table]


def test_racing_claims_get_distinct_folders_after_the_highest(tmp_path):
    (tmp_path / "version_3").mkdir()
    (tmp_path / "version_x").mkdir()
    got, start = [], threading.Barrier(16)

    def claim():
        start.wait()
        got.append(claim_version(tmp_path))

    threads = [threading.Thread(target=claim) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sorted(got) == list(range(4, 20))


BARRIER = '''
import os, time
from pathlib import Path
from lightning.pytorch.profilers import PassThroughProfiler

class Barrier(PassThroughProfiler):
    """The two runs wait for each other here: after the processes are set up, before any logger has
    written (Lightning sets up the profiler in between), so the runs are as close as they can be."""

    def __init__(self, folder: str):
        super().__init__()
        self.folder = Path(folder)

    def setup(self, stage, local_rank=None, log_dir=None):
        super().setup(stage, local_rank, log_dir)
        (self.folder / f"ready-{os.getpid()}").touch()
        deadline = time.monotonic() + 120
        while len(list(self.folder.glob("ready-*"))) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
'''


def warm_up(corpus: Path, cache: Path, folder: Path, monkeypatch) -> None:
    """One step in ``folder`` (not the folder pytest runs in): the tokenizer and the token cache
    are then ready, so the runs the test times start at once."""
    monkeypatch.chdir(folder)
    assert main(fit_args(corpus, cache, steps=1)) == 0


def test_two_fits_started_together_into_one_folder_get_a_folder_each(corpus, cache, tmp_path, monkeypatch):
    warm_up(corpus, cache, tmp_path, monkeypatch)
    work, meet = tmp_path / "work", tmp_path / "meet"
    work.mkdir(), meet.mkdir()
    (tmp_path / "barrier.py").write_text(BARRIER)
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))}
    barrier = f'{{"class_path": "barrier.Barrier", "init_args": {{"folder": "{meet}"}}}}'
    args = fit_args(corpus, cache, "--trainer.profiler", barrier, steps=4)
    procs = [launch(args, work, env=env, wait=False) for _ in range(2)]
    try:
        outs = [p.communicate(timeout=300)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-3000:] for o in outs)
    folders = sorted(p.name for p in (work / "runs" / "llm").iterdir())
    assert folders == ["version_0", "version_1"]
    for name in folders:
        run = work / "runs" / "llm" / name
        assert [s for s, _ in metric_rows(run, "train/loss")] == [0, 1, 2, 3], name  # one run's rows, once
        assert len(list(run.glob("events.out.tfevents.*"))) == 1, name
        assert torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu",
                          weights_only=True)["global_step"] == 3  # the last multiple of 3


def test_resume_reads_as_one_run_is_refused_while_held_and_honours_default_root_dir(
        corpus, cache, tmp_path, monkeypatch, capsys):
    """A run in ``out/`` (default_root_dir) whose last.ckpt is from step 3 while its metrics.csv goes
    on to step 7, as when a run is killed between checkpoints. Resumed: the rows after step 3 are
    replaced by the resumed run's, which equal them (exact resume); while another process holds the
    folder, the resume is refused and changes nothing. Evaluation goes to out/llm/eval/."""
    monkeypatch.chdir(tmp_path)
    out = ["--trainer.default_root_dir", "out"]
    assert main(fit_args(corpus, cache, *out)) == 0
    assert not (tmp_path / "runs").exists(), "default_root_dir moves the logs"
    run = tmp_path / "out" / "llm" / "version_0"
    uninterrupted = rows(run)
    (step3,) = (run / "checkpoints").glob("step3-*.ckpt")
    shutil.copyfile(step3, run / "checkpoints" / "last.ckpt")  # the killed run's last checkpoint
    capsys.readouterr()

    held = hold(run / LOCK)  # another run is writing the folder
    try:
        assert main(fit_args(corpus, cache, *out, "--ckpt_path", "last")) == 2
    finally:
        held.close()
    err = capsys.readouterr().err
    line = [x for x in err.splitlines() if "error:" in x]
    assert len(line) == 1 and "Traceback" not in err, err[-3000:]
    assert str(Path("out/llm/version_0")) in line[0] and f"(process {os.getpid()})" in line[0]
    assert rows(run) == uninterrupted and not (run / "config.resumed-1.yaml").exists()

    assert main(fit_args(corpus, cache, *out, "--ckpt_path", "last")) == 0
    resumed = rows(run)
    assert without_timings(resumed) == without_timings(uninterrupted)
    for key in ("train/loss", "val/loss"):
        steps = [s for s, _ in metric_rows(run, key)]
        assert steps == sorted(set(steps)), (key, steps)  # strictly increasing: no step twice
    assert sorted(p.name for p in (tmp_path / "out" / "llm").iterdir()) == ["version_0"]

    assert main(["validate", "--ckpt_path", "last", *out,  # the training run's last.ckpt, not an eval folder
                 "--data.paths", f"[{corpus / 'mod01.py'}]", "--trainer.enable_progress_bar", "false"]) == 0
    assert sorted(p.name for p in (tmp_path / "out" / "llm").iterdir()) == ["eval", "version_0"]
    assert metric_rows(tmp_path / "out" / "llm" / "eval" / "version_0", "val/loss")
    assert not (tmp_path / "runs").exists()


FAILING = '''
from lightning.pytorch.callbacks import Callback

class FailAt(Callback):
    """Raise before optimizer step ``step`` + 1 (0: before the first), as a data error would."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            raise RuntimeError("broken batch")


class FailValidating(Callback):
    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        raise RuntimeError("broken batch")
'''


@pytest.mark.parametrize("step", [0, 2])
def test_a_fit_that_fails_before_its_first_step_leaves_no_folder(step, corpus, cache, tmp_path, monkeypatch):
    """Failing at step 0 (after the config, hparams, event file and the step-0 validation were written)
    leaves nothing; failing at step 2 keeps the run's folder. An older run and a file the user put in
    runs/ are untouched either way."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "failing.py").write_text(FAILING)
    old = tmp_path / "runs" / "llm" / "version_0"
    old.mkdir(parents=True)
    (old / "metrics.csv").write_text("step\n")
    (tmp_path / "runs" / "notes.txt").write_text("mine")
    failing = f'{{"class_path": "failing.FailAt", "init_args": {{"step": {step}}}}}'
    with pytest.raises(RuntimeError, match="broken batch"):
        main(fit_args(corpus, cache, f"--trainer.callbacks+={failing}", steps=4))
    folders = sorted(p.name for p in (tmp_path / "runs" / "llm").iterdir())
    assert folders == (["version_0"] if step == 0 else ["version_0", "version_1"])
    assert (old / "metrics.csv").read_text() == "step\n" and (tmp_path / "runs" / "notes.txt").is_file()


def test_a_failed_evaluation_leaves_nothing_and_the_parents_it_made_go_too(corpus, cache, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "failing.py").write_text(FAILING)
    assert main(fit_args(corpus, cache, steps=1)) == 0
    ckpt = tmp_path / "runs" / "llm" / "version_0" / "checkpoints" / "last.ckpt"
    failing = '{"class_path": "failing.FailValidating"}'
    with pytest.raises(RuntimeError, match="broken batch"):
        main(["validate", "--ckpt_path", str(ckpt), "--data.paths", f"[{corpus / 'mod01.py'}]",
              f"--trainer.callbacks+={failing}", "--trainer.enable_progress_bar", "false"])
    assert sorted(p.name for p in (tmp_path / "runs" / "llm").iterdir()) == ["version_0"]


WHERE = '''
import json
from pathlib import Path
from lightning.pytorch.callbacks import Callback

class Where(Callback):
    """Each rank writes which folder its loggers name."""

    def __init__(self, out: str):
        self.out = Path(out)

    def on_train_start(self, trainer, pl_module):
        dirs = [logger.log_dir for logger in trainer.loggers]
        (self.out / f"rank{trainer.global_rank}.json").write_text(json.dumps(dirs))
'''


def test_under_ddp_rank_zero_claims_and_every_rank_names_its_folder(corpus, cache, tmp_path, monkeypatch):
    """Two processes: one new folder, after an older run's, and the second rank's loggers name it
    too (on their own they would list the folder after rank 0 made it and take the next number)."""
    from _fit_helpers import free_port

    warm_up(corpus, cache, tmp_path, monkeypatch)
    work = tmp_path / "work"
    (work / "runs" / "llm" / "version_0").mkdir(parents=True)
    (tmp_path / "where.py").write_text(WHERE)
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])),
           "MASTER_PORT": str(free_port())}
    where = f'{{"class_path": "where.Where", "init_args": {{"out": "{tmp_path}"}}}}'
    launch(fit_args(corpus, cache, "--trainer.strategy", "ddp", "--trainer.devices", "2",
                    "--trainer.accelerator", "cpu", "--trainer.num_sanity_val_steps", "0",
                    f"--trainer.callbacks+={where}", steps=1), work, env=env, timeout=300)
    assert sorted(p.name for p in (work / "runs" / "llm").iterdir()) == ["version_0", "version_1"]
    expected = [str(Path("runs") / "llm" / "version_1")] * 2
    for rank in (0, 1):
        assert json.loads((tmp_path / f"rank{rank}.json").read_text()) == expected, rank
    assert (work / "runs" / "llm" / "version_1" / "checkpoints" / "last.ckpt").is_file()
