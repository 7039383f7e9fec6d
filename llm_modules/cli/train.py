"""``llm-modules fit | validate | test | predict``: LightningCLI with this project's defaults.

Before LightningCLI parses anything, plugins are imported (entry points, ``--plugins`` modules,
and a config file's ``plugins:`` list), so component names from plugins are valid in configs, and
a preset name given to ``--model.config`` is swapped for the preset's YAML file.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from importlib import resources
import warnings
from pathlib import Path
from typing import Any

import yaml
from lightning import LightningDataModule
from lightning.pytorch.accelerators import CPUAccelerator
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar, RichProgressBar
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities.exceptions import MisconfigurationException

import llm_modules.checkpoint_contents as checkpoint_contents
from llm_modules.config import preset_dir, preset_names
from llm_modules.data.prompts import GenerationWriter
from llm_modules.models import LanguageModel, import_kinds
from llm_modules.cli import outputs, parse_errors, trainer_checks
from llm_modules.cli.resume_last import newest_run_checkpoint, resolve_last
from llm_modules.cli.run_folder import DEFAULT_NAME, DEFAULT_SAVE_DIR, RunFolder, logs_under_default_root_dir
from llm_modules.registry import ConfigError, load_plugins
from llm_modules.training.checkpoint_io import use_atomic_checkpoints
from llm_modules.evaluation.evaluate_at_end import (EvaluateAtEnd, EvaluateSection, callback_for, check_section,
                                                   check_strategy)
from llm_modules.training.host_memory import retain_freed_cpu_memory
from llm_modules.training.precision import announce
from llm_modules.training.preemption import Preemption
from llm_modules.training.resume import ExactResume
from llm_modules.training.strategies import register_strategy_names
from llm_modules.training.terminal import quiet_known_noise, tidy_callbacks
from llm_modules.training.throughput import ThroughputMonitor

SUBCOMMANDS = ("fit", "validate", "test", "predict")


class LLMCLI(LightningCLI):
    """LightningCLI whose defaults are the LLM recipe's: clipping at 1.0, TensorBoard + CSV logs,
    a rich progress bar, ``last.ckpt`` plus the best checkpoints by validation loss, written
    atomically and carrying the random state (exact resume); ``--ckpt_path last`` continues the
    newest run in its own folder (``resume_last``)."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--checkpoint.save_top_k", type=int, default=2, help="best checkpoints kept by val/loss")
        parser.add_argument("--checkpoint.every_n_train_steps", type=int | None, default=None,
                            help="also save every N steps (default: at each validation)")
        parser.add_argument("--retain_freed_cpu_memory", type=bool, default=True,
                            help="on CPU, keep freed tensor memory in the process for reuse instead of returning "
                                 "it to the system and faulting it back in every step (training.host_memory)")
        parser.add_argument("--evaluate", type=EvaluateSection | None, default=None,
                            help="fit: lm-eval tasks to evaluate the trained model on at the end "
                                 "(evaluation.evaluate_at_end)")

    def parse_arguments(self, parser, args) -> None:
        """A parse error is one line naming the option, the fix and the closest match (parse_errors),
        not jsonargparse's usage block and nested union dump; so are trainer settings and a
        ``--ckpt_path`` that Lightning would refuse later with a traceback (trainer_checks)."""
        with parse_errors.one_line(parser, getattr(self, "_subcommand_parsers", {}), args):
            super().parse_arguments(parser, args)
        config = self.config[self.config["subcommand"]] if self.config.get("subcommand") else self.config
        trainer_checks.check_trainer(config["trainer"])  # settings Lightning would refuse with a traceback
        trainer_checks.check_checkpoint_file(config.get("ckpt_path"))
        if self.config.get("subcommand") == "fit" and config.get("evaluate") is not None:
            check_section(config["evaluate"])  # a bad field, an unknown task: one line before anything is built

    def _parse_ckpt_path(self) -> None:
        """The checkpoint's hyper-parameters fill in the model, except ``evaluation`` when this run
        names metrics: which generation metrics to compute is a choice of the evaluating run (say,
        BLEU on a checkpoint trained without any), not a property of the weights. Likewise an
        ``init_from`` given here says where an adapter-only checkpoint's base is now (it may have
        moved since training; loading checks that it is the same base)."""
        sub = self.config.get("subcommand")
        init = self.config[sub].get("model", {}).get("init_args") if sub else None
        chosen = init.get("evaluation") if init is not None else None
        base = init.get("init_from") if init is not None else None
        super()._parse_ckpt_path()  # the file was checked in parse_arguments (trainer_checks)
        metrics = getattr(chosen, "metrics", None) if not isinstance(chosen, dict) else chosen.get("metrics")
        if metrics:
            self.config[sub]["model"]["init_args"]["evaluation"] = chosen
        if base and sub and self.config[sub]["model"]["init_args"].get("init_from"):
            self.config[sub]["model"]["init_args"]["init_from"] = base

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        logs_under_default_root_dir(config["trainer"])  # --trainer.default_root_dir moves ./runs (run_folder)

    def _run_subcommand(self, subcommand: str) -> None:
        """A run that fails before its first step leaves no run folder behind; the folder's lock is
        released when the command ends (``run_folder``)."""
        folder = getattr(self, "run_folder", None)
        try:
            super()._run_subcommand(subcommand)
        except BaseException:
            if folder is not None:
                folder.discard_if_unused()
            raise
        finally:
            if folder is not None:
                folder.release()

    def instantiate_classes(self) -> None:
        """Surface a configuration error of ours as itself, not wrapped in the parser's type errors;
        Lightning's refusals of a setting are one line too."""
        try:
            super().instantiate_classes()
        except MisconfigurationException as err:  # Lightning's own refusals of a setting
            config = self.config[self.subcommand] if self.subcommand else self.config
            trainer_checks.check_devices(config["trainer"])  # GPUs the machine lacks: say so, and the fix
            raise ConfigError(" ".join(str(err).split())) from None
        except ValueError as err:
            cause = _config_error_in(err)
            if cause is None:
                raise
            raise cause from None

    def instantiate_trainer(self, **kwargs: Any):
        config = self.config[self.subcommand] if self.subcommand else self.config
        checkpoint = config.get("checkpoint", {}) or {}
        announce(config["trainer"].get("precision"), config["trainer"].get("accelerator"))
        # Callbacks passed here replace ``trainer.callbacks`` in LightningCLI, so start from the
        # user's: each default below is added only when the user gave none of its kind.
        init = self.config_init[self.subcommand] if self.subcommand else self.config_init
        given = init["trainer"].get("callbacks") or []
        extra = kwargs.setdefault("callbacks", list(given) if isinstance(given, list) else [given])
        output = getattr(self.datamodule, "output", None)
        if self.subcommand == "predict" and output and not any(isinstance(c, GenerationWriter) for c in extra):
            outputs.check_file(output, "--data.output", getattr(self.datamodule, "overwrite", False))  # before any work
            extra.append(GenerationWriter(output))  # a PromptDataModule's generations go to its output file
        evaluate = callback_for(config.get("evaluate")) if self.subcommand == "fit" else None
        if evaluate is not None and not any(isinstance(c, EvaluateAtEnd) for c in extra):
            extra.append(evaluate)  # lm-eval tasks on the trained model when fit ends (rank zero)
        if not any(isinstance(c, ThroughputMonitor) for c in extra):
            extra.append(ThroughputMonitor())
        if not any(isinstance(c, ExactResume) for c in extra):
            extra.append(ExactResume())  # random state in every checkpoint, restored on resume
        if not any(isinstance(c, Preemption) for c in extra):
            extra.append(Preemption())  # SIGTERM/SIGINT: save last.ckpt at the step's end, exit 143/130
        if config["trainer"].get("enable_progress_bar") is not False and not any(
            isinstance(c, ProgressBar) for c in extra
        ):
            extra.append(RichProgressBar())
        if not any(isinstance(c, ModelCheckpoint) for c in extra):
            extra.append(
                ModelCheckpoint(
                    monitor="val/loss", mode="min", save_last=True,
                    save_top_k=checkpoint.get("save_top_k", 2),
                    filename="step{step}-val{val/loss:.3f}", auto_insert_metric_name=False,
                    enable_version_counter=False,  # one last.ckpt, whichever saver wrote it last
                )
            )
            if checkpoint.get("every_n_train_steps"):
                # A second, unmonitored saver for last.ckpt: one that monitors val/loss defers its
                # step-interval saves to the next validation whenever val/loss is missing or the step
                # ends an epoch (Lightning >= 2.5), so "every N steps" would not hold.
                extra.append(ModelCheckpoint(monitor=None, save_top_k=0, save_last=True, enable_version_counter=False,
                                             every_n_train_steps=checkpoint["every_n_train_steps"]))
        trainer = super().instantiate_trainer(**kwargs)
        if evaluate is not None:
            check_strategy(trainer)  # rank zero must hold the whole model to evaluate it alone
        if config.get("retain_freed_cpu_memory", True) and isinstance(trainer.accelerator, CPUAccelerator):
            retain_freed_cpu_memory()
        use_atomic_checkpoints(trainer)  # write, fsync, rename: a kill mid-save keeps the previous file
        tidy_callbacks(trainer)  # a bar that counts steps, a summary without FLOPs that are always 0
        if init.get("ckpt_path") == "last":  # the newest run's last.ckpt, continued in its folder (fit)
            init["ckpt_path"] = str(resolve_last(trainer, self.subcommand))
        self.run_folder = RunFolder.attach(trainer)  # one claimed, locked folder for all loggers
        return trainer


def _config_error_in(err: BaseException) -> ConfigError | None:
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, ConfigError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def trainer_defaults() -> dict[str, Any]:
    return {
        "gradient_clip_val": 1.0,
        # Both write one run folder, claimed for them by run_folder.RunFolder; save_dir moves under
        # --trainer.default_root_dir when one is given. CSV first: metrics.csv is the main record.
        "logger": [
            {"class_path": "lightning.pytorch.loggers.CSVLogger",
             "init_args": {"save_dir": DEFAULT_SAVE_DIR, "name": DEFAULT_NAME}},
            {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
             "init_args": {"save_dir": DEFAULT_SAVE_DIR, "name": DEFAULT_NAME}},
        ],
    }


def _take_plugins(argv: list[str]) -> tuple[list[str], list[str]]:
    """Remove ``--plugins a.b c.d`` / ``--plugins=a.b,c.d`` from argv; return (argv, modules)."""
    rest, modules, i = [], [], 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--plugins":
            i += 1
            while i < len(argv) and not argv[i].startswith("-"):
                modules.extend(m for m in argv[i].split(",") if m)
                i += 1
            continue
        if arg.startswith("--plugins="):
            modules.extend(m for m in arg.split("=", 1)[1].split(",") if m)
        else:
            rest.append(arg)
        i += 1
    return rest, modules


def _config_files(argv: list[str]) -> list[dict]:
    """Read every ``--config`` file up front, so an unreadable one is one clear error (not a usage dump)."""
    paths = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--config"]
    paths += [a.split("=", 1)[1] for a in argv if a.startswith("--config=")]
    configs = []
    for path in paths:
        try:
            data = yaml.safe_load(Path(path).read_text())
        except OSError as err:
            raise ConfigError(f"--config {path}: cannot read it ({err.strerror}); check the path") from None
        except yaml.YAMLError as err:
            where = getattr(err, "problem_mark", None)
            at = f" at line {where.line + 1}" if where is not None else ""
            raise ConfigError(f"--config {path}: not valid YAML{at}; fix the file") from None
        if data is not None and not isinstance(data, dict):
            raise ConfigError(f"--config {path}: expected a mapping of sections (trainer, model, data)")
        configs.append(data or {})
    return configs


def _config_plugins(configs: list[dict]) -> list[str]:
    """The ``plugins:`` lists of the model configs inside the ``--config`` files."""
    modules: list[str] = []
    for data in configs:
        model = data.get("model") or {}
        args = model.get("init_args", model) if isinstance(model, dict) else {}
        config = args.get("config") if isinstance(args, dict) else None
        if isinstance(config, dict):
            modules.extend(config.get("plugins") or [])
    return modules


def shipped_configs():
    """The shipped YAML folder: ``llm_modules/configs`` in an installed wheel, ``configs/`` in a checkout."""
    packaged = resources.files("llm_modules").joinpath("configs")
    return packaged if packaged.is_dir() else Path(__file__).resolve().parents[2] / "configs"


def _resolve_config_paths(argv: list[str]) -> list[str]:
    """``--config X`` where X is not a file but names a shipped YAML -> that file.

    So ``--config strategies/fsdp`` works anywhere, and ``--config configs/strategies/fsdp.yaml``
    (the form the docs show) works from an installed wheel too, not only in a checkout. A path
    that exists always wins; one that names nothing is left for ``_config_files`` to report.
    """
    def shipped(value: str) -> str:
        if Path(value).exists():
            return value
        name = value.removeprefix("./").removeprefix("configs/")
        name = name if name.endswith((".yaml", ".yml")) else f"{name}.yaml"
        candidate = shipped_configs().joinpath(*name.split("/"))
        return str(candidate) if candidate.is_file() else value

    out = list(argv)
    for i, arg in enumerate(out):
        if arg == "--config" and i + 1 < len(out):
            out[i + 1] = shipped(out[i + 1])
        elif arg.startswith("--config="):
            out[i] = "--config=" + shipped(arg.split("=", 1)[1])
    return out


def _resolve_presets(argv: list[str]) -> list[str]:
    """``--model.config llama-tiny`` -> the preset's YAML path (which works from an installed wheel)."""
    names = set(preset_names())
    keys = ("--model.config", "--model.init_args.config")
    out = list(argv)
    for i, arg in enumerate(out):
        if arg in keys and i + 1 < len(out) and out[i + 1] in names:
            out[i + 1] = str(preset_dir().joinpath(f"{out[i + 1]}.yaml"))
        elif "=" in arg and arg.split("=", 1)[0] in keys and arg.split("=", 1)[1] in names:
            key, name = arg.split("=", 1)
            out[i] = f"{key}={preset_dir().joinpath(f'{name}.yaml')}"
    return out


class _CurrentStderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is now, not the one that existed when the handler was made
    (``main`` may run several times in one process, e.g. under pytest's capture or in a notebook,
    and a handler bound to a closed stream prints a logging traceback instead of the message)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def _show_progress_logs() -> None:
    """Let the data module's progress lines (tokenizer training, caching, mixture summary) reach the user."""
    logger = logging.getLogger("llm_modules")
    if not logger.handlers:
        handler = _CurrentStderrHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


TEXT_DATA = "llm_modules.data.TextDataModule"
EVALUATING = ("validate", "test", "predict")


def _given(argv: list[str], *keys: str) -> bool:
    return any(a in keys or a.split("=", 1)[0] in keys for a in argv)


def _evaluate_checkpoint(argv: list[str]) -> list[str]:
    """``validate|test|predict --ckpt_path X`` with data that a checkpoint alone can complete.

    The model (class and config) comes from the checkpoint's hyper-parameters (LightningCLI reads
    them). Without a ``--config`` or a ``--data`` class, the data is a TextDataModule over the
    ``--data.paths`` given, in blocks of the model's ``max_seq_len``. Data named on the command line
    alone (a TextDataModule or one of the pair modules, no data section in a ``--config``) is evaluation
    data: every document or record is evaluated (``val_fraction`` 1.0). Whenever the data is a
    TextDataModule and no ``--data.tokenizer`` is given, it tokenizes with the checkpoint's own
    tokenizer, never a new one; a checkpoint without one is an error (give ``--data.tokenizer``).
    The pair modules take the checkpoint's tokenizer from the restored model by themselves.
    """
    if not argv or argv[0] not in EVALUATING:
        return argv
    path = next((argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--ckpt_path"), None)
    path = path or next((a.split("=", 1)[1] for a in argv if a.startswith("--ckpt_path=")), None)
    if not path:
        return argv
    if path == "last":
        if _given(argv, "--config"):
            return argv  # its loggers say where runs are: the trainer resolves "last" (resume_last)
        argv, path = _with_newest_checkpoint(argv)
    if not Path(path).is_file():
        if Path(path).is_dir():
            return argv  # a distributed checkpoint folder: the strategy reads it
        raise ConfigError(f"--ckpt_path {path!r} does not exist; give a checkpoint file (e.g. runs/llm/version_0/"
                          "checkpoints/last.ckpt) or 'last'")
    out = list(argv)
    configs = _config_files(argv)
    if not any(isinstance(c.get("model"), dict) for c in configs) and not _given(argv, "--model"):
        # LightningCLI fills the model from the checkpoint's hyper-parameters only after parsing,
        # and parsing needs a model: name its class and config here.
        checkpoint = trainer_checks.read_checkpoint(path)
        hparams, config = checkpoint_contents.hyper_parameters(checkpoint), checkpoint_contents.model_config(checkpoint)
        if not hparams.get("_class_path") or not isinstance(config, dict):
            raise ConfigError(f"--ckpt_path {path!r} does not say which model it holds (no model class or config); "
                              "give the model with --config or --model")
        out[1:1] = ["--model", hparams["_class_path"], "--model.config", json.dumps(config)]
    data_class = next((argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--data"), None)
    for config in configs:
        data = config.get("data")
        if isinstance(data, dict) and data.get("class_path"):
            data_class = data_class or data["class_path"]
    if data_class is None and not configs:
        if not _given(argv, "--data.paths", "--data.init_args.paths", "--data.mixture", "--data.init_args.mixture"):
            raise ConfigError("give the data to evaluate on: --data.paths '[FILE, ...]' (text files, folders, "
                              "globs or .jsonl), or a --config with a data section")
        data_class = TEXT_DATA
        out[1:1] = ["--data", TEXT_DATA]  # the class before its arguments, or they have nowhere to go
        checkpoint = trainer_checks.read_checkpoint(path)
        if not _given(argv, "--data.seq_len", "--data.init_args.seq_len"):
            max_len = (checkpoint_contents.model_config(checkpoint) or {}).get("max_seq_len")
            if max_len:
                out += ["--data.seq_len", str(max_len)]
    kind = (data_class or "").rpartition(".")[2]
    data_from_argv = not any(isinstance(c.get("data"), dict) for c in configs)
    if data_from_argv and kind in ("TextDataModule", "PairsDataModule", "InstructionDataModule",
                                   "PreferenceDataModule") and not _given(
        argv, "--data.val_fraction", "--data.init_args.val_fraction"
    ):
        out += ["--data.val_fraction", "1.0"]  # files named only to be evaluated: every document / record
    if kind == "TextDataModule" and not _given(argv, "--data.tokenizer", "--data.init_args.tokenizer"):
        tokenizer = _checkpoint_tokenizer(path)
        if tokenizer is not None:
            out += ["--data.tokenizer", str(tokenizer), "--data.train_tokenizer", "false"]
        elif data_from_argv:
            # A tokenizer trained here on the evaluation file would give the ids other meanings.
            raise ConfigError(f"--ckpt_path {path!r} holds no tokenizer; give the one the model was trained with: "
                              "--data.tokenizer PATH.model")
    return out


def _with_newest_checkpoint(argv: list[str]) -> tuple[list[str], str]:
    """``--ckpt_path last`` of an evaluation without a config: the newest training run's checkpoint
    under the default loggers' folder (``default_root_dir`` or ``runs``, then ``llm``), put in its place
    in ``argv`` so that the data can be completed from it like any named checkpoint."""
    root = next((argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--trainer.default_root_dir"), None)
    root = root or next((a.split("=", 1)[1] for a in argv if a.startswith("--trainer.default_root_dir=")), None)
    _, found = newest_run_checkpoint(Path(root or DEFAULT_SAVE_DIR) / DEFAULT_NAME)
    out = [str(found) if i and argv[i - 1] == "--ckpt_path" and a == "last" else a for i, a in enumerate(argv)]
    return [f"--ckpt_path={found}" if a == "--ckpt_path=last" else a for a in out], str(found)


def _checkpoint_tokenizer(path: str) -> Path | None:
    """The checkpoint's tokenizer as a ``.model`` file in the cache (named by its content), or None."""
    import hashlib

    from llm_modules.data.datamodule import default_cache_dir

    data = trainer_checks.read_checkpoint(path).get("tokenizer")
    if not isinstance(data, (bytes, bytearray)):
        return None
    target = default_cache_dir() / "tokenizers" / f"checkpoint-{hashlib.sha256(data).hexdigest()[:16]}.model"
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}")
        tmp.write_bytes(bytes(data))
        os.replace(tmp, target)
    return target


def run(argv: list[str]) -> int:
    """Run one LightningCLI subcommand. A ConfigError propagates to ``llm_modules.cli.main``, which
    prints it as one line and exits with code 2."""
    argv, modules = _take_plugins(list(argv))
    argv = _resolve_config_paths(argv)  # shipped YAML by name, e.g. --config strategies/fsdp
    argv = _evaluate_checkpoint(argv)  # validate/test/predict: a checkpoint and a data file are enough
    register_strategy_names()  # --trainer.strategy fsdp = FSDP with one unit per block
    _show_progress_logs()
    # We hand LightningCLI the arguments ourselves (plugins taken out, presets resolved), which it
    # warns about whenever the process also has command-line arguments, that is, always.
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
    quiet_known_noise()  # Lightning's cloud-logger tip and its own LeafSpec deprecation warning
    load_plugins(modules + _config_plugins(_config_files(argv)))  # entry points too, even when no module is named
    import_kinds()  # --model CausalLM: LightningCLI finds short class names among the subclasses imported
    LLMCLI(
        LanguageModel,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=_resolve_presets(argv),
        trainer_defaults=trainer_defaults(),
        seed_everything_default=1234,
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
    )
    return 0
