"""Sources: every kind of ``paths`` entry, the embedded stdlib corpus, and a clear error for each bad input."""

from __future__ import annotations

import json
import os

import pytest

from llm_modules.data.sources import (
    STDLIB,
    inputs_fingerprint,
    iter_documents,
    resolve_paths,
    stdlib_files,
    stdlib_root,
)
from llm_modules.registry import ConfigError


@pytest.fixture
def tree(tmp_path, monkeypatch):
    """A small corpus: nested directories, a hidden folder, a cache folder, JSONL and a binary-ish file."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "corpus" / "sub" / "deeper").mkdir(parents=True)
    (tmp_path / "corpus" / ".git").mkdir()
    (tmp_path / "corpus" / "__pycache__").mkdir()
    (tmp_path / "corpus" / "a.py").write_text("print('a')\n")
    (tmp_path / "corpus" / "notes.md").write_text("# notes\n")
    (tmp_path / "corpus" / "image.png").write_bytes(b"\x89PNG")
    (tmp_path / "corpus" / "sub" / "b.txt").write_text("bee\n")
    (tmp_path / "corpus" / "sub" / "deeper" / "c.py").write_text("c = 3\n")
    (tmp_path / "corpus" / ".git" / "config.txt").write_text("hidden\n")
    (tmp_path / "corpus" / "__pycache__" / "x.py").write_text("cached\n")
    rows = [{"text": "first doc", "id": 1}, {"text": "second doc", "id": 2}]
    (tmp_path / "docs.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    return tmp_path


def ids(files):
    return [f.source_id for f in files]


def test_single_file(tree):
    files = resolve_paths(["corpus/a.py"])
    assert ids(files) == ["corpus/a.py"]
    assert [d.text for d in iter_documents(files)] == ["print('a')\n"]


def test_directory_is_recursive_with_default_pattern(tree):
    files = resolve_paths(["corpus"])
    assert ids(files) == ["corpus/a.py", "corpus/notes.md", "corpus/sub/b.txt", "corpus/sub/deeper/c.py"]
    assert all(f.path.is_absolute() for f in files)


def test_directory_with_pattern(tree):
    assert ids(resolve_paths(["corpus"], pattern="*.py")) == ["corpus/a.py", "corpus/sub/deeper/c.py"]
    assert ids(resolve_paths(["corpus"], pattern=["*.txt", "*.md"])) == ["corpus/notes.md", "corpus/sub/b.txt"]
    assert ids(resolve_paths(["corpus"], pattern="sub/*/*.py")) == ["corpus/sub/deeper/c.py"]


def test_glob(tree):
    assert ids(resolve_paths(["corpus/**/*.py"])) == ["corpus/a.py", "corpus/sub/deeper/c.py"]


def test_jsonl_documents(tree):
    files = resolve_paths(["docs.jsonl"])
    assert files[0].kind == "jsonl"
    docs = list(iter_documents(files))
    assert [(d.source_id, d.text) for d in docs] == [("docs.jsonl#1", "first doc"), ("docs.jsonl#2", "second doc")]


def test_jsonl_custom_text_field(tree):
    (tree / "qa.jsonl").write_text(json.dumps({"body": "hello"}) + "\n")
    docs = list(iter_documents(resolve_paths(["qa.jsonl"], text_field="body")))
    assert [d.text for d in docs] == ["hello"]


def test_entries_are_deduplicated_in_order(tree):
    files = resolve_paths(["corpus/sub/b.txt", "corpus", "docs.jsonl"])
    assert ids(files)[0] == "corpus/sub/b.txt"
    assert len(files) == len({f.path for f in files}) == 5


def test_python_stdlib_excludes_tests():
    files = resolve_paths([STDLIB])
    names = ids(files)
    assert len(files) > 300
    assert "python-stdlib/json/decoder.py" in names
    assert all(n.startswith("python-stdlib/") and n.endswith(".py") for n in names)
    for n in names:
        parts = n.split("/")[1:-1]
        assert not {"test", "tests", "idle_test", "site-packages", "__pycache__"} & set(parts), n
    root = stdlib_root()
    assert (root / "json").is_dir()
    # ids do not depend on where the interpreter lives: the split and the cache keys stay put
    assert files[0].path.is_relative_to(root)


def test_stdlib_name_is_case_insensitive():
    assert ids(resolve_paths(["Python-Stdlib"]))[:3] == ids(stdlib_files())[:3]


def test_fingerprint_follows_content_changes(tree):
    files = resolve_paths(["corpus"])
    before = inputs_fingerprint(files, text_field="text")
    assert inputs_fingerprint(resolve_paths(["corpus"]), text_field="text") == before
    assert inputs_fingerprint(files, text_field="body") != before
    target = tree / "corpus" / "a.py"
    target.write_text("print('changed')\n")
    st = target.stat()
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert inputs_fingerprint(files, text_field="text") != before


# ---- errors: each names the field and the fix -----------------------------------------------------------


def test_empty_list(tree):
    with pytest.raises(ConfigError, match=r"data\.paths: no data given.*python-stdlib"):
        resolve_paths([])


def test_missing_path_names_the_entry(tree):
    with pytest.raises(ConfigError, match=r"data\.paths\[1\]: 'nope\.txt' does not exist.*python-stdlib"):
        resolve_paths(["corpus", "nope.txt"])


def test_custom_field_and_index(tree):
    with pytest.raises(ConfigError, match=r"data\.mixture\[0\]\.paths\[3\]: 'gone' does not exist"):
        resolve_paths(["gone"], field="data.mixture[0].paths", first_index=3)


def test_glob_matching_nothing(tree):
    with pytest.raises(ConfigError, match=r"data\.paths\[0\]: glob 'corpus/\*\.rs' matches nothing"):
        resolve_paths(["corpus/*.rs"])


def test_glob_matching_only_unwanted_dirs(tree):
    (tree / "empty_dir").mkdir()
    with pytest.raises(ConfigError, match=r"data\.paths\[0\]: glob 'empty_\*' matches no files.*data\.pattern"):
        resolve_paths(["empty_*"])


def test_directory_without_matching_files(tree):
    with pytest.raises(ConfigError, match=r"data\.paths\[0\]: directory 'corpus' has no files matching \*\.rs.*data\.pattern"):
        resolve_paths(["corpus"], pattern="*.rs")


def test_empty_pattern(tree):
    with pytest.raises(ConfigError, match="data.pattern is empty"):
        resolve_paths(["corpus"], pattern=[])


def test_jsonl_missing_field_names_key_line_and_fix(tree):
    (tree / "bad.jsonl").write_text(json.dumps({"text": "ok"}) + "\n" + json.dumps({"content": "x", "id": 3}) + "\n")
    files = resolve_paths(["corpus/a.py", "bad.jsonl"])
    with pytest.raises(ConfigError, match=r"data\.paths\[1\]: .*bad\.jsonl' line 2 has no 'text' field "
                                          r"\(its keys: content, id\); set data\.text_field"):
        list(iter_documents(files))


def test_jsonl_invalid_json(tree):
    (tree / "broken.jsonl").write_text('{"text": "fine"}\n{"text": oops}\n')
    with pytest.raises(ConfigError, match=r"data\.paths\[0\]: .*line 2 is not valid JSON"):
        list(iter_documents(resolve_paths(["broken.jsonl"])))


def test_jsonl_non_string_text(tree):
    (tree / "nums.jsonl").write_text('{"text": 5}\n')
    with pytest.raises(ConfigError, match="field 'text' holds a int, expected a string"):
        list(iter_documents(resolve_paths(["nums.jsonl"])))
    (tree / "list.jsonl").write_text('[1, 2]\n')
    with pytest.raises(ConfigError, match="is a JSON list, expected an object"):
        list(iter_documents(resolve_paths(["list.jsonl"])))
