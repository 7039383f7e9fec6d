"""The LightningModule base shared by every LM kind: config, loss plumbing, optimizer, logging, checkpoints.

A subclass says which torch model to build (``build_model``), how a batch becomes logits and
targets (``logits_and_targets``); everything else lives here once.
"""

from __future__ import annotations

import abc
import dataclasses
import math
from typing import Any

import lightning as L
import torch

from llm_modules.checkpoint_contents import STABILITY_KEY
from llm_modules.config import ModelConfig, check_seq_len
from llm_modules.data.replicas import data_parallel_split
from llm_modules.models import IGNORE_INDEX
from llm_modules.models.definition import ModelDefinition
from llm_modules.nn.lm import aux_loss
from llm_modules.nn.loss import cross_entropy
from llm_modules.registry import ConfigError
from llm_modules.training.evaluation import GenerationEvalConfig, GenerationMetrics
from llm_modules.training.memory import MemoryConfig, apply_memory_savers, compile_model
from llm_modules.training.optim import OptimConfig, build_optimizer, build_scheduler
from llm_modules.training.parallel import clip_sharded_gradients, parallelize
from llm_modules.training.stability import StabilityConfig, StabilityGuard, global_losses


class LanguageModel(ModelDefinition, L.LightningModule, abc.ABC):
    """Base of CausalLM, PrefixLM, Seq2SeqLM and MaskedLM.

    What the model is (config, kind, torch model, fine-tuning, tokenizer) is ``ModelDefinition``'s,
    which ``InferenceLM`` shares; this class adds training: steps, losses, optimizers, logging.

    ``config`` is the architecture (plain data); ``optim`` the optimizer and schedule; ``memory`` the
    memory savers (freezing, activation checkpointing, compile); ``stability`` the loss-spike and
    non-finite guards; ``evaluation`` the generation metrics of validate/test (off unless it names
    some). Checkpoints carry all of them as plain data, plus the tokenizer when the data module has one, so a checkpoint is
    enough to rebuild the model and read its outputs.

    Fine-tuning (``llm_modules.models.finetuning``): ``init_from`` starts from the weights (and
    tokenizer) of a checkpoint or a Hugging Face folder, whose config is the model's when ``config``
    is left out; ``peft`` names a parameter-efficient method (``lora``, ``adapter``, ...; ``null``:
    every parameter trains), whose checkpoints then hold only the method's tensors
    (``peft_checkpoint: adapter``) or every tensor (``full``).
    """

    def __init__(
        self,
        config: ModelConfig | None = None,
        optim: OptimConfig | None = None,
        memory: MemoryConfig | None = None,
        stability: StabilityConfig | None = None,
        evaluation: GenerationEvalConfig | None = None,
        init_from: str | None = None,
        peft: dict | str | None = None,
        peft_checkpoint: str = "adapter",
    ):
        super().__init__()
        # Fine-tuning state and stability state live in objects of their own, made here and held;
        # the hooks below call them, and only they change their state.
        self._start_finetuning(config, init_from, peft, peft_checkpoint)
        self.optim = _as_dataclass(OptimConfig, optim)
        self.memory = _as_dataclass(MemoryConfig, memory)
        self.stability = _as_dataclass(StabilityConfig, stability)
        self.evaluation = _as_dataclass(GenerationEvalConfig, evaluation)
        self.stability_guard = StabilityGuard(self.stability)
        # Plain data only, plus the class path that LightningCLI reads back from a checkpoint
        # (``--ckpt_path``) to rebuild this exact LM kind.
        self.save_hyperparameters({
            "_class_path": f"{type(self).__module__}.{type(self).__qualname__}",
            "config": self.config.to_dict(),
            "optim": dataclasses.asdict(self.optim),
            "memory": dataclasses.asdict(self.memory),
            "stability": dataclasses.asdict(self.stability),
            "evaluation": dataclasses.asdict(self.evaluation),
            "init_from": self.finetuning.init_from,
            "peft": self.finetuning.peft,
            "peft_checkpoint": peft_checkpoint,
        })
        self._build()
        # Only when on: metric objects are submodules (moved and reduced with the model), none by default.
        self.generation_metrics = GenerationMetrics(self.evaluation) if self.evaluation.enabled else None
        #: this rank's pipeline stages and schedule under the pipeline strategy (``configure_model``)
        self.pipeline = None

    # ---- what a subclass provides ---------------------------------------------------------------------------

    @abc.abstractmethod
    def logits_and_targets(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (B, T, V) and targets (B, T) with IGNORE_INDEX where no loss is taken."""

    #: whether the loss is the token cross-entropy of ``self.model``'s logits for
    #: ``pipeline_batch``, which is what pipeline stages compute (``training.pipeline``)
    pipeline_ready = False

    def pipeline_batch(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """The batch as pipeline stages take it: input ids, targets, and the torch model's other
        keyword inputs (a kind with ``pipeline_ready`` provides it)."""
        raise ConfigError(f"{self.kind} does not run as pipeline stages; use another strategy")

    # ---- loss ---------------------------------------------------------------------------------------------

    def compute_loss(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Mean token cross-entropy over the targets, plus any auxiliary (MoE) loss. Under pipeline
        parallelism the schedule computes it (and, while training, its gradients) over the stages."""
        if self.pipeline is not None:
            return self.pipeline.compute_loss(self, batch)
        logits, targets = self.logits_and_targets(batch)
        # fp32 cross-entropy in row chunks: no full-size fp32 copy or log-softmax (nn.loss)
        lm_loss = cross_entropy(logits, targets, ignore_index=IGNORE_INDEX)
        extra = aux_loss(self.model, batch.get("attention_mask"))
        total = lm_loss if extra is None else lm_loss + extra
        return {"loss": total, "lm_loss": lm_loss, "tokens": (targets != IGNORE_INDEX).sum()}

    # ---- steps and metrics --------------------------------------------------------------------------------

    def training_step(self, batch, batch_idx):
        """The loss, unless the stability guard refuses the batch (llm_modules.training.stability).

        The logged loss is averaged over processes when there are several, so the curve is the global
        batch's whatever the process count; the guard judges that same number, so all ranks agree
        (one all-reduce of two scalars per step). A refused batch's loss is still logged: a spike
        should show in the curve.
        """
        guard = self.stability_guard
        if not guard.before_batch(self):
            return guard.refused(self, batch)
        out = self.compute_loss(batch)
        lm_loss, loss = global_losses(self, out)
        self.log_training(out, lm_loss)
        if not guard.admit(self, loss):
            return guard.refused(self, batch, out["loss"])
        return out["loss"]

    def log_training(self, out: dict[str, torch.Tensor], loss: torch.Tensor) -> None:
        """What a training step logs: the loss averaged over processes, and its perplexity.
        (Objectives whose loss is no token cross-entropy, such as alignment's, log their own figures.)"""
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/ppl", torch.exp(loss.clamp(max=50)))

    def batch_rows(self, batch) -> torch.Tensor:
        """The token rows (B, T) a training batch feeds the model: what tokens seen and the logged
        batch size count (a preference batch feeds its chosen and its rejected rows)."""
        return batch["input_ids"]

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        """Tokens seen (all data-parallel replicas). Throughput (tokens/s, MFU) is the
        ThroughputMonitor callback's (llm_modules.training.throughput), which the CLI adds."""
        rows = self.batch_rows(batch)
        tokens = int(rows.numel()) * data_parallel_split(self.trainer)[0]
        self.tokens_seen += tokens
        self.log("train/tokens_seen", float(self.tokens_seen))
        self.log("train/lr", self.optimizers().param_groups[0]["lr"])
        # rows per process in this micro-batch: follows data.batch_ramp while it lasts
        self.log("train/batch_size", float(rows.shape[0]))

    def validation_step(self, batch, batch_idx):
        loss, tokens = self._evaluate(batch, "val")
        self._generation_metrics(batch, batch_idx, "val")
        if self.trainer.sanity_checking:
            self._baseline += torch.stack([loss.detach().float() * tokens, torch.tensor(float(tokens), device=loss.device)])

    def on_validation_epoch_start(self) -> None:
        self._baseline = torch.zeros(2, device=self.device)

    def on_validation_epoch_end(self) -> None:
        """Log the sanity-check validation as the step-0 baseline.

        Lightning runs a validation pass before training (``num_sanity_val_steps``; -1 = the whole
        validation set) but does not log it; the loss of the untrained model is the figure that
        the final validation is compared against, so it is written to the loggers at step 0.
        """
        if not self.trainer.sanity_checking or self.global_step != 0 or not self.trainer.loggers:
            return
        total = self.trainer.strategy.reduce(self._baseline, reduce_op="sum")
        if float(total[1]) == 0:
            return
        loss = float(total[0] / total[1])
        metrics = {"val/loss": loss, "val/ppl": math.exp(min(loss, 50))}
        bytes_per_token = self._bytes_per_token()
        if bytes_per_token:
            metrics["val/bits_per_byte"] = loss / math.log(2) / bytes_per_token
        for logger in self.trainer.loggers:
            logger.log_metrics(metrics, step=0)

    def test_step(self, batch, batch_idx):
        self._evaluate(batch, "test")
        self._generation_metrics(batch, batch_idx, "test")

    def _generation_metrics(self, batch, batch_idx: int, split: str) -> None:
        """BLEU / ROUGE / exact match of generations, for batches with references (training.evaluation)."""
        if self.generation_metrics is not None:
            self.generation_metrics.step(self, batch, batch_idx, split)

    def predict_step(self, batch, batch_idx):
        """Generations for a PromptDataModule's prompts; for other batches, the greedy next-token (or
        masked-token) predictions with their targets."""
        if self.pipeline is not None:
            raise ConfigError(
                "predict runs the whole model on each process, and under the pipeline strategy each holds only its "
                "stages; predict without trainer.strategy (a consolidated checkpoint, or the distributed one "
                "loaded with the same pipeline strategy, serves validate and test)"
            )
        if "prompt_ids" in batch and "prompts" in batch:
            from llm_modules.data.prompts import generate_for_prompts

            return generate_for_prompts(self, batch, self._datamodule())
        logits, targets = self.logits_and_targets(batch)
        return {"predictions": logits.argmax(-1), "targets": targets}

    def _evaluate(self, batch, split: str) -> tuple[torch.Tensor, int]:
        """Log ``{split}/loss`` (nats per target token), ``ppl`` (its exp) and ``bits_per_byte``.

        Bits per byte is the loss in bits divided by the data module's ``bytes_per_token``: the UTF-8
        bytes behind an average token of the text the targets come from. What it measures depends on
        what the targets are:

        - CausalLM on text: the cost of writing the text left to right; comparable across tokenizers.
        - PrefixLM on text: the same for the part after each prefix (the prefix is not predicted),
          costed at the average bytes of a token of the whole text.
        - Any generating kind on reference pairs (``PairsDataModule``): the cost of the references
          given their prompts, per byte of reference text; comparable across tokenizers.
        - MaskedLM: the cost of the masked tokens given the rest, each costed at the average bytes
          of a token; a figure to compare masked LMs with each other, not with left-to-right ones.
        - Seq2SeqLM with span corruption: the loss includes the sentinel tokens, which stand for no
          text; as rough as the MaskedLM figure, and only comparable at the same noise settings.

        Logged means are weighted by target tokens, so over a whole pass the figure is total bits over
        total bytes where the targets cover the text (CausalLM, pairs).
        """
        out = self.compute_loss(batch)
        tokens = max(int(out["tokens"]), 1)
        loss = out["lm_loss"]
        # The mean over processes, weighted by their target tokens, computed here: Lightning's own
        # sync_dist averages the token counts as integers (15, 15, 18, 18 -> 16), which misweights
        # the logged loss by a few percent whenever ranks hold different numbers of targets.
        logged, weight = loss, tokens
        if self.trainer.world_size > 1:
            pair = torch.stack([loss.detach().float() * tokens, torch.tensor(float(tokens), device=loss.device)])
            pair = self.trainer.strategy.reduce(pair, reduce_op="sum")
            logged, weight = pair[0] / pair[1], int(pair[1])
        # (sync_dist stays: with the same value and weight on every rank its average changes nothing)
        self.log(f"{split}/loss", logged, prog_bar=True, sync_dist=True, batch_size=weight)
        self.log(f"{split}/ppl", torch.exp(logged.clamp(max=50)), sync_dist=True, batch_size=weight)
        bytes_per_token = self._bytes_per_token()
        if bytes_per_token:
            bpb = logged / math.log(2) / bytes_per_token
            self.log(f"{split}/bits_per_byte", bpb, prog_bar=split == "val", sync_dist=True, batch_size=weight)
        return loss, tokens

    def _datamodule(self):
        """The trainer's data module, or None (no trainer attached, or dataloaders given directly)."""
        return getattr(self.trainer, "datamodule", None) if self._trainer is not None else None

    def _bytes_per_token(self) -> float | None:
        value = getattr(self._datamodule(), "bytes_per_token", None)
        return float(value) if value else None

    # ---- model set-up under the strategy ------------------------------------------------------------------

    def configure_model(self) -> None:
        """Memory savers, then parallelism, then compilation, in that order.

        Lightning calls this once the strategy is set up (under its init context, e.g. DeepSpeed
        ZeRO-3's partitioning), on every process, and may call it more than once; the torch model
        itself never knows about any of this. A PEFT method was applied at construction, so the
        savers may freeze more of an adapted model (never less), and the trainable parameters are
        counted here, before sharding.
        """
        if getattr(self, "_model_configured", False):
            return
        self._model_configured = True
        strategy = self._trainer.strategy if self._trainer is not None else None
        if self.memory.activation_checkpointing and getattr(strategy, "_activation_checkpointing_kwargs", None):
            # FSDP's own policy would wrap blocks that already recompute: each block twice.
            raise ConfigError(
                "model.memory.activation_checkpointing is set and the FSDP strategy checkpoints blocks too; "
                "use one: drop the model option, or set trainer.strategy.init_args.activation_checkpointing: false"
            )
        apply_memory_savers(self.model, self.memory)
        self.finetuning.note_trainable(self)
        self.finetuning.check_strategy(self)
        parallelize(self)
        compile_model(self.model, self.memory)

    def on_train_start(self) -> None:
        """Fine-tuning: how many parameters train, counted in ``configure_model`` (models.finetuning)."""
        self.finetuning.log_trainable(self)

    # ---- optimization -------------------------------------------------------------------------------------

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None) -> None:
        """Runs the closure, then steps only if the guard lets it (StabilityGuard.optimizer_step)."""
        self.stability_guard.optimizer_step(self, optimizer, optimizer_closure)

    def backward(self, loss: torch.Tensor, *args, **kwargs) -> None:
        """Under pipeline parallelism the schedule ran the backward with the forward (``compute_loss``)."""
        if self.pipeline is None:
            super().backward(loss, *args, **kwargs)

    def optimizer_zero_grad(self, epoch, batch_idx, optimizer) -> None:
        """Lightning clears gradients between the training step and the backward; under pipeline
        parallelism the step already made them, so the schedule's run clears them first instead."""
        if self.pipeline is None:
            super().optimizer_zero_grad(epoch, batch_idx, optimizer)

    def on_before_optimizer_step(self, optimizer) -> None:
        """Logs ``train/grad_norm``: after fp16 unscaling, before clipping."""
        self.stability_guard.on_before_optimizer_step(self)

    def lr_scheduler_step(self, scheduler, metric) -> None:
        """The schedule follows the updates applied: a step the guard skipped does not advance it."""
        if not self.stability_guard.step_skipped:
            super().lr_scheduler_step(scheduler, metric)

    def configure_optimizers(self):
        optimizer = build_optimizer(self.named_parameters(), self.optim, trainer=self.trainer)
        total = self.optim.max_steps or int(self.trainer.estimated_stepping_batches)
        scheduler = build_scheduler(optimizer, self.optim, total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """Norm clipping under FSDP goes through its root module (Lightning's FSDP plugin refuses it)."""
        if not clip_sharded_gradients(self.trainer, gradient_clip_val, gradient_clip_algorithm):
            super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    # ---- checks against the data --------------------------------------------------------------------------

    def setup(self, stage: str) -> None:
        """Refuse data the model cannot read: a tokenizer larger than the vocabulary, blocks longer
        than the position encoding allows. (The data module is set up before the model.)"""
        datamodule = self._datamodule()
        tokenizer = getattr(datamodule, "tokenizer", None)
        self.finetuning.check_tokenizer(self, tokenizer)  # another tokenizer than the base's: say that first
        padded = getattr(tokenizer, "fits_padded_table", False)  # an imported model's table may be larger (Qwen)
        if tokenizer is not None and tokenizer.vocab_size != self.config.vocab_size and not (
                padded and tokenizer.vocab_size < self.config.vocab_size):
            # Larger than the tokenizer would only waste rows that no id reaches; smaller would
            # index past the table. Either way the two configs disagree, so say which to change.
            raise ConfigError(
                f"model.config.vocab_size={self.config.vocab_size} does not match the tokenizer's vocabulary "
                f"({tokenizer.vocab_size}); set model.config.vocab_size: {tokenizer.vocab_size} (or, when the "
                "data module trains the tokenizer, data.vocab_size to the model's)"
            )
        seq_len = getattr(datamodule, "seq_len", None)
        if seq_len:
            check_seq_len(seq_len, self.config.max_seq_len, "data.seq_len", "lower data.seq_len or raise "
                          "model.config.max_seq_len", encoder_decoder=self.base_kind == "Seq2SeqLM")
            for position in self.model.position_encodings():
                if position.max_len is not None and seq_len > position.max_len:
                    raise ConfigError(
                        f"data.seq_len={seq_len} is beyond what position {type(position).__name__} allows "
                        f"(model.config.max_seq_len={position.max_len}); raise max_seq_len or lower seq_len"
                    )
        if tokenizer is not None and self.tokenizer_bytes is None:
            self.tokenizer_bytes = tokenizer.to_bytes()

    # ---- checkpoints --------------------------------------------------------------------------------------

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """The definition's entries (``ModelDefinition.on_save_checkpoint``) and the stability guard's state."""
        super().on_save_checkpoint(checkpoint)
        checkpoint[STABILITY_KEY] = self.stability_guard.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        self.stability_guard.load_state_dict(checkpoint.get(STABILITY_KEY))


def _as_dataclass(cls, value):
    """A config dataclass from itself, its dict form, or None (the defaults)."""
    return value if isinstance(value, cls) else cls(**(value or {}))


def shift_targets(input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Next-token targets: position t predicts token t+1; the last position and padding predict nothing."""
    targets = torch.full_like(input_ids, IGNORE_INDEX)
    targets[:, :-1] = input_ids[:, 1:]
    if attention_mask is not None:
        # Both ends must be real: in a left-padded row the last pad would otherwise "predict" the
        # first real token from nothing, a loss term that depends on the padding.
        real_next = torch.zeros_like(attention_mask, dtype=torch.bool)
        real_next[:, :-1] = attention_mask[:, 1:].bool() & attention_mask[:, :-1].bool()
        targets = targets.masked_fill(~real_next, IGNORE_INDEX)
    return targets


