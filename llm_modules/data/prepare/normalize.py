"""Text normalisation: the first stage, so every later rule and hash sees one canonical form.

Why first: two copies of a page that differ only in ``\\r\\n`` versus ``\\n``, trailing blanks or
full-width letters are the same document; normalising before the filters, the exact-duplicate hash
and the n-gram hashes makes them compare equal. NFKC is optional because it also rewrites
characters some corpora want to keep (superscripts, ligatures, compatibility ideographs).
"""

from __future__ import annotations

import unicodedata

from llm_modules.data.prepare.config import NormalizeConfig


def normalize(text: str, config: NormalizeConfig) -> str:
    if config.nfkc:
        text = unicodedata.normalize("NFKC", text)
    if config.newlines and "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if config.strip:
        text = text.strip()
    return text
