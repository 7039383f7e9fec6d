"""PPO end to end (``llm_modules.alignment.PPO``): it learns a toy reward up to the KL-regularized
optimum and no further, stops an update on the policy KL, takes the trainer's gradient clipping
over, uses the base with LoRA switched off as its reference (no copy), rebuilds a full fine-tune's
reference from the recorded base, scores with a RewardModel checkpoint, and runs from
configs/align/ppo.yaml through ``llm-modules fit``.

The toy task runs on a tiny fresh CausalLM over 16 tokens whose reward is the share of token 5 in
an 8-token response. A fresh model's next-token distribution is near uniform, so the reward starts
near 1/16, and the KL-regularized optimum is known in closed form: with a per-token reward of 1/8
for token 5 and penalty coefficient beta = 0.05, the optimal policy is the reference tilted by
exp(r / beta) (Ziegler et al. 2019, eq. 2), i.e. token 5 with probability
e^2.5 / (e^2.5 + 15) = 0.448, at a KL of 0.59 nats per token (4.7 per response).
"""

from __future__ import annotations

import lightning as L
import pytest
import torch
import yaml
from torch.utils.data import DataLoader

from llm_modules.alignment import PPO, RewardModel
from llm_modules.alignment.reward_source import build_reward
from llm_modules.alignment.toy_rewards import token_share, word_share
from llm_modules.checkpoint import load_checkpoint, save_checkpoint
from llm_modules.cli import main
from llm_modules.data.rl_prompts import RLPromptDataModule
from llm_modules.registry import ConfigError

from _finetune_helpers import base  # noqa: F401  (the fixture)
from _fit_helpers import CONFIGS, REPO, metric_rows

TOY = dict(vocab_size=16, d_model=32, n_layers=2, n_heads=2, n_kv_heads=2, d_ff=64, max_seq_len=32)
TARGET = 5
PROMPTS = REPO / "tests" / "data" / "prompts"
PPO_YAML = CONFIGS / "align" / "ppo.yaml"
LORA = {"name": "lora", "r": 4, "alpha": 8, "targets": ["*.q", "*.v"]}


def toy_ppo(seed: int = 0, **options) -> PPO:
    torch.manual_seed(seed)
    ppo = {"seed": seed, "max_new_tokens": 8, "minibatch_size": 8, "kl": {"coef": 0.05}, **options}
    return PPO(TOY, reward={"name": token_share, "token_id": TARGET}, ppo=ppo,
               optim={"lr": 1e-3, "warmup_steps": 0, "weight_decay": 0.0, "schedule": "constant"})


def prompt_batches(rollouts: int, batch: int = 16) -> DataLoader:
    """Random 3-token prompts (no EOS: every response is 8 tokens)."""
    prompts = torch.randint(1, TOY["vocab_size"], (rollouts * batch, 3), generator=torch.Generator().manual_seed(0))
    return DataLoader([{"prompt_ids": p, "prompt_mask": torch.ones_like(p)} for p in prompts], batch_size=batch)


class Figures(L.Callback):
    """Each rollout batch's ``ppo/*`` figures, and what the module clips at."""

    def __init__(self):
        self.rows: list[dict[str, float]] = []
        self.clipping = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.rows.append({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("ppo/")})
        self.clipping = pl_module._clipping()

    def series(self, name: str) -> list[float]:
        return [row[name] for row in self.rows]


def fit(module, data, callbacks=(), **trainer_options) -> Figures:
    figures = Figures()
    options = dict(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                   enable_model_summary=False, accelerator="cpu", num_sanity_val_steps=0)
    options.update(trainer_options)
    trainer = L.Trainer(callbacks=[figures, *callbacks], **options)
    if isinstance(data, L.LightningDataModule):
        trainer.fit(module, datamodule=data)
    else:
        trainer.fit(module, data)
    figures.trainer = trainer
    return figures


def test_ppo_raises_a_toy_reward_to_the_kl_regularized_optimum():
    """30 rollout batches of 16: the share of token 5 goes from ~1/16 to the optimum's 0.45 (module
    docstring), not to 1, and the KL to the reference stays near the optimum's 4.7 nats."""
    figures = fit(toy_ppo(), prompt_batches(30))
    reward, kl = figures.series("ppo/reward"), figures.series("ppo/kl")
    first, last = sum(reward[:2]) / 2, sum(reward[-10:]) / 10
    print(f"toy PPO: reward {first:.3f} -> {last:.3f} (last 10 of 30), KL max {max(kl):.2f}, "
          f"last 10 {sum(kl[-10:]) / 10:.2f} nats per response")
    assert len(reward) == 30 and kl[0] == pytest.approx(0.0, abs=1e-6)  # the first batch samples the reference
    assert reward[0] < 0.15, reward  # the fresh model: ~1/16
    assert 0.3 < last < 0.6, reward  # clearly up, and held below 1 by the KL penalty
    assert max(kl) < 15.0 and sum(kl[-10:]) / 10 < 8.0, kl  # (seeds 0-3: at most 10.0 on the way)
    assert all(e == 4.0 for e in figures.series("ppo/epochs_run"))


def test_update_stops_early_on_the_policy_kl_and_clipping_is_taken_over():
    """With a tiny target_kl the update stops at the second minibatch: the first always steps, its
    ratio being exactly 1 (same function, dropout off). The trainer's gradient_clip_val, which
    Lightning refuses under manual optimization, is PPO's to apply during fit and back after."""
    stopped = fit(toy_ppo(target_kl=1e-6), prompt_batches(1), gradient_clip_val=0.5)
    assert stopped.series("ppo/epochs_run") == [0.5]  # 1 of 2 minibatches per epoch, of 4 epochs
    assert stopped.series("ppo/policy_kl")[0] > 0
    assert stopped.clipping == (0.5, "norm") and stopped.trainer.gradient_clip_val == 0.5
    full = fit(toy_ppo(max_grad_norm=0.25), prompt_batches(1))
    assert full.series("ppo/epochs_run") == [4.0] and full.clipping == (0.25, "norm")
    assert full.trainer.global_step == 8  # Lightning counts optimizer updates: 4 epochs x 2 minibatches
    with pytest.raises(ConfigError, match="trainer.accumulate_grad_batches=2"):
        fit(toy_ppo(), prompt_batches(1), accumulate_grad_batches=2)
    with pytest.raises(ConfigError, match="spike_guard"):
        PPO(TOY, reward=token_share, stability={"spike_guard": True})


def test_lora_ppo_uses_the_base_with_adapters_off_as_its_reference(base, tmp_path):
    """No copy of the weights; the reference's log-probabilities are the base's after training
    moved the policy; adapter-only checkpoints keep the value head and load back."""
    ppo = PPO(init_from=str(base.checkpoint), peft=LORA, reward={"name": word_share, "word": "see"},
              ppo={"max_new_tokens": 6, "minibatch_size": 4, "ppo_epochs": 2}, optim={"lr": 1e-2, "warmup_steps": 0})
    assert ppo.reference_model is None
    base_model = load_checkpoint(base.checkpoint)
    assert ppo.num_parameters() == base_model.num_parameters() + sum(
        p.numel() for p in ppo.parameters() if p.requires_grad) - sum(p.numel() for p in ppo.value_head.parameters())
    data = RLPromptDataModule(str(PROMPTS / "ppo.txt"), batch_size=8)
    figures = fit(ppo, data, limit_train_batches=2)
    assert len(figures.rows) == 2 and figures.trainer.global_step == 8

    batch = next(iter(data.train_dataloader()))
    rollout = ppo.rollout(batch, seed=0)
    samples = rollout.samples
    with torch.no_grad():
        logits = base_model(samples.sequences, samples.attention_mask)
        width, n = samples.prompt_width, samples.responses.shape[1]
        expected = torch.log_softmax(logits[:, width - 1 : width - 1 + n].float(), -1).gather(
            -1, samples.responses.unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(rollout.ref_logprobs, expected, atol=1e-5)
    assert not torch.allclose(rollout.logprobs, rollout.ref_logprobs, atol=1e-3), "the policy has moved"

    path = save_checkpoint(ppo, tmp_path / "ppo.ckpt")
    state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    assert {k for k in state if not k.startswith("model.")} == {"value_head.proj.weight", "value_head.proj.bias"}
    assert all(".lora_" in k for k in state if k.startswith("model."))
    loaded = load_checkpoint(path)
    assert type(loaded) is PPO and loaded.rollouts == 2
    assert torch.equal(loaded.value_head.proj.weight, ppo.value_head.proj.weight)


def test_a_full_checkpoint_rebuilds_the_reference_from_its_recorded_base(base, tmp_path):
    """Without PEFT the reference is a frozen copy of the start. A full checkpoint names no base in
    its hyper-parameters, so loading builds the module from nothing: the copy comes back from the
    base the checkpoint recorded, not from the loaded (trained) policy."""
    ppo = PPO(init_from=str(base.checkpoint), reward={"name": word_share, "word": "see"},
              ppo={"max_new_tokens": 6, "minibatch_size": 4, "ppo_epochs": 1}, optim={"lr": 1e-3, "warmup_steps": 0})
    assert ppo.reference_model is not None and not ppo.reference_model.training
    data = RLPromptDataModule(str(PROMPTS / "ppo.txt"), batch_size=8)
    fit(ppo, data, limit_train_batches=1)
    path = save_checkpoint(ppo, tmp_path / "full.ckpt")
    loaded = load_checkpoint(path)
    batch = next(iter(data.train_dataloader()))
    ours, theirs = ppo.rollout(batch, seed=1), loaded.rollout(batch, seed=1)
    assert torch.equal(ours.samples.sequences, theirs.samples.sequences)
    assert torch.allclose(ours.ref_logprobs, theirs.ref_logprobs, atol=1e-5)
    assert not torch.allclose(theirs.logprobs, theirs.ref_logprobs, atol=1e-4)


def test_a_reward_model_checkpoint_scores_the_rollouts_and_a_separate_critic_trains(base, tmp_path):
    reward_model = RewardModel(init_from=str(base.checkpoint))
    reward_path = save_checkpoint(reward_model, tmp_path / "reward.ckpt")
    ppo = PPO(init_from=str(base.checkpoint), reward=str(reward_path), peft=LORA,
              ppo={"max_new_tokens": 6, "minibatch_size": 4, "ppo_epochs": 1, "critic": "separate"},
              optim={"lr": 1e-2, "warmup_steps": 0})
    assert ppo.value_head is None and ppo.trained_beside_peft == ("critic",)
    critic_before = ppo.critic.head.proj.bias.detach().clone()
    data = RLPromptDataModule(str(PROMPTS / "ppo.txt"), batch_size=8)
    fit(ppo, data, limit_train_batches=1)
    assert not torch.equal(ppo.critic.head.proj.bias, critic_before)

    rollout = ppo.rollout(next(iter(data.train_dataloader())), seed=0)
    with torch.no_grad():
        expected = reward_model.score(rollout.samples.sequences, rollout.samples.attention_mask)
    assert torch.allclose(rollout.scores, expected, atol=1e-5)
    state = torch.load(save_checkpoint(ppo, tmp_path / "ppo.ckpt"), map_location="cpu", weights_only=True)["state_dict"]
    assert any(k.startswith("critic.head.") for k in state) and not any(k.startswith("value_head") for k in state)

    # a reward model on a prefix decoder reads the prompt as its (bidirectional) prefix
    prefix_model = RewardModel(base.config, backbone="PrefixLM")
    ppo.reward_source = build_reward(str(save_checkpoint(prefix_model, tmp_path / "prefix-reward.ckpt")))
    ppo.reward_source.load(ppo)
    rollout = ppo.rollout(next(iter(data.train_dataloader())), seed=0)
    samples = rollout.samples
    with torch.no_grad():
        lengths = samples.attention_mask[:, : samples.prompt_width].sum(1)
        expected = prefix_model.score(samples.sequences, samples.attention_mask, lengths)
        causal_reading = prefix_model.score(samples.sequences, samples.attention_mask, torch.zeros_like(lengths))
    assert torch.allclose(rollout.scores, expected, atol=1e-5) and not torch.allclose(expected, causal_reading)

    not_a_reward_model = PPO(init_from=str(base.checkpoint), reward=str(base.checkpoint))
    with pytest.raises(ConfigError, match="holds a CausalLM, not a RewardModel"):
        not_a_reward_model.reward_source.load(not_a_reward_model)


def cli_args(base_ckpt, *extra: str, rollouts: int = 2) -> list[str]:
    return ["--config", str(PPO_YAML), "--model.init_args.init_from", str(base_ckpt),
            "--data.init_args.prompts_file", str(PROMPTS / "ppo.txt"),
            "--data.init_args.val_prompts_file", str(PROMPTS / "ppo-val.txt"),
            "--model.init_args.ppo.max_new_tokens", "6", "--trainer.max_epochs", "1",
            "--trainer.limit_train_batches", str(rollouts), "--trainer.enable_progress_bar", "false",
            "--trainer.enable_model_summary", "false", *extra]


def test_ppo_yaml_parses_and_builds_its_model(base, tmp_path, monkeypatch, capsys):
    from lightning import LightningDataModule

    from llm_modules.cli.train import LLMCLI, trainer_defaults
    from llm_modules.models import LanguageModel

    monkeypatch.chdir(tmp_path)
    assert main(["fit", *cli_args(base.checkpoint), "--print_config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["class_path"] == "llm_modules.alignment.PPO"
    assert printed["model"]["init_args"]["reward"]["name"] == "llm_modules.alignment.toy_rewards:word_share"
    cli = LLMCLI(LanguageModel, LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
                 args=cli_args(base.checkpoint, "--trainer.accelerator", "cpu"), run=False,
                 trainer_defaults=trainer_defaults(), auto_configure_optimizers=False)
    assert type(cli.model) is PPO and cli.model.config == base.config
    assert cli.model.peft_method.name == "lora" and cli.model.reference_model is None
    assert cli.model.ppo.kl.coef == 0.05 and cli.model.ppo.minibatch_size == 4


def test_ppo_fit_from_the_cli_logs_and_resumes(base, tmp_path, monkeypatch):
    """Two rollout batches through ``llm-modules fit``: the validation rollouts before training are
    the step-0 baseline, the checkpoint is adapter-only with the value head and loads as PPO, and a
    resumed run continues the rollout count."""
    monkeypatch.chdir(tmp_path)
    assert main(["fit", *cli_args(base.checkpoint)]) == 0
    run = tmp_path / "runs" / "llm" / "version_0"
    val = metric_rows(run, "val/reward")
    assert len(val) == 2 and val[0][0] == 0
    assert len(metric_rows(run, "ppo/reward")) == 2 and metric_rows(run, "ppo/clip_fraction")
    last = run / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, map_location="cpu", weights_only=True)
    assert checkpoint["finetune"]["adapter_only"] and checkpoint["ppo_state"]["rollouts"] == 2
    assert "value_head.proj.weight" in checkpoint["state_dict"]
    assert type(load_checkpoint(last)) is PPO
    assert main(["fit", *cli_args(base.checkpoint, "--ckpt_path", str(last), "--trainer.max_epochs", "2")]) == 0
    resumed = torch.load(tmp_path / "runs" / "llm" / "version_1" / "checkpoints" / "last.ckpt", map_location="cpu",
                         weights_only=True)
    assert resumed["ppo_state"]["rollouts"] == 4
