"""Checkpoint files outside the Trainer, in Lightning's own format.

``save_checkpoint`` writes what ``Trainer.save_checkpoint`` would put there for the model alone
(``state_dict``, ``hyper_parameters``, the Lightning version, and whatever the module's
``on_save_checkpoint`` adds: ``model_kind``, the tokenizer, ...; ``llm_modules.checkpoint_contents``
says where each fact is), so ``CausalLM.load_from_checkpoint`` reads it. ``load_checkpoint`` reads
those files and real Trainer checkpoints alike, without unpickling code (``weights_only=True``), and
verifies the integrity record every checkpoint written here carries (``llm_modules.integrity``): a
file whose tensor data changed since it was written is refused naming it; files without the record
(older ones, other tools) load unverified. A weight with no finite value at all is refused too.

A fine-tuned model's checkpoint may be adapter-only (``llm_modules.models.finetuning``): it holds the
PEFT method's tensors, and its hyper-parameters name the base (``init_from``), which loading reads
first; ``load_checkpoint(..., init_from=PATH)`` points at the base where it has moved since.

Quantized files (``llm-modules quantize``) are checkpoints too: ``save_quantized`` writes one and
``load_checkpoint`` (or ``load_quantized``) rebuilds the float module and swaps in the quantized
layers (``llm_modules.quantization``).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

import llm_modules.checkpoint_contents as contents
import llm_modules.integrity as integrity
import llm_modules.models as models
from llm_modules.config import ModelConfig
from llm_modules.integrity import atomic_torch_save
from llm_modules.kinds import by_class_name
from llm_modules.models.finetuning import check_base_exists
from llm_modules.quantization import FORMAT_VERSION, build_method, is_quantized
from llm_modules.quantization.methods import replace_linears
from llm_modules.registry import ConfigError

if TYPE_CHECKING:
    from llm_modules.models import InferenceLM, LanguageModel


def checkpoint_dict(module: LanguageModel | InferenceLM) -> dict[str, Any]:
    """The checkpoint of a module as a dict of plain data and tensors: exactly what a Trainer
    checkpoint of it would carry (the module's own hook adds its entries). The Lightning version is
    the installed distribution's, read without importing Lightning."""
    checkpoint: dict[str, Any] = {
        "state_dict": module.state_dict(),
        "hyper_parameters": dict(module.hparams),
        "pytorch-lightning_version": importlib.metadata.version("lightning"),
    }
    module.on_save_checkpoint(checkpoint)
    return checkpoint


def save_checkpoint(module: LanguageModel | InferenceLM, path: str | os.PathLike) -> Path:
    """Write ``module``'s checkpoint to ``path`` atomically: a temporary file in the same folder is
    renamed over ``path`` only once complete, so a failed save leaves any older file intact."""
    return atomic_torch_save(checkpoint_dict(module), path)


def build_module(checkpoint: dict[str, Any], path: str | os.PathLike, init_from: str | None = None,
                 trains: bool = True) -> LanguageModel | InferenceLM:
    """The LanguageModel a checkpoint describes (``model_kind``, the config and the other
    hyper-parameters its constructor takes), freshly initialized: the weights are not loaded,
    except the base weights of an adapter-only checkpoint (from ``init_from``, by default the one
    its hyper-parameters name). ``trains=False``: an ``InferenceLM`` of the kind instead, which needs
    no Lightning (the library's other modules, such as a reward model, stay LightningModules)."""
    hparams = contents.hyper_parameters(checkpoint)
    config, kind = contents.model_config(checkpoint), contents.model_kind(checkpoint)
    if config is None or kind is None:
        raise ConfigError(
            f"checkpoint {str(path)!r} lacks its model config or model_kind; it was not written by an llm-modules model"
        )
    known = by_class_name(kind)
    inference = known is not None and not trains
    if not inference:
        cls = getattr(models, known.class_name) if known is not None else _library_class(hparams.get("_class_path"), kind)
        if cls is None:
            raise ConfigError(f"checkpoint {str(path)!r}: model_kind {kind!r} is not one of {', '.join(models.KINDS)}, "
                              "nor a LanguageModel of this library named by its hyper-parameters (_class_path)")
    base = str(init_from) if init_from is not None and hparams.get("init_from") else hparams.get("init_from")
    check_base_exists(checkpoint, base, f"checkpoint {str(path)!r}")
    if inference:  # the fine-tuning options of the hyper-parameters; the others are kept as they are
        return models.InferenceLM(kind, ModelConfig.from_dict(config), init_from=base, peft=hparams.get("peft"),
                                  peft_checkpoint=hparams.get("peft_checkpoint", "adapter"), hyper_parameters=hparams)
    accepted = inspect.signature(cls.__init__).parameters
    # Other hyper-parameters (optimizer settings, ...) go back to the constructor when it takes them.
    extra = {k: v for k, v in hparams.items() if k != "config" and k in accepted}
    if "init_from" in extra:
        extra["init_from"] = base
    return cls(ModelConfig.from_dict(config), **extra)


def _library_class(class_path: Any, kind: str) -> type[LanguageModel] | None:
    """The LanguageModel class a checkpoint's ``_class_path`` names, when it is one of this library's
    (alignment modules: ``llm_modules.alignment.RewardModel``) and its name is the ``model_kind``.
    Only ``llm_modules`` modules are imported: a file must not choose arbitrary code to run."""
    if not isinstance(class_path, str) or not class_path.startswith("llm_modules."):
        return None
    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return None
    ok = isinstance(cls, type) and issubclass(cls, models.LanguageModel) and name == kind
    return cls if ok else None


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu",
                    init_from: str | os.PathLike | None = None) -> LanguageModel:
    """Rebuild the LightningModule saved in ``path`` (by ``save_checkpoint``, a Trainer, or
    ``llm-modules quantize``: a quantized file comes back quantized), in eval mode. An adapter-only
    checkpoint loads onto its base: the ``init_from`` it was trained from, or the one given here."""
    return _load(path, map_location, init_from, trains=True)


def load_model(path: str | os.PathLike, map_location: str | torch.device = "cpu",
               init_from: str | os.PathLike | None = None) -> InferenceLM | LanguageModel:
    """What ``load_checkpoint`` loads, as an ``InferenceLM`` (``llm_modules.models.inference_lm``): the
    same weights, tokenizer and PEFT method, without importing Lightning, for code that generates,
    evaluates, converts or exports and never trains. The library's other modules (a reward model)
    come back as their LightningModules."""
    return _load(path, map_location, init_from, trains=False)


def _load(path, map_location, init_from, trains: bool):
    path = Path(path)
    checkpoint = contents.read(path, map_location)
    integrity.check_finite(checkpoint["state_dict"], f"checkpoint {str(path)!r}")
    if is_quantized(checkpoint):
        return module_from_checkpoint(checkpoint, path, trains)
    module = build_module(checkpoint, path, init_from, trains)
    return restore(module, checkpoint, f"checkpoint {str(path)!r}", "config")


def restore(module: LanguageModel | InferenceLM, checkpoint: dict[str, Any], where: str, described_by: str) -> LanguageModel:
    """Load a checkpoint's weights and extras into the module built from it, in eval mode; a
    mismatch means the file contradicts ``described_by`` (its own config), and says which tensors.
    An adapter-only checkpoint leaves out the base weights, which the module holds already."""
    module.finetuning.on_load_checkpoint(module, checkpoint, where)
    missing, unexpected = module.load_state_dict(checkpoint["state_dict"], strict=False)
    missing = sorted(set(missing) - module.finetuning.not_in_checkpoint(module, checkpoint))
    if missing or unexpected:
        raise ConfigError(
            f"{where} does not match its own {described_by} "
            f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})"
        )
    module.on_load_checkpoint(checkpoint)
    return module.eval()


# ---- quantized checkpoints --------------------------------------------------------------------------------------


def save_quantized(module, path: str | os.PathLike) -> Path:
    """Write a quantized LanguageModel (from :func:`quantize`) to ``path`` atomically."""
    info = getattr(module, "quantization", None)
    if not info:
        raise ConfigError("save_quantized: the model is not quantized; call llm_modules.quantization.quantize "
                          "first, or save a float model with llm_modules.checkpoint.save_checkpoint")
    checkpoint = checkpoint_dict(module)
    checkpoint["quantization"] = {**info, "version": FORMAT_VERSION}
    return atomic_torch_save(checkpoint, path)


def load_quantized(path: str | os.PathLike, map_location: str | torch.device = "cpu"):
    """Rebuild the quantized LanguageModel saved in ``path``, in eval mode."""
    path = Path(path)
    checkpoint = contents.read(path, map_location)
    if not is_quantized(checkpoint):
        raise ConfigError(f"checkpoint {str(path)!r} is not quantized; load it with llm_modules.checkpoint."
                          "load_checkpoint, or quantize it: llm-modules quantize CKPT OUT --method int8-weight")
    return module_from_checkpoint(checkpoint, path)


def module_from_checkpoint(checkpoint: dict[str, Any], path: str | os.PathLike, trains: bool = True):
    """The quantized module of an already read quantized checkpoint dict (``path`` names it in errors)."""
    info = checkpoint["quantization"]
    where = f"checkpoint {str(path)!r}"
    version = info.get("version", FORMAT_VERSION)
    if version > FORMAT_VERSION:
        raise ConfigError(f"{where} uses quantized format version {version}; this llm-modules reads up to "
                          f"{FORMAT_VERSION}: upgrade llm-modules")
    method = build_method(info["method"], **dict(info.get("options") or {}))
    module = build_module(checkpoint, path, trains=trains)
    layers = list(info.get("layers") or [])
    replace_linears(module.model, layers, method.empty_linear)
    restore(module, checkpoint, where, "config and quantization")
    module.quantization = {"method": method.name, "options": method.options(), "layers": layers}
    return module
