"""The short commands (``llm-modules estimate``, ``generate``...: ``cli.SHORT_COMMANDS``) run with Python's
cycle collector off (its full collections while torch and torch._dynamo load cost 0.25 to 0.5 s of CPU)
and leave it as they found it; training commands keep it."""

from __future__ import annotations

import gc

from llm_modules.cli import estimate_cmd, main
from llm_modules.registry import ConfigError


def test_the_command_runs_without_the_cycle_collector_and_restores_it(monkeypatch, capsys):
    seen = []

    def resolve(args):
        seen.append(gc.isenabled())
        return {"plan": "stand-in"}

    monkeypatch.setattr(estimate_cmd, "resolve", resolve)
    assert gc.isenabled()
    assert main(["estimate", "--preset", "llama-7b", "--format", "json"]) == 0
    assert seen == [False] and gc.isenabled()
    assert "stand-in" in capsys.readouterr().out


def test_a_refusal_restores_the_collector_too(monkeypatch, capsys):
    def resolve(args):
        raise ConfigError("--seq-len 0 must be positive")

    monkeypatch.setattr(estimate_cmd, "resolve", resolve)
    assert main(["estimate", "--preset", "llama-7b"]) == 2
    assert gc.isenabled() and "--seq-len 0" in capsys.readouterr().err


def test_a_disabled_collector_stays_disabled(monkeypatch, capsys):
    monkeypatch.setattr(estimate_cmd, "resolve", lambda args: {})
    gc.disable()
    try:
        assert main(["estimate", "--preset", "llama-7b", "--format", "json"]) == 0
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_training_commands_keep_the_collector(monkeypatch):
    import llm_modules.cli as cli

    seen = []
    monkeypatch.setattr(cli, "_train_runner", lambda command: lambda argv: seen.append(gc.isenabled()) or 0)
    assert main(["validate", "--help"]) == 0
    assert seen == [True]
