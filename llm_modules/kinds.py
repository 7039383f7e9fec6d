"""The LM kinds: the one table of what each is called and what it can do.

The LightningModule classes live in ``llm_modules.models`` (which imports Lightning); this table
is plain data at the bottom of the package, so that the estimator, the data modules, the
checkpoint reader and the CLI's argument parsers name and check kinds without importing them.
``key`` is the short name (``estimate --kind causal``), ``class_name`` the LightningModule's class
and what checkpoints record as ``model_kind``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Kind:
    key: str
    class_name: str
    #: writes text left to right with a decoder (generation, reference pairs, instructions)
    generates: bool
    #: a separate encoder reads the source and a decoder writes the target
    encoder_decoder: bool = False
    #: the torch model of this kind: a class of ``llm_modules.nn.lm`` and its keyword options
    torch_model: str = "DecoderLM"
    torch_options: tuple[tuple[str, object], ...] = ()

    def build_torch_model(self, config):
        """This kind's torch model for ``config`` (a ``ModelConfig``), on the current default device.
        Imported here, on first use, so that reading the table costs nothing."""
        from llm_modules.nn import lm

        return getattr(lm, self.torch_model)(config, **dict(self.torch_options))

    @property
    def class_path(self) -> str:
        """What a checkpoint of this kind records as ``_class_path`` (LightningCLI's ``--ckpt_path``
        rebuilds the class from it): the module of ``llm_modules.models`` named after the key."""
        return f"llm_modules.models.{self.key}.{self.class_name}"


KINDS: dict[str, Kind] = {kind.key: kind for kind in (
    Kind("causal", "CausalLM", generates=True),
    Kind("prefix", "PrefixLM", generates=True, torch_options=(("prefix", True),)),
    Kind("seq2seq", "Seq2SeqLM", generates=True, encoder_decoder=True, torch_model="EncoderDecoderLM"),
    Kind("masked", "MaskedLM", generates=False, torch_model="EncoderLM"),
)}

#: short name -> LightningModule class name
CLASS_NAMES: dict[str, str] = {kind.key: kind.class_name for kind in KINDS.values()}
#: the kinds that generate (pairs and instruction data are laid out for them)
GENERATING: tuple[str, ...] = tuple(kind.class_name for kind in KINDS.values() if kind.generates)
#: the kinds that generate with one decoder stack reading prompt and answer together
DECODERS: tuple[str, ...] = tuple(kind.class_name for kind in KINDS.values() if kind.generates and not kind.encoder_decoder)


def by_class_name(name: str) -> Kind | None:
    """The kind whose LightningModule class is ``name`` (``CausalLM``), or None."""
    return next((kind for kind in KINDS.values() if kind.class_name == name), None)
