"""Fine-tuning plumbing of a LanguageModel: where the weights start (``init_from``), which PEFT method
trains (``peft``), and checkpoints that hold only what training changed.

Its state (the base's fingerprint and tokenizer, the method, the checkpoint mode, the trainable
count) lives in one :class:`FineTuning` object that the ``LanguageModel`` creates and holds
(``lm.finetuning``); the LightningModule calls its methods and keeps none of the logic itself, and
nothing else writes that state:

- **Start from a checkpoint.** ``model.init_from`` names an llm-modules checkpoint (float, any LM
  kind; our ``.ckpt`` files and Trainer checkpoints alike) or a Hugging Face model folder (read by
  ``interop.read_hf_model``). Its config becomes the model's unless ``model.config`` is given too, and then
  the two must agree on everything that shapes the weights or the function they compute (only
  dropout rates and the attention backend may differ); the base weights load at construction, so
  every later step (PEFT, memory savers, the strategy) sees a trained model, and the checkpoint's
  tokenizer comes with it.
- **Apply the method.** ``model.peft`` (a registry name or ``{name: ..., **options}``,
  ``llm_modules.peft``) freezes the base and adds the method's parameters, right after the base
  weights load and before ``configure_model`` (memory savers may freeze more; nothing unfreezes).
- **Adapter-only checkpoints.** With a method, a checkpoint keeps only the method's tensors (its
  ``added_keys``) and those of the submodules the LightningModule trains beside it
  (``trained_beside_peft``: a reward model's value head), plus optimizer state, which covers only
  trainable parameters anyway; the ``finetune`` entry records the base (``init_from``) and a
  fingerprint of its weights, so loading one rebuilds the base from ``init_from``, checks it is
  the same base, and loads the adapter on top. ``peft_checkpoint: full`` keeps every tensor
  instead (a self-contained file). Sharded checkpoint folders (FSDP ``state_dict_type: sharded``,
  ModelParallelStrategy) always keep every tensor: their loader expects each one back.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

import llm_modules.checkpoint_contents as checkpoint_contents
from llm_modules.config import ModelConfig
from llm_modules.peft import PeftMethod, apply_peft, build_peft
from llm_modules.quantization.io import is_quantized
from llm_modules.registry import ConfigError
from llm_modules.training.memory import trainable_summary

if TYPE_CHECKING:
    from llm_modules.models.base import LanguageModel

log = logging.getLogger("llm_modules.finetune")

#: the checkpoint entry that says how a fine-tuned checkpoint relates to its base
KEY = "finetune"
#: config fields that may differ from the init_from checkpoint's: they change neither the weights'
#: shapes nor what the trained function computes at evaluation
OVERRIDABLE = ("dropout", "attention_dropout", "attention", "plugins")
CHECKPOINT_MODES = ("adapter", "full")
PREFIX = "model."  # the torch model's keys inside the LightningModule's state dict


# ---- the base: init_from ------------------------------------------------------------------------------------


@dataclasses.dataclass
class Base:
    """What ``init_from`` names, read once: the LM kind, its config, the torch model's weights and
    the tokenizer it was trained with (our checkpoints) or that its folder holds (``folder_tokenizer_bytes``)."""

    source: str
    kind: str
    config: ModelConfig
    state: dict[str, torch.Tensor]
    tokenizer: bytes | None = None


def read_base(path: str | Path, kind: str, fix: str = "set model.class_path: llm_modules.{kind}") -> Base:
    """The base that ``model.init_from`` names (a checkpoint file or a Hugging Face folder), which
    must hold a model of ``kind``; ``fix`` says what to change otherwise (``{kind}``: the file's)."""
    p = Path(path)
    if p.is_dir() or p.is_file():
        base = _read_hf_folder(p) if p.is_dir() else _read_checkpoint(p)
        if base.kind != kind:
            raise ConfigError(
                f"model.init_from: {base.source!r} holds a {base.kind}, and the model is a {kind}; "
                + fix.format(kind=base.kind)
            )
        return base
    raise ConfigError(
        f"model.init_from: {str(path)!r} does not exist; give an llm-modules checkpoint (e.g. "
        "runs/llm/version_0/checkpoints/last.ckpt) or a Hugging Face model folder (config.json + weights)"
    )


def _read_checkpoint(path: Path) -> Base:
    try:
        checkpoint = checkpoint_contents.read(path, "cpu")
    except ConfigError as err:
        raise ConfigError(f"model.init_from: {err}") from None
    if is_quantized(checkpoint):
        raise ConfigError(
            f"model.init_from: {str(path)!r} is a quantized checkpoint; start from the float checkpoint it was "
            "quantized from (peft: qlora quantizes the base itself)"
        )
    trained = checkpoint.get(KEY) or {}
    if trained.get("peft"):
        raise ConfigError(
            f"model.init_from: {str(path)!r} was fine-tuned with peft method {trained['peft'].get('name')!r}; "
            f"fold it into plain weights first: llm-modules export {path} merged.ckpt --format ckpt --merge, "
            "then init_from merged.ckpt"
        )
    config, kind = checkpoint_contents.model_config(checkpoint), checkpoint_contents.model_kind(checkpoint)
    if config is None or kind is None:
        raise ConfigError(f"model.init_from: {str(path)!r} lacks its model config or model_kind; it was not written by "
                          "an llm-modules model (a Hugging Face model is a folder: give the folder)")
    state = {k[len(PREFIX):]: v for k, v in checkpoint["state_dict"].items() if k.startswith(PREFIX)}
    tokenizer = checkpoint.get("tokenizer")
    return Base(str(path), kind, ModelConfig.from_dict(dict(config)), state,
                bytes(tokenizer) if isinstance(tokenizer, (bytes, bytearray)) else None)


def _read_hf_folder(path: Path) -> Base:
    from llm_modules.interop import read_hf_model

    if (path / "meta.pt").is_file() or any(path.glob("*.distcp")):
        raise ConfigError(
            f"model.init_from: {str(path)!r} is a sharded checkpoint folder (one file per rank); start from a "
            "one-file checkpoint (strategies/fsdp-full-state writes them) or a Hugging Face folder"
        )
    try:
        read = read_hf_model(path)
    except ConfigError as err:
        raise ConfigError(f"model.init_from: {err}") from None
    from llm_modules.data.hf_tokenizer import folder_tokenizer_bytes

    tokenizer = folder_tokenizer_bytes(path, field=f"model.init_from {str(path)!r}")
    return Base(str(path), read.kind, read.config, read.state, tokenizer)


def resolve_config(given: ModelConfig | None, base: Base | None) -> ModelConfig:
    """The model's config: the one given, the base's, or the base's with the given dropout and
    attention backend. Any other difference is refused, naming the fields."""
    if base is None:
        if given is None:
            raise ConfigError("model.config: give the architecture (a mapping or a preset name such as "
                              "llama-tiny), or model.init_from: a checkpoint or Hugging Face folder to start from")
        return given
    if given is None:
        return base.config
    ours, theirs = given.to_dict(), base.config.to_dict()
    differ = [name for name in theirs if name not in OVERRIDABLE and ours.get(name) != theirs[name]]
    if differ:
        shown = ", ".join(f"{name}: {ours.get(name)!r} here, {theirs[name]!r} there" for name in differ[:6])
        raise ConfigError(
            f"model.config does not match the config of model.init_from={base.source!r} ({shown}); leave "
            f"model.config out to take the checkpoint's, or change only {', '.join(OVERRIDABLE)}"
        )
    return base.config.replace(**{name: ours[name] for name in OVERRIDABLE})


def load_base(model: nn.Module, base: Base) -> str:
    """Copy the base weights into the freshly built torch model; returns their fingerprint."""
    missing, unexpected = model.load_state_dict(base.state, strict=False)
    if missing or unexpected:
        raise ConfigError(
            f"model.init_from: {base.source!r} does not fit the model built from its own config "
            f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]}); the file is damaged or "
            "was written by another version"
        )
    return fingerprint(base.state)


def fingerprint(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 of the tensors (names, dtypes, shapes, bytes): whether an adapter is loaded onto the
    base it was trained on. One pass over the weights, paid where they are read anyway."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:32]


def checkpoint_mode(mode: str) -> str:
    if mode not in CHECKPOINT_MODES:
        raise ConfigError(f"model.peft_checkpoint must be one of {', '.join(CHECKPOINT_MODES)}; got {mode!r}")
    return mode


def peft_spec(peft: Any) -> dict[str, Any] | None:
    """The method's options as plain data (every default filled in), or None; checks them now, so
    a typo in ``model.peft`` fails when the config is read."""
    if peft is None:
        return None
    try:
        return build_peft(peft).describe()
    except ConfigError as err:
        raise ConfigError(f"model.peft: {err}") from None


def is_adapter_only(checkpoint: dict[str, Any]) -> bool:
    return bool((checkpoint.get(KEY) or {}).get("adapter_only"))


def check_base_exists(checkpoint: dict[str, Any], init_from: str | None, where: str) -> None:
    """An adapter-only checkpoint is half a model: say so, and how to name its base, when the base
    is not where the checkpoint remembers it."""
    if is_adapter_only(checkpoint) and not (init_from and Path(init_from).exists()):
        method = ((checkpoint.get(KEY) or {}).get("peft") or {}).get("name")
        raise ConfigError(
            f"{where} holds only the {method} tensors of a fine-tune; its base, model.init_from={init_from!r}, "
            "does not exist here; give the base: --model.init_from BASE on the command line, or "
            "load_checkpoint(path, init_from=BASE)"
        )


def _sharded(state: dict[str, Any]) -> bool:
    """Whether the state dict is a distributed one (DTensor / ShardedTensor values)."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(v, DTensor) or type(v).__name__ == "ShardedTensor" for v in state.values())


class FineTuning:
    """The fine-tuning state of one LanguageModel, and the only code that changes it.

    Made by ``LanguageModel.__init__`` from its ``init_from``, ``peft`` and ``peft_checkpoint``
    options (which reads the base, checking the options as the config is read), attached once the
    torch model is built (base weights in, method applied), then asked by the module's hooks:
    ``configure_model``, ``setup``, ``on_train_start`` and the checkpoint hooks. The LightningModule
    is passed to each call rather than kept, so the two do not own each other.

    ``init_from``: the base's resolved path (None: not fine-tuning from a file). ``method``: the
    applied PEFT method or None. ``checkpoint_mode``: ``adapter`` or ``full``. ``base_fingerprint``:
    the base weights' digest, which an adapter-only checkpoint must match. ``base_tokenizer``: the
    tokenizer the base was trained with, if its file had one. ``trainable``: (trainable, total)
    parameters, counted before a strategy shards them.
    """

    def __init__(self, init_from: str | None, peft: Any, mode: str, kind: str, fix: str):
        self._base = read_base(init_from, kind, fix) if init_from else None
        self.init_from = str(Path(init_from).resolve()) if init_from else None
        self.peft = peft_spec(peft)
        self.checkpoint_mode = checkpoint_mode(mode)
        self.method: PeftMethod | None = None
        self.base_fingerprint: str | None = None
        self.base_tokenizer = self._base.tokenizer if self._base is not None else None
        self.trainable: tuple[int, int] | None = None

    @property
    def active(self) -> bool:
        """Whether the model is fine-tuned at all (a base, a method, or both)."""
        return self.init_from is not None or self.method is not None

    def config(self, given: ModelConfig | None) -> ModelConfig:
        """The model's config: the one given, the base's, or both reconciled (``resolve_config``)."""
        return resolve_config(given, self._base)

    def attach(self, lm: LanguageModel) -> None:
        """Once ``lm.model`` is built: copy the base weights in, then freeze them and add the
        method's parameters. The base's tensors are let go afterwards (only their fingerprint stays)."""
        if self._base is not None:
            self.base_fingerprint = load_base(lm.model, self._base)
            self._base = None
        if self.peft is not None:
            self.method = apply_peft(lm.model, dict(self.peft))
            # Adapter-only checkpoints hold the method's tensors alone; on_load_checkpoint checks the keys instead.
            lm.strict_loading = False

    # ---- checks ----------------------------------------------------------------------------------------------

    def check_tokenizer(self, lm: LanguageModel, tokenizer: Any) -> None:
        """The data must be tokenized as the base was trained: a data module's own tokenizer (given, or
        trained on the fine-tuning data) would give the ids other meanings."""
        if self.init_from is None or tokenizer is None or lm.tokenizer_bytes is None:
            return
        to_bytes = getattr(tokenizer, "to_bytes", None)
        if to_bytes is not None and to_bytes() != lm.tokenizer_bytes:
            raise ConfigError(
                f"data.tokenizer: the data module's tokenizer is not the one model.init_from={self.init_from!r} was "
                "trained with, so its ids would mean other pieces; leave data.tokenizer out (the data is then read "
                "with the base's own), or give the base's own tokenizer file (a Hugging Face folder's "
                "tokenizer.json or tokenizer.model; llm-modules export writes it) with data.train_tokenizer: false"
            )

    def check_strategy(self, lm: LanguageModel) -> None:
        """Tensor parallelism has a plan for the base linear layers only; a method's extra layers
        would be left unsplit beside split weights."""
        mesh = getattr(lm, "device_mesh", None)
        if self.method is not None and mesh is not None and mesh["tensor_parallel"].size() > 1:
            raise ConfigError(
                f"model.peft: {self.method.name} has no tensor-parallel plan; train it with data parallelism "
                "(trainer.strategy.init_args.tensor_parallel_size: 1, or the ddp / fsdp strategies)"
            )

    # ---- trainable parameters ----------------------------------------------------------------------------------

    def note_trainable(self, lm: LanguageModel) -> tuple[int, int]:
        """Count trainable and total parameters now, before a strategy shards them (FSDP would leave
        each process only its slice to count)."""
        self.trainable = trainable_summary(lm.model)
        return self.trainable

    def log_trainable(self, lm: LanguageModel) -> None:
        """Say once (rank zero) how many parameters train, and write the figures to the loggers at step 0
        (``params/trainable``, ``params/trainable_share``), so runs can be compared on them."""
        if not self.active:
            return  # not fine-tuning: memory savers report their own freezing
        trainable, total = self.trainable or self.note_trainable(lm)
        share = trainable / max(total, 1)
        if lm.global_rank != 0:
            return
        how = f"peft {self.method.name}" if self.method is not None else "full fine-tuning"
        log.info(f"{how}: {trainable:,} of {total:,} parameters train ({100 * share:.2f}%)")
        for logger in lm.trainer.loggers:
            logger.log_metrics({"params/trainable": float(trainable), "params/trainable_share": share}, step=0)

    # ---- checkpoints -------------------------------------------------------------------------------------------

    def on_save_checkpoint(self, lm: LanguageModel, checkpoint: dict[str, Any]) -> None:
        """Record the base, and with a method keep only its tensors (unless ``peft_checkpoint: full``, the
        checkpoint is sharded, or there is no ``init_from`` to rebuild the base from). A checkpoint that
        keeps every tensor needs no base to load, so its hyper-parameters no longer name one: rebuilding
        it does not read ``init_from`` again."""
        if not self.active:
            return
        method = self.method
        state = checkpoint.get("state_dict")
        # Without init_from the base is this run's own initialization, which nothing could rebuild: keep it.
        adapter_only = (method is not None and self.init_from is not None and self.checkpoint_mode == "adapter"
                        and isinstance(state, dict) and not _sharded(state))
        if adapter_only:
            keep = self.adapter_keys(lm, state)
            checkpoint["state_dict"] = {k: v for k, v in state.items() if k in keep}
        elif isinstance(checkpoint.get("hyper_parameters"), dict):
            checkpoint["hyper_parameters"]["init_from"] = None
        checkpoint[KEY] = {
            "init_from": self.init_from,
            "peft": method.describe() if method is not None else None,
            "adapter_only": adapter_only,
            "base_fingerprint": self.base_fingerprint,
        }

    def adapter_keys(self, lm: LanguageModel, state: dict[str, Any] | None = None) -> set[str]:
        """The keys an adapter-only checkpoint holds: the method's tensors, plus those of the submodules
        the LightningModule trains beside the method (``trained_beside_peft``, e.g. a value head)."""
        keys = {PREFIX + k for k in self.method.added_keys}
        beside = tuple(f"{name}." for name in lm.trained_beside_peft)
        if beside:
            keys |= {k for k in (lm.state_dict() if state is None else state) if k.startswith(beside)}
        return keys

    def not_in_checkpoint(self, lm: LanguageModel, checkpoint: dict[str, Any]) -> set[str]:
        """State-dict keys of ``lm`` that the checkpoint leaves out by design (the base, when adapter-only)."""
        if not is_adapter_only(checkpoint) or self.method is None:
            return set()
        keep = self.adapter_keys(lm)
        return {k for k in lm.state_dict() if k not in keep}

    def on_load_checkpoint(self, lm: LanguageModel, checkpoint: dict[str, Any], where: str = "the checkpoint") -> None:
        """Before the weights load. With a method, loading is not strict (adapter-only checkpoints lack the
        base), so this is the check instead: an adapter-only checkpoint must meet the base it was trained
        on and the same method, and hold exactly the method's tensors; any other, exactly the model's."""
        info = checkpoint.get(KEY) or {}
        adapter_only = bool(info.get("adapter_only"))
        if adapter_only:
            self._check_adapter_base(info, where)
        state = checkpoint.get("state_dict")
        if self.method is None or not isinstance(state, dict):  # strict as usual; or FSDP loaded the weights
            return
        expected = self.adapter_keys(lm) if adapter_only else set(lm.state_dict())
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        if missing or unexpected:
            raise ConfigError(f"{where} does not match the model with peft method {self.method.name!r} "
                              f"(missing {missing[:3]}, unexpected {unexpected[:3]}); check model.peft's options")

    def _check_adapter_base(self, info: dict[str, Any], where: str) -> None:
        saved_method = (info.get("peft") or {}).get("name")
        if self.method is None or self.method.name != saved_method:
            have = self.method.name if self.method is not None else "none"
            raise ConfigError(f"{where} holds the tensors of peft method {saved_method!r}, and the model has "
                              f"{have}; build it with model.peft as saved (its hyper-parameters name it)")
        if self.base_fingerprint is None:
            raise ConfigError(f"{where} holds only the {saved_method} tensors; its base weights come from "
                              f"model.init_from={info.get('init_from')!r}: build the model with that init_from")
        if self.base_fingerprint != info.get("base_fingerprint"):
            raise ConfigError(
                f"{where} was trained on other base weights than model.init_from={self.init_from!r} holds now "
                f"(trained from {info.get('init_from')!r}); give the base it was trained on as model.init_from"
            )

    # ---- export ------------------------------------------------------------------------------------------------

    def fold(self, lm: LanguageModel) -> LanguageModel:
        """Merge the method into the base weights for good and remove its modules (in place): ``lm`` is
        then a plain model of its kind, with no method and no base to load, that exports to Hugging Face
        and serves as another run's ``init_from``. Methods that cannot be merged are refused."""
        method = self.method
        if method is None:
            return lm
        try:
            method.unload(lm.model)
        except ConfigError as err:
            raise ConfigError(f"{err}; export the method's tensors instead (--format adapter), or the whole "
                              "fine-tuned model as an llm-modules checkpoint (--format ckpt without --merge)") from None
        left = method.added_keys & set(lm.model.state_dict())
        if left:
            raise ConfigError(f"peft {method.name!r} left its tensors in the model after unloading ({sorted(left)[:3]}); "
                              "it cannot be exported as plain weights")
        self.method, self.peft, self.init_from, self.base_fingerprint = None, None, None, None
        lm.hparams.update(peft=None, init_from=None)
        lm.strict_loading = True
        return lm

    def self_contained(self, lm: LanguageModel) -> LanguageModel:
        """Make ``lm``'s checkpoints keep every tensor (base and method), so they load without the base."""
        self.checkpoint_mode = "full"
        lm.hparams.update(peft_checkpoint="full")
        return lm


def fold(lm: LanguageModel) -> LanguageModel:
    """Merge ``lm``'s PEFT method into its base weights for good (``FineTuning.fold``): a plain model
    of its kind, that exports to Hugging Face and serves as another run's ``init_from``."""
    return lm.finetuning.fold(lm)


def self_contained(lm: LanguageModel) -> LanguageModel:
    """Make ``lm``'s checkpoints keep every tensor, so they load without the base (``FineTuning.self_contained``)."""
    return lm.finetuning.self_contained(lm)
