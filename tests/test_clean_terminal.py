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
