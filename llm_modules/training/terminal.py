"""What a ``fit`` prints: only what is true and useful.

Lightning's defaults print, on every run of this project, a progress bar titled "Epoch 0/-2"
(``max_epochs=-1`` when training is bounded by ``max_steps``), a model summary whose FLOPs column
and "Total FLOPs: 0" line are always zero (it counts FLOPs only for a module that defines
``example_input_array``), a tip advertising a cloud logger, and a deprecation warning from its
own code (``isinstance(treespec, LeafSpec)`` under torch >= 2.10). Here: a bar that counts steps
when steps bound the run, a summary without the FLOPs (``llm-modules estimate`` and the
throughput monitor give the real figures), and targeted filters for exactly those two messages.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

from lightning.pytorch.callbacks import ModelSummary, RichModelSummary, RichProgressBar
from lightning.pytorch.utilities.model_summary.model_summary import (
    _format_summary_table,
    get_formatted_model_size,
    get_human_readable_count,
)

TIP_PREFIX = "💡 Tip: For seamless cloud"  # litlogger / litmodels adverts
LEAFSPEC_WARNING = r"`isinstance\(treespec, LeafSpec\)` is deprecated"


class StepProgressBar(RichProgressBar):
    """Rich progress bar titled "Epoch 0 · step 120/600" when ``max_steps`` bounds the run (Lightning
    shows "Epoch 0/-2" there); with ``max_epochs`` set, Lightning's "Epoch 0/9"."""

    def _get_train_description(self, current_epoch: int) -> str:
        trainer = self.trainer
        if trainer.max_epochs is not None and trainer.max_epochs > 0:
            return super()._get_train_description(current_epoch)
        text = f"Epoch {current_epoch}"
        if trainer.max_steps is not None and trainer.max_steps > 0:
            text += f" · step {trainer.global_step}/{trainer.max_steps}"
        return f"{text:{len(self.validation_description)}}"

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if self.progress is not None and self.train_progress_bar_id is not None:
            self.progress.update(self.train_progress_bar_id,
                                 description=self._get_train_description(trainer.current_epoch))
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)


def _without_flops(summary_data: list[tuple[str, list[str]]]) -> list[tuple[str, list[str]]]:
    return [(name, values) for name, values in summary_data if name != "FLOPs"]


class PlainSummary(ModelSummary):
    """Lightning's text model summary without the FLOPs column and line."""

    @staticmethod
    def summarize(summary_data, total_parameters: int, trainable_parameters: int, model_size: float,
                  total_training_modes: dict[str, int], total_flops: int, **summarize_kwargs: Any) -> None:
        table = _format_summary_table(total_parameters, trainable_parameters, model_size, total_training_modes,
                                      total_flops, *_without_flops(summary_data))
        lines = [line for line in table.splitlines() if "Total Flops" not in line and "Total FLOPs" not in line]
        logging.getLogger("lightning.pytorch.callbacks.model_summary").info("\n" + "\n".join(lines))


class RichSummary(RichModelSummary):
    """Lightning's rich model summary (the same table and totals) without the FLOPs column and line."""

    @staticmethod
    def summarize(summary_data, total_parameters: int, trainable_parameters: int, model_size: float,
                  total_training_modes: dict[str, int], total_flops: int, **summarize_kwargs: Any) -> None:
        from rich import get_console
        from rich.table import Table

        data = _without_flops(summary_data)
        table = Table(header_style=summarize_kwargs.get("header_style", "bold magenta"))
        table.add_column(" ", style="dim")
        for name, _ in data[1:]:
            right = name not in ("Name", "Type", "Mode")
            table.add_column(name, justify="right" if right else "left", no_wrap=name == "Name")
        for row in zip(*(values for _, values in data)):
            table.add_row(*row)
        console = get_console()
        console.print(table)
        frozen = total_parameters - trainable_parameters
        grid = Table.grid(expand=True)
        grid.add_column()
        for label, value in (
            ("Trainable params", get_human_readable_count(int(trainable_parameters))),
            ("Non-trainable params", get_human_readable_count(int(frozen))),
            ("Total params", get_human_readable_count(int(total_parameters))),
            ("Total estimated model params size (MB)", get_formatted_model_size(model_size)),
            ("Modules in train mode", total_training_modes["train"]),
            ("Modules in eval mode", total_training_modes["eval"]),
        ):
            grid.add_row(f"[bold]{label}[/]: {value}")
        console.print(grid)


_REPLACEMENTS = {RichProgressBar: StepProgressBar, RichModelSummary: RichSummary, ModelSummary: PlainSummary}


def tidy_callbacks(trainer) -> None:
    """Give Lightning's own progress bar and model summary (exactly those classes, not a user's
    subclass) the behaviour above, keeping every setting they were made with."""
    for callback in trainer.callbacks:
        replacement = _REPLACEMENTS.get(type(callback))
        if replacement is not None:
            callback.__class__ = replacement  # subclasses that add no state: a safe swap


class _DropTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(TIP_PREFIX)


_TIP_FILTER = _DropTips()


def quiet_known_noise() -> None:
    """Filter exactly the two messages above; every other warning and log line is kept."""
    warnings.filterwarnings("ignore", message=LEAFSPEC_WARNING)
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if _TIP_FILTER not in logger.filters:
            logger.addFilter(_TIP_FILTER)
