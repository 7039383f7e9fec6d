"""Memory savers: activation checkpointing (same gradients, fewer saved bytes), freezing (excluded
from the optimizer, bit-identical after training), gradient accumulation (equal to the big batch),
and torch.compile applied in configure_model (same logits, same parameter names, trains)."""

from __future__ import annotations

import copy
import logging

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from llm_modules import CausalLM, ModelConfig, Seq2SeqLM
from llm_modules.registry import ConfigError
from llm_modules.training.memory import MemoryConfig, apply_memory_savers, stacks_of
from llm_modules.training.throughput import ThroughputMonitor

VOCAB = 64


def config(**overrides) -> ModelConfig:
    fields = dict(vocab_size=VOCAB, d_model=32, n_layers=4, n_heads=4, d_ff=64, max_seq_len=64, norm="rmsnorm",
                  activation="swiglu", position="rope", bias=False, tie_embeddings=False)
    fields.update(overrides)
    return ModelConfig(**fields)


def batches(rows: int, length: int = 16, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(0, VOCAB, (length,), generator=g)} for _ in range(rows)]


def seq2seq_batch(rows: int = 2, length: int = 12) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {"input_ids": torch.randint(1, VOCAB, (rows, length), generator=g),
            "labels": torch.randint(1, VOCAB, (rows, length - 4), generator=g)}


def fit(lm, data, *, batch_size: int, steps: int, **trainer_args) -> L.Trainer:
    trainer = L.Trainer(
        accelerator="cpu", max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, **trainer_args,
    )
    trainer.fit(lm, DataLoader(data, batch_size=batch_size, shuffle=False))
    return trainer


def saved_bytes_and_grads(lm, batch) -> tuple[int, dict[str, torch.Tensor]]:
    """Bytes of the distinct tensors autograd keeps from the forward for the backward, and the grads."""
    storages: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return t

    lm.zero_grad()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = lm.compute_loss(batch)["loss"]
    loss.backward()
    return sum(storages.values()), {n: p.grad.clone() for n, p in lm.named_parameters() if p.grad is not None}


# ---- activation checkpointing -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["CausalLM", "Seq2SeqLM"])
def test_checkpointing_keeps_gradients_and_saves_fewer_activation_bytes(kind):
    torch.manual_seed(0)
    if kind == "CausalLM":
        plain, batch = CausalLM(config()), {"input_ids": torch.randint(0, VOCAB, (2, 48))}
    else:
        plain, batch = Seq2SeqLM(config(position="t5", n_encoder_layers=3)), seq2seq_batch(2, 48)
    saved = {}
    for spec in (False, "every:2", "all"):
        lm = copy.deepcopy(plain)
        apply_memory_savers(lm.model, MemoryConfig(activation_checkpointing=spec))
        saved[spec], grads = saved_bytes_and_grads(lm, batch)
        if spec is False:
            reference = grads
        else:
            assert grads.keys() == reference.keys()
            for name, grad in grads.items():
                torch.testing.assert_close(grad, reference[name], rtol=0, atol=1e-6, msg=name)
    # Every block checkpointed keeps only block inputs: a fraction of what the plain forward keeps.
    assert saved["all"] < saved["every:2"] < saved[False], saved
    assert saved["all"] < 0.5 * saved[False], saved


def test_checkpointing_selects_blocks_in_every_stack_and_refuses_bad_values():
    lm = Seq2SeqLM(config(position="t5", n_encoder_layers=3))
    apply_memory_savers(lm.model, MemoryConfig(activation_checkpointing=[0, 2]))
    assert [sorted(s.checkpointed) for s in stacks_of(lm.model)] == [[0, 2], [0, 2]]
    apply_memory_savers(lm.model, MemoryConfig(activation_checkpointing="every:3"))
    assert [sorted(s.checkpointed) for s in stacks_of(lm.model)] == [[0], [0, 3]]
    apply_memory_savers(lm.model, MemoryConfig(activation_checkpointing=True))
    assert [len(s.checkpointed) for s in stacks_of(lm.model)] == [3, 4]

    with pytest.raises(ConfigError, match=r"model\.memory\.activation_checkpointing.*\[4, 9\].*below 4"):
        apply_memory_savers(lm.model, MemoryConfig(activation_checkpointing=[1, 4, 9]))
    for bad in ("every:0", "sometimes", [-1], [0.5], {"blocks": 2}):
        with pytest.raises(ConfigError, match=r"model\.memory\.activation_checkpointing takes false, true"):
            MemoryConfig(activation_checkpointing=bad)


# ---- freezing -------------------------------------------------------------------------------------------------


def test_frozen_parameters_leave_the_optimizer_and_stay_bit_identical(caplog):
    torch.manual_seed(0)
    lm = CausalLM(config(), memory=MemoryConfig(
        freeze_embeddings=True, freeze_layers=1, freeze_patterns=["stack.layers.*.ffn.down.*"]))
    before = {n: p.detach().clone() for n, p in lm.model.named_parameters()}
    with caplog.at_level(logging.INFO, logger="llm_modules"):
        trainer = fit(lm, batches(12), batch_size=4, steps=3)
    frozen = {n for n, p in lm.model.named_parameters() if not p.requires_grad}
    expected = {"embed.tokens.weight"} | {n for n in before if n.startswith("stack.layers.0.")} | {
        f"stack.layers.{i}.ffn.down.weight" for i in range(4)}
    assert frozen == expected
    for name, p in lm.model.named_parameters():
        if name in frozen:
            assert torch.equal(p, before[name]), f"{name} changed while frozen"
        else:
            assert not torch.equal(p, before[name]), f"{name} did not train"
    optimized = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert optimized == {id(p) for p in lm.parameters() if p.requires_grad}
    trainable = sum(p.numel() for p in lm.parameters() if p.requires_grad)
    total = sum(p.numel() for p in lm.parameters())
    assert any(f"training {trainable:,} of {total:,} parameters" in r.message for r in caplog.records), caplog.text


def test_freezing_tied_embeddings_freezes_the_head_and_says_so(caplog):
    lm = CausalLM(config(tie_embeddings=True, position="learned"))
    with caplog.at_level(logging.INFO, logger="llm_modules"):
        apply_memory_savers(lm.model, MemoryConfig(freeze_embeddings=True))
    assert not lm.model.head.proj.weight.requires_grad  # one tensor with the token table
    assert not lm.model.stack.position.table.weight.requires_grad  # learned positions: the embedding side
    assert lm.model.stack.layers[0].attn.q.weight.requires_grad
    assert "output head, which is tied" in caplog.text


def test_seq2seq_freeze_layers_counts_the_encoder_first():
    lm = Seq2SeqLM(config(position="t5", n_encoder_layers=2))
    apply_memory_savers(lm.model, MemoryConfig(freeze_layers=3))
    frozen_blocks = [all(not p.requires_grad for p in block.parameters())
                     for stack in (lm.model.encoder, lm.model.decoder) for block in stack.layers]
    assert frozen_blocks == [True, True, True, False, False, False]


def test_freezing_mistakes_name_the_field():
    lm = CausalLM(config())
    with pytest.raises(ConfigError, match=r"model\.memory\.freeze_patterns: 'layers\.\*' matches no parameter.*"
                                          r"e\.g\. embed\.tokens\.weight"):
        apply_memory_savers(lm.model, MemoryConfig(freeze_patterns=["layers.*"]))
    with pytest.raises(ConfigError, match=r"model\.memory\.freeze_layers=5 is more than the model's 4 blocks"):
        apply_memory_savers(lm.model, MemoryConfig(freeze_layers=5))
    with pytest.raises(ConfigError, match=r"model\.memory\.freeze_layers must be an integer >= 0"):
        MemoryConfig(freeze_layers=-1)
    with pytest.raises(ConfigError, match=r"model\.memory: every parameter is frozen"):
        apply_memory_savers(CausalLM(config()).model, MemoryConfig(freeze_patterns=["*"]))


# ---- gradient accumulation ------------------------------------------------------------------------------------


def test_accumulating_two_batches_of_4_equals_one_batch_of_8():
    """One optimizer step either way: same weights, same tokens seen, one schedule step; the
    throughput monitor counts the whole accumulated step's tokens."""
    torch.manual_seed(0)
    start = CausalLM(config(), optim={"warmup_steps": 2, "max_steps": 10})
    data = batches(24, length=16)
    results = {}
    for batch_size, accumulate in ((8, 1), (4, 2)):
        lm = copy.deepcopy(start)
        monitor = ThroughputMonitor(window=10)
        trainer = fit(lm, data, batch_size=batch_size, steps=3, accumulate_grad_batches=accumulate,
                      gradient_clip_val=1.0, callbacks=[monitor])
        results[accumulate] = (lm, trainer, monitor)
    (big, big_trainer, big_monitor), (acc, acc_trainer, acc_monitor) = results[1], results[2]
    for (name, p), q in zip(big.named_parameters(), acc.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-6, msg=name)
    assert big_trainer.global_step == acc_trainer.global_step == 3
    assert big.tokens_seen == acc.tokens_seen == 3 * 8 * 16
    lrs = [t.optimizers[0].param_groups[0]["lr"] for t in (big_trainer, acc_trainer)]
    assert lrs[0] == lrs[1] and t_scheduler_steps(big_trainer) == t_scheduler_steps(acc_trainer) == 3
    # Steps 2 and 3 are timed (the first is warm-up), each with all 8 rows of 16 tokens.
    for monitor in (big_monitor, acc_monitor):
        assert [s[0] for s in monitor._steps] == [8 * 16, 8 * 16]
    assert acc_monitor.last["perf/flops_per_token"] == big_monitor.last["perf/flops_per_token"]


def t_scheduler_steps(trainer) -> int:
    return trainer.lr_scheduler_configs[0].scheduler.last_epoch


# ---- torch.compile --------------------------------------------------------------------------------------------


def test_compile_in_configure_model_keeps_logits_and_names_and_trains():
    """aot_eager: TorchDynamo capture plus AOTAutograd's backward graph, without a C compiler
    (inductor works too, but compiles for about a minute on this 2-core CPU)."""
    torch.manual_seed(0)
    lm = CausalLM(config(n_layers=2), memory=MemoryConfig(compile={"backend": "aot_eager"}))
    plain = copy.deepcopy(lm)
    data = batches(8)
    ids = torch.stack([row["input_ids"] for row in data[:4]])  # the training batch's shape: one compilation
    lm.configure_model()  # what the trainer calls; compiles in place
    assert lm.model._compiled_call_impl is not None
    assert list(lm.state_dict()) == list(plain.state_dict())
    torch.testing.assert_close(lm(ids), plain(ids), rtol=1e-5, atol=1e-5)
    before = lm.model.stack.layers[0].attn.q.weight.detach().clone()
    fit(lm, data, batch_size=4, steps=2)
    assert not torch.equal(lm.model.stack.layers[0].attn.q.weight, before)
    assert torch.isfinite(lm.compute_loss({"input_ids": ids})["loss"])


def test_compile_settings_are_checked():
    assert MemoryConfig(compile=True).compile is True
    with pytest.raises(ConfigError, match=r"model\.memory\.compile: unknown torch\.compile keyword 'bakend'"):
        MemoryConfig(compile={"bakend": "eager"})
    with pytest.raises(ConfigError, match=r"model\.memory\.compile\.backend 'inductr' is not a torch\.compile backend"):
        MemoryConfig(compile={"backend": "inductr"})
    with pytest.raises(ConfigError, match=r"model\.memory\.compile takes false, true, or a mapping"):
        MemoryConfig(compile="fast")


def test_activation_checkpointing_twice_with_the_fsdp_strategy_is_refused():
    """The block-wrapped FSDP strategy checkpoints blocks itself; the model option on top would
    recompute every block twice, so the pair is refused naming both settings."""
    from types import SimpleNamespace

    from llm_modules import CausalLM, ModelConfig
    from llm_modules.registry import ConfigError
    from llm_modules.training.strategies import BlockFSDPStrategy

    lm = CausalLM(ModelConfig.from_preset("llama-tiny"), memory={"activation_checkpointing": True})
    lm._trainer = SimpleNamespace(strategy=BlockFSDPStrategy(activation_checkpointing=True))
    with pytest.raises(ConfigError, match="trainer.strategy.init_args.activation_checkpointing"):
        lm.configure_model()
    lm = CausalLM(ModelConfig.from_preset("llama-tiny"), memory={"activation_checkpointing": True})
    lm._trainer = SimpleNamespace(strategy=BlockFSDPStrategy(activation_checkpointing=False))
    lm.configure_model()
    assert [len(s.checkpointed) for s in stacks_of(lm.model)] == [lm.config.n_layers]
