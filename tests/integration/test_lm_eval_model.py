"""The lm-eval model over an llm-modules checkpoint (llm_modules.evaluation.lm_eval_model) answers lm-eval's
three request types exactly as lm-eval's own Hugging Face model does on the checkpoint's export: the same
log-likelihoods (1e-4) and greedy flags, empty contexts included, the same rolling log-likelihood over
several windows, the same greedy generations, for a CausalLM and a T5-style Seq2SeqLM; generation in
batches equals generation one prompt at a time, seeded sampling repeats; a PrefixLM reads the context as
its prefix; bad input is refused in one line; ``lm_eval --model llm-modules`` is registered by the
installed hook and runs local tasks with the accuracies ``hf`` gets. Skipped without lm-eval (the ``eval``
extra)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch


pytest.importorskip("lm_eval")
pytest.importorskip("accelerate")  # lm-eval's HF model needs it

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def trained(quickstart_checkpoint, tmp_path_factory):
    """A fit quickstart checkpoint and its Hugging Face export."""
    from llm_modules.cli import main

    root = tmp_path_factory.mktemp("lm_eval")
    ckpt = quickstart_checkpoint
    assert main(["export", str(ckpt), str(root / "hf")]) == 0
    return ckpt, root / "hf"


@pytest.fixture(scope="module")
def models(trained):
    from lm_eval.models.huggingface import HFLM

    from llm_modules.evaluation.lm_eval_model import LLMModulesLM

    ckpt, folder = trained
    ours = LLMModulesLM(str(ckpt), batch_size=3)
    return ours, _one_decoder(ours, HFLM(pretrained=str(folder), batch_size=3, device="cpu"))


def _one_decoder(ours, hf):
    """hf decoding its tokens with our tokenizer's decoder: generated texts then compare the tokens.
    transformers' and SentencePiece's decoders render invalid UTF-8 (byte pieces strung together by a
    barely trained model) differently, which says nothing about either model."""
    own = hf.tok_decode  # still what names the EOS string (one id)

    def decode(tokens, skip_special_tokens=True):
        return own(tokens, skip_special_tokens) if isinstance(tokens, int) else ours.tok_decode(tokens)

    hf.tok_decode = decode
    return hf


def _untrained(cls, trained, **config):
    """A small model of kind ``cls`` with large random weights (decisive greedy choices) and the
    quickstart's tokenizer: kinds other than CausalLM without another fit."""
    from llm_modules.checkpoint import load_checkpoint

    torch.manual_seed(0)
    base = dict(vocab_size=320, d_model=32, n_layers=2, n_heads=4, norm="rmsnorm", residual="pre", bias=False,
                max_seq_len=64, init_std=0.3)
    lm = cls(config={**base, **config}).eval()
    lm.tokenizer_bytes = load_checkpoint(trained[0]).tokenizer_bytes
    return lm


@pytest.fixture(scope="module")
def t5(trained, tmp_path_factory):
    """A T5-style Seq2SeqLM and its export: ours and lm-eval's hf (seq2seq backend) on it. The head is
    tied: lm-eval's hf calls ``tie_weights()`` after loading, which under transformers 5 ties a T5's
    head to its embedding even when the export's config says otherwise."""
    from lm_eval.models.huggingface import HFLM

    from llm_modules import Seq2SeqLM, to_hf
    from llm_modules.evaluation.lm_eval_model import LLMModulesLM

    lm = _untrained(Seq2SeqLM, trained, n_encoder_layers=2, position="t5", attention_scale=1.0, pad_token_id=0,
                    activation={"name": "geglu", "approximate": "tanh"}, tie_embeddings=True)
    folder = tmp_path_factory.mktemp("t5") / "hf"
    to_hf(lm, folder)
    ours = LLMModulesLM(module=lm, batch_size=3)
    return ours, _one_decoder(ours, HFLM(pretrained=str(folder), batch_size=3, device="cpu"))


def _requests(kind: str, args: list[tuple]):
    from lm_eval.api.instance import Instance

    return [Instance(kind, {}, a, i) for i, a in enumerate(args)]


PAIRS = [("def foo(x):", " return x"), ("import os\n", "import sys"), ("class A", ":\n    pass"),
         ("", "hello world"), ("x = 1 ", "+ 2"), ("class A", ":"), ("class A", "(")]
GENERATE = [("def main(", {"until": ["\n"], "max_gen_toks": 12}), ("import", {"until": [")"], "max_gen_toks": 8}),
            ("for i in", {"until": [":"], "max_gen_toks": 10}), ("x", {"until": ["\n\n"], "max_gen_toks": 6}),
            ("class Point:\n    def", {"until": ["\n"], "max_gen_toks": 12})]
# the same options: generated together in left-padded batches (by both models)
GENERATE += [(p, {"until": ["\n\n"], "max_gen_toks": 8}) for p in ("def", "import os", "x = ", "for i in range(3):",
                                                                     "class Point:\n    def __init__(self")]


def _assert_same_loglikelihoods(ours, hf):
    got = ours.loglikelihood(_requests("loglikelihood", PAIRS), disable_tqdm=True)
    expected = hf.loglikelihood(_requests("loglikelihood", PAIRS), disable_tqdm=True)
    for (score, greedy), (ref, ref_greedy) in zip(got, expected):
        assert score == pytest.approx(ref, abs=1e-4) and greedy == ref_greedy


def test_loglikelihoods_equal_lm_evals_hf_model(models):
    _assert_same_loglikelihoods(*models)


def test_rolling_loglikelihood_over_several_windows_equals_lm_evals(models):
    ours, hf = models
    text = [("def f():\n    return 1\n" * 30,)]
    assert len(ours.tok_encode(text[0][0])) > 2 * ours.max_length  # several windows
    got = ours.loglikelihood_rolling(_requests("loglikelihood_rolling", text), disable_tqdm=True)
    expected = hf.loglikelihood_rolling(_requests("loglikelihood_rolling", text), disable_tqdm=True)
    assert got[0] == pytest.approx(expected[0], abs=1e-3)


def test_greedy_generation_stops_where_lm_evals_does(models):
    ours, hf = models
    assert ours.generate_until(_requests("generate_until", GENERATE)) == hf.generate_until(
        _requests("generate_until", GENERATE))


def test_seq2seq_scores_and_generates_as_lm_evals_hf_seq2seq_model(t5):
    ours, hf = t5
    assert hf.backend == "seq2seq" and ours.backend == "seq2seq"
    _assert_same_loglikelihoods(ours, hf)
    text = [("def f():\n    return 1\n" * 10,)]
    assert ours.loglikelihood_rolling(_requests("loglikelihood_rolling", text))[0] == pytest.approx(
        hf.loglikelihood_rolling(_requests("loglikelihood_rolling", text), disable_tqdm=True)[0], abs=1e-3)
    got = ours.generate_until(_requests("generate_until", GENERATE))
    # hf lets a seq2seq decoder run to (padded context width + max_gen_toks) tokens; `max_length` (decoder
    # start token + max_gen_toks) holds it to max_gen_toks new tokens, what ours generates for every kind
    held = [(c, {**o, "max_length": o["max_gen_toks"] + 1}) for c, o in GENERATE]
    assert got == hf.generate_until(_requests("generate_until", held))
    assert any(got), "every generation is empty: the comparison would say little"


def test_hugging_face_folder_with_a_bos_adding_tokenizer_equals_lm_evals(tmp_path):
    """A Llama-style folder whose tokenizer puts BOS before every text (``from_hf``): contexts are
    encoded as transformers encodes them, so the scores and generations are hf's."""
    from lm_eval.models.huggingface import HFLM

    from _hf_tokenizer_helpers import write_llama_folder
    from llm_modules.evaluation.lm_eval_model import LLMModulesLM

    folder = write_llama_folder(tmp_path / "llama")
    ours, hf = LLMModulesLM(str(folder), batch_size=3), HFLM(pretrained=str(folder), batch_size=3, device="cpu")
    assert ours.tok_encode("Hello world")[0] == ours.prefix_token_id == hf.prefix_token_id  # BOS
    _assert_same_loglikelihoods(ours, hf)
    prompts = [("The quick", {"until": ["."], "max_gen_toks": 6}), ("Hello", {"max_gen_toks": 5})]
    assert ours.generate_until(_requests("generate_until", prompts)) == hf.generate_until(
        _requests("generate_until", prompts))


def test_batched_generation_equals_one_prompt_at_a_time(trained, t5):
    from llm_modules.evaluation.lm_eval_model import LLMModulesLM

    requests = [*GENERATE, ("", {"until": ["\n"], "max_gen_toks": 5}), ("def main(", {"max_gen_toks": 7})]
    for lm in (LLMModulesLM(str(trained[0]), batch_size=4), t5[0]):
        batched = lm.generate_until(_requests("generate_until", requests))
        lm.batch_size, size = 1, lm.batch_size
        try:
            assert lm.generate_until(_requests("generate_until", requests)) == batched
        finally:
            lm.batch_size = size


def test_more_new_tokens_than_the_window_generates_half_of_it(models, caplog):
    """lm-eval's hf asserts when max_gen_toks leaves no room for the context; ours generates at most half
    the model's length after the context's last half, and says so."""
    ours, _ = models
    window = ours.max_length
    request = [("def main(" * 40, {"until": ["\u2603"], "max_gen_toks": window + 10})]
    text = ours.generate_until(_requests("generate_until", request))[0]
    assert len(ours.tok_encode(text, add_special_tokens=False)) <= window // 2 + 2  # re-encoding may split pieces
    assert f"max_gen_toks={window + 10} leaves no room" in caplog.text


def test_sampling_repeats_with_a_seed(trained):
    from llm_modules.evaluation.lm_eval_model import LLMModulesLM

    options = {"until": ["\n\n"], "max_gen_toks": 8, "do_sample": True, "temperature": 1.5, "top_k": 50}
    repeats = [("def main(", dict(options))] * 4  # lm-eval's `repeats` (self-consistency): the same request k times

    def samples(seed):
        lm = LLMModulesLM(str(trained[0]), batch_size=2, seed=seed)
        return lm.generate_until(_requests("generate_until", repeats))

    first = samples(7)
    assert samples(7) == first
    assert len(set(first)) > 1, "repeats of one request must be different samples"
    assert samples(8) != first


def test_bfloat16_weights_score_close_to_float32(trained, models):
    from llm_modules.evaluation.lm_eval_model import LLMModulesLM

    half = LLMModulesLM(str(trained[0]), batch_size=3, dtype="bfloat16")
    assert next(half.module.parameters()).dtype == torch.bfloat16
    got = half.loglikelihood(_requests("loglikelihood", PAIRS), disable_tqdm=True)
    full = models[0].loglikelihood(_requests("loglikelihood", PAIRS), disable_tqdm=True)
    for (score, _), (ref, _) in zip(got, full):
        assert score == pytest.approx(ref, rel=0.05, abs=0.5)


def test_prefix_lm_reads_the_context_as_its_prefix(trained):
    from llm_modules import PrefixLM
    from llm_modules.evaluation.lm_eval_model import LLMModulesLM

    lm = _untrained(PrefixLM, trained)
    ours = LLMModulesLM(module=lm, batch_size=2)
    context = ours.tok_encode("def foo(x):")
    continuations = [ours.tok_encode(text) for text in (" return x", " pass", " x")]
    alone = ours._loglikelihood_tokens([(None, context, continuations[0])])  # one row
    together = ours._loglikelihood_tokens([(None, context, c) for c in continuations])  # the context read once
    for continuation, (score, _) in zip(continuations, together):
        ids = torch.tensor([context + continuation[:-1]])
        with torch.no_grad():
            bidirectional = lm(ids, prefix_lengths=torch.tensor([len(context)])).log_softmax(-1)
            causal = lm(ids).log_softmax(-1)
        span = slice(len(context) - 1, ids.shape[1])
        target = torch.tensor(continuation)[:, None]
        assert score == pytest.approx(float(bidirectional[0, span].gather(-1, target).sum()), abs=1e-4)
        assert score != pytest.approx(float(causal[0, span].gather(-1, target).sum()), abs=1e-3)
    assert alone[0][0] == pytest.approx(together[0][0], abs=1e-4)


def test_bad_input_is_refused_in_one_line(trained, models, tmp_path):
    from llm_modules import MaskedLM
    from llm_modules.evaluation.lm_eval_model import LLMModulesLM
    from llm_modules.registry import ConfigError

    ckpt = str(trained[0])
    cases = [
        (lambda: LLMModulesLM(module=_untrained(MaskedLM, trained)), "MaskedLM (encoder-only)"),
        (lambda: LLMModulesLM(), "give either pretrained=PATH"),
        (lambda: LLMModulesLM(ckpt, module=models[0].module), "give either pretrained=PATH"),
        (lambda: LLMModulesLM(ckpt, pretraind=ckpt), "did you mean 'pretrained'?"),
        (lambda: LLMModulesLM(str(tmp_path / "missing.ckpt")), "does not exist"),
        (lambda: LLMModulesLM(ckpt, batch_size="many"), "batch_size='many'"),
        (lambda: LLMModulesLM(ckpt, dtype="bfloat"), "(did you mean 'bfloat16'?)"),
        (lambda: models[0].generate_until(_requests("generate_until", [("x", {"until": ["\n"], "min_p": 0.1})])),
         "['min_p'] are not supported"),
    ]
    for call, message in cases:
        with pytest.raises(ConfigError) as err:
            call()
        assert message in str(err.value) and "\n" not in str(err.value)


def test_installed_hook_registers_the_model_beside_lm_evals_own(tmp_path):
    """What the wheel installs at the top of site-packages (the .pth and its module), processed as
    Python processes a site folder at start-up: lm_eval is not imported until asked for, then
    ``llm-modules`` is registered next to lm-eval's built-in models (``hf``, ``dummy``)."""
    site_dir = tmp_path / "site"
    site_dir.mkdir()
    for name in ("llm_modules_lm_eval.pth", "llm_modules_lm_eval.py"):
        shutil.copy(REPO / name, site_dir / name)
    probe = (
        f"import site, sys; site.addsitedir({str(site_dir)!r})\n"
        "assert 'lm_eval' not in sys.modules and 'torch' not in sys.modules\n"
        "from lm_eval.api.registry import model_registry, get_model\n"
        "get_model('dummy')\n"
        "print(sorted(n for n in ('llm-modules', 'hf', 'dummy') if n in model_registry))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the copies, not the checkout
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, env=env,
                         cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[-2] == "['dummy', 'hf', 'llm-modules']"


def _write_tasks(folder: Path) -> None:
    """A multiple-choice task (scored by log-likelihood) and a generative one (exact match), each with
    local JSONL data: nothing is downloaded."""
    folder.mkdir()
    mc = [{"question": f"x = {i} +", "choices": [" 1", " 2", " x", " y"], "label": i % 4} for i in range(6)]
    gen = [{"prompt": p, "answer": "x"} for p in ("def f(", "import ", "class A", "for i in ")]
    for name, rows in (("mc", mc), ("gen", gen)):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    common = (f"dataset_path: json\ndataset_kwargs:\n  cache_dir: {folder / 'cache'}\n  data_files:\n"
              "    test: {data}\ntest_split: test\n")
    (folder / "tiny_mc.yaml").write_text(
        "task: tiny_mc\n" + common.format(data=folder / "mc.jsonl") + "output_type: multiple_choice\n"
        "doc_to_text: '{{question}}'\ndoc_to_choice: '{{choices}}'\ndoc_to_target: label\n"
        "metric_list:\n  - metric: acc\n")
    (folder / "tiny_gen.yaml").write_text(
        "task: tiny_gen\n" + common.format(data=folder / "gen.jsonl") + "output_type: generate_until\n"
        "doc_to_text: '{{prompt}}'\ndoc_to_target: '{{answer}}'\n"
        "generation_kwargs:\n  until: ['\\n', ')']\n  max_gen_toks: 6\n"
        "metric_list:\n  - metric: exact_match\n")


def test_lm_eval_command_line_runs_llm_modules_with_hfs_accuracies(trained, tmp_path, monkeypatch):
    """``lm_eval --model llm-modules`` (lm-eval's own command-line entry, in this process: a subprocess
    would cost ~12 s) on local tasks, against ``lm_eval --model hf`` on the export. lm-eval's ~10,000
    bundled task files are left unindexed (9 s a run): only the test's own tasks are asked for."""
    import functools

    import lm_eval.tasks
    import llm_modules_lm_eval
    from lm_eval.__main__ import cli_evaluate

    llm_modules_lm_eval.install()  # what the installed .pth does at start-up
    monkeypatch.setattr(lm_eval.tasks, "TaskManager",
                        functools.partial(lm_eval.tasks.TaskManager, include_defaults=False))
    _write_tasks(tmp_path / "tasks")
    ckpt, folder = trained
    results = {}
    for model, path in (("llm-modules", ckpt), ("hf", folder)):
        out = tmp_path / model
        monkeypatch.setattr(sys, "argv", [
            "lm_eval", "--model", model, "--model_args", f"pretrained={path}", "--tasks", "tiny_mc,tiny_gen",
            "--include_path", str(tmp_path / "tasks"), "--batch_size", "4", "--device", "cpu",
            "--output_path", str(out)])
        cli_evaluate()
        (written,) = out.glob("**/results_*.json")
        results[model] = json.loads(written.read_text())["results"]
    ours, hf = results["llm-modules"], results["hf"]
    assert ours["tiny_mc"]["acc,none"] == hf["tiny_mc"]["acc,none"]
    assert ours["tiny_gen"]["exact_match,none"] == hf["tiny_gen"]["exact_match,none"]
