"""No command replaces an existing output without ``--overwrite`` (issue 19, section 2).

Every command that writes (convert both ways, export in its three formats, quantize, tokenizer train,
generate --output) refuses an existing output in one line (exit 2) naming the path and the flag,
leaving it byte-identical; with ``--overwrite`` it replaces it. A folder output is replaced only
when it holds nothing but a model folder's files, and a failed write leaves what was there.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from _fit_helpers import write_corpus
from _output_helpers import checkpoint_with_tokenizer, lora_checkpoint, tree
from llm_modules import from_hf, to_hf
from llm_modules.atomic_files import replacing
from llm_modules.checkpoint import load_checkpoint
from llm_modules.cli import main

KEEP = b"keep me\n"


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("inputs")
    ckpt = checkpoint_with_tokenizer(root / "m.ckpt")
    hf = to_hf(load_checkpoint(ckpt), root / "hf")
    return SimpleNamespace(ckpt=str(ckpt), lora=str(lora_checkpoint(root / "lora.ckpt", ckpt)), hf=str(hf),
                           corpus=str(write_corpus(root / "corpus", files=5)))


# (name, argv for an output at OUT, whether OUT is a folder)
CASES = [
    ("convert from-hf", lambda m, out: ["convert", "from-hf", m.hf, out], False),
    ("convert to-hf", lambda m, out: ["convert", "to-hf", m.ckpt, out], True),
    ("export hf", lambda m, out: ["export", m.ckpt, out], True),
    ("export ckpt", lambda m, out: ["export", m.lora, out, "--format", "ckpt", "--merge"], False),
    ("export adapter", lambda m, out: ["export", m.lora, out, "--format", "adapter"], False),
    ("quantize", lambda m, out: ["quantize", m.ckpt, out, "--method", "int8-weight"], False),
    ("tokenizer train", lambda m, out: ["tokenizer", "train", m.corpus, "--out", out, "--vocab-size", "400",
                                        "--num-sentinels", "2"], False),
    ("generate --output", lambda m, out: ["generate", m.ckpt, "--prompt-ids", "5 6", "--max-new-tokens", "2",
                                          "--output", out], False),
]
SUFFIX = {"export adapter": ".safetensors", "tokenizer train": ".model", "generate --output": ".jsonl"}


def one_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def model_folder(folder: Path, made: SimpleNamespace) -> Path:
    """An earlier export in ``folder``, plus a stale shard of an older model and a model card."""
    shutil.copytree(made.hf, folder)
    (folder / "model-00002-of-00002.safetensors").write_bytes(b"an older model's shard")
    (folder / "README.md").write_text("# my model\n")
    return folder


@pytest.mark.parametrize("name, argv, folder", CASES, ids=[c[0] for c in CASES])
def test_an_existing_output_is_replaced_only_with_overwrite(made, tmp_path, capsys, name, argv, folder):
    out = tmp_path / ("out" if folder else "out" + SUFFIX.get(name, ".ckpt"))
    if folder:
        model_folder(out, made)
    else:
        out.write_bytes(KEEP)
    before = tree(tmp_path)

    assert main(argv(made, str(out))) == 2
    line = one_line(capsys)
    assert str(out) in line and "--overwrite" in line, line
    assert tree(tmp_path) == before, "a refused command changed the output"

    assert main([*argv(made, str(out)), "--overwrite"]) == 0, capsys.readouterr().err
    if folder:
        assert not (out / "model-00002-of-00002.safetensors").exists(), "the older model's shard would load too"
        assert (out / "README.md").read_text() == "# my model\n"
        assert (out / "tokenizer.model").is_file()
        from_hf(out)  # loads: the folder holds one model
    else:
        assert out.read_bytes() != KEEP
    assert not [p.name for p in tmp_path.rglob(".*")], "temporary files left behind"


@pytest.mark.parametrize("command", [["convert", "to-hf"], ["export"]], ids=["convert to-hf", "export hf"])
def test_a_folder_that_is_not_a_model_folder_is_refused_even_with_overwrite(made, tmp_path, capsys, command):
    out = tmp_path / "project"
    (out / "src").mkdir(parents=True)
    (out / "notes.txt").write_text("mine\n")
    (out / "config.json").write_text("{}\n")
    before = tree(tmp_path)
    for extra in ([], ["--overwrite"]):
        assert main([*command, made.ckpt, str(out), *extra]) == 2
        line = one_line(capsys)
        assert str(out) in line and "'notes.txt'" in line and "'src/'" in line and "even with --overwrite" in line
        assert tree(tmp_path) == before


def test_a_checkpoint_beside_the_output_folder_is_never_overwritten(made, tmp_path, capsys):
    """to-hf into the folder that holds the checkpoint: the folder is not a model folder."""
    ckpt = tmp_path / "m.ckpt"
    shutil.copy(made.ckpt, ckpt)
    assert main(["convert", "to-hf", str(ckpt), str(tmp_path), "--overwrite"]) == 2
    assert "'m.ckpt'" in one_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.ckpt"]


def test_new_and_empty_folders_need_no_flag(made, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["convert", "to-hf", made.ckpt, str(tmp_path / "empty")]) == 0
    assert main(["convert", "to-hf", made.ckpt, str(tmp_path / "new" / "deeper")]) == 0
    assert tree(tmp_path / "empty") == tree(tmp_path / "new" / "deeper")


def test_file_outputs_refuse_a_folder_and_folder_outputs_refuse_a_file(made, tmp_path, capsys):
    (tmp_path / "dir").mkdir()
    (tmp_path / "file").write_bytes(KEEP)
    assert main(["convert", "from-hf", made.hf, str(tmp_path / "dir"), "--overwrite"]) == 2
    assert "is a folder" in one_line(capsys)
    assert main(["convert", "to-hf", made.ckpt, str(tmp_path / "file"), "--overwrite"]) == 2
    assert "is a file" in one_line(capsys)
    assert (tmp_path / "file").read_bytes() == KEEP and not any((tmp_path / "dir").iterdir())


def test_overwrite_without_output_is_refused(made, capsys):
    assert main(["generate", made.ckpt, "--prompt-ids", "5", "--max-new-tokens", "1", "--overwrite"]) == 2
    assert "--overwrite is for --output" in one_line(capsys)


class Boom(RuntimeError):
    pass


def test_a_failed_folder_export_leaves_the_old_model_folder_as_it_was(made, tmp_path, monkeypatch):
    out = model_folder(tmp_path / "out", made)
    before = tree(tmp_path)

    def half_then_fail(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half a model")
        raise Boom("disk went away")

    monkeypatch.setattr("llm_modules.interop.hf_io.save_file", half_then_fail)
    with pytest.raises(Boom):
        main(["convert", "to-hf", made.ckpt, str(out), "--overwrite"])
    assert tree(tmp_path) == before
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "the staging folder was left behind"
    with pytest.raises(Boom):
        main(["export", made.ckpt, str(tmp_path / "new" / "deeper")])
    assert not (tmp_path / "new").exists(), "a failed export left folders it had created"


def test_a_failed_file_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "out.jsonl"
    target.write_bytes(KEEP)
    with pytest.raises(Boom), replacing(target) as tmp:
        tmp.write_bytes(b"half")
        raise Boom
    assert target.read_bytes() == KEEP and [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]


def test_the_python_api_removes_nothing_it_did_not_write(made, tmp_path):
    """``to_hf`` in Python writes its files and leaves every other file alone (only the CLI, after
    checking the folder holds one model, prunes an older model's files)."""
    (tmp_path / "adapter.safetensors").write_bytes(KEEP)
    (tmp_path / "notes.txt").write_bytes(KEEP)
    to_hf(load_checkpoint(made.ckpt), tmp_path)
    assert (tmp_path / "adapter.safetensors").read_bytes() == KEEP and (tmp_path / "notes.txt").read_bytes() == KEEP
    assert (tmp_path / "model.safetensors").is_file()
