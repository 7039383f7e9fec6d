"""A normal ``fit`` prints no noise (issue 19, section 6): no "Epoch 0/-2" progress bar when
steps bound the run, no always-zero FLOPs in the model summary, no cloud-logger tip, no
deprecation warning from Lightning's own code. One real process, so that warnings reach stderr
as a user sees them (pytest would capture them in-process)."""

from __future__ import annotations

from _fit_helpers import CONFIGS, launch, tiny, write_corpus

NOISE = ("Epoch 0/-2", "FLOPs", "Flops", "💡", "litlogger", "litmodels", "LeafSpec", "Traceback")


def test_a_tiny_fit_prints_no_noise(tmp_path):
    corpus = write_corpus(tmp_path / "corpus", files=12)
    args = tiny(CONFIGS / "quickstart.yaml", corpus, tmp_path / "cache",
                "--trainer.enable_progress_bar", "true", "--trainer.enable_model_summary", "true",
                "--trainer.val_check_interval", "3", steps=3)
    printed = launch(["fit", *args], cwd=tmp_path, env={"COLUMNS": "160"}, timeout=240).stdout
    for noise in NOISE:
        assert noise not in printed, f"{noise!r} in:\n{printed[-4000:]}"
    assert "Epoch 0 · step 3/3" in printed  # the bar counts steps instead
    assert "Total params" in printed and "Trainable params" in printed  # the summary itself stays


def test_the_bar_keeps_lightnings_epoch_total_when_epochs_bound_the_run():
    from types import SimpleNamespace

    from llm_modules.training.terminal import StepProgressBar

    bar = StepProgressBar()
    bar._trainer = SimpleNamespace(max_epochs=3, max_steps=-1, global_step=0)
    assert bar._get_train_description(1).strip() == "Epoch 1/2"
    bar._trainer = SimpleNamespace(max_epochs=-1, max_steps=600, global_step=5)
    assert bar._get_train_description(0).strip() == "Epoch 0 · step 5/600"


def test_the_plain_text_summary_drops_the_flops_too(monkeypatch):
    import logging

    from llm_modules.training.terminal import PlainSummary

    logged = []
    monkeypatch.setattr(logging.getLogger("lightning.pytorch.callbacks.model_summary"), "info", logged.append)
    data = [(" ", ["0"]), ("Name", ["model"]), ("Type", ["DecoderLM"]), ("Params", ["25.1 K"]), ("Mode", ["train"]),
            ("FLOPs", ["0"])]
    PlainSummary.summarize(data, 25100, 25100, 0.1, {"train": 26, "eval": 0}, 0)
    assert len(logged) == 1 and "Total params" in logged[0] and "DecoderLM" in logged[0]
    assert "FLOPs" not in logged[0] and "Flops" not in logged[0]
