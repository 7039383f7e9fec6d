"""PII scrubbing: e-mail addresses, card numbers, IP addresses and phone numbers become tags.

Why these choices:

- **Order**: e-mail addresses first (an address may hold digits that look like a phone), then IPv6
  (an IPv4-mapped IPv6 address ends in a dotted quad), then one pass over runs of digits that tries,
  at each position, a card number first, then IPv4, then a phone number: a 16-digit card written in
  groups of four would otherwise read as a phone number. Tags contain no digits, so no pattern
  matches inside an earlier replacement.
- **Cards** are 13 to 19 digits, optionally grouped by single spaces or dashes, that pass the Luhn
  check; a Luhn-invalid 16-digit number (an order id, a timestamp) is not a card (it is then tried as
  a phone number, and being too long for one, left alone). A Luhn-valid 13-19 digit number is
  scrubbed even if it is something else: one in ten random numbers of that length pass the check.
- **IPv4** is four dot-separated octets 0-255, not part of a longer dotted run. A four-part version
  such as ``1.2.3.4`` *is* a valid address and is scrubbed: a leaked address costs more than a
  rewritten version string, and versions are usually three parts (left alone), five parts (left
  alone) or prefixed (``v1.2.3.4``, left alone: a letter before the digits means it is not an
  address).
- **IPv6** candidates are checked with :mod:`ipaddress` and must contain a digit; a compressed form
  (``::``) also needs a group of three or more hex digits. So ``Foo::bar``, slices like ``a[1::2]``,
  clock times and MAC addresses are not addresses, and neither is the loopback ``::1`` (the same on
  every machine, nothing personal); ``fe80::1`` and ``2001:db8::7334`` are.
- **Phones**: international (``+`` country code, 8 to 15 digits in total), North American
  (``(555) 123-4567``, ``555-123-4567``, ``555.123.4567``, ``555 123 4567``) and national
  trunk-prefixed numbers (``030 1234567``, ``06 12 34 56 78``, ``020 7946 0958``: a leading 0, groups
  separated by spaces, dots, dashes or a slash, 9 to 12 digits). Years, prices, versions, dates
  (``2024-01-15``, ``01.02.2023``: too few digits), plain digit runs and short numbers do not match.

Speed: Python's regex engine scans fastest when a pattern starts with a known set of characters, so
each pattern begins with a lookahead for its first character, e-mail addresses are found from their
``@``, and IPv6 runs only on documents with two colons close together.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable

from llm_modules.data.prepare.config import DEFAULT_TAGS, PII_KINDS, PIIConfig

_EMAIL_LOCAL = re.compile(r"[A-Za-z0-9._%+-]{1,64}\Z")
_EMAIL_DOMAIN = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,}\b")
_IPV6_HINT = re.compile(r":[0-9A-Fa-f]{0,4}:")
_IPV6 = re.compile(
    r"(?=[0-9A-Fa-f:])(?<![\w:.])(?:[0-9A-Fa-f]{1,4}:|:){1,7}"
    r"(?:(?:\d{1,3}\.){3}\d{1,3}|[0-9A-Fa-f]{1,4}|:)(?![\w:]|\.\w)"
)
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_DIGIT_KINDS = {
    "card_number": r"(?P<card_number>\d(?:[ -]?\d){12,18})(?!\d|-\d)",
    "ip_address": rf"(?P<ip_address>{_OCTET}(?:\.{_OCTET}){{3}})(?!\.?\d|\w)",
    "phone": (
        r"(?P<phone>\+\d{1,3}(?:[ .-]?\(\d{1,4}\))?(?:[ .-]?\d{1,5}){2,6}"  # international
        r"|\(\d{3}\)[ .-]?\d{3}[ .-]\d{4}"  # (555) 123-4567
        r"|\d{3}(?P<sep>[.-])\d{3}(?P=sep)\d{4}"  # 555-123-4567, 555.123.4567
        r"|\d{3} \d{3} \d{4}"  # 555 123 4567
        r"|0\d{1,4}(?:[ ./-]\d{2,8}){1,4})"  # national, trunk prefix 0
        r"(?![\w-]|\.\d)"
    ),
}
_LEFT = r"(?=[\d+(])(?<![\w+.@-])"  # a first character that can start one, not inside a word or number


def _digit_pattern(kinds: list[str]) -> re.Pattern:
    return re.compile(_LEFT + "(?:" + "|".join(_DIGIT_KINDS[k] for k in kinds) + ")")


_PHONE_ONLY = _digit_pattern(["phone"])


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _phone_ok(s: str) -> bool:
    n = sum(ch.isdigit() for ch in s)
    if s.startswith("+"):
        return 8 <= n <= 15
    if s.startswith("0"):
        return 9 <= n <= 12
    return n == 10


def _ipv6_ok(candidate: str) -> bool:
    if not any(c.isdigit() for c in candidate):
        return False
    if "::" in candidate and not any(len(g) >= 3 for g in candidate.split(":")):
        return False
    try:
        ipaddress.IPv6Address(candidate)
    except ValueError:
        return False
    return True


class Scrubber:
    """Replaces the configured kinds of PII and counts the replacements of each kind."""

    def __init__(self, config: PIIConfig):
        self.tags = {**DEFAULT_TAGS, **config.tags}
        wanted = set(config.kinds) if config.enabled else set()
        self.kinds = [k for k in PII_KINDS if k in wanted]
        self.email = "email" in wanted
        self.ipv6 = "ip_address" in wanted
        digit_kinds = [k for k in ("card_number", "ip_address", "phone") if k in wanted]  # the order matters
        self.digits = _digit_pattern(digit_kinds) if digit_kinds else None
        self.phone = "phone" in wanted

    def __call__(self, text: str) -> tuple[str, dict[str, int]]:
        counts: dict[str, int] = {}
        if self.email and "@" in text:
            text = self._emails(text, counts)
        if self.ipv6 and _IPV6_HINT.search(text):
            text = self._sub(_IPV6, text, counts, lambda m: "ip_address" if _ipv6_ok(m.group()) else None)
        if self.digits is not None:
            text = self._sub(self.digits, text, counts, self._digit_kind)
        return text, counts

    def _digit_kind(self, m: re.Match) -> str | None:
        kind = m.lastgroup if m.lastgroup != "sep" else "phone"
        if kind == "card_number":
            digits = m.group().replace(" ", "").replace("-", "")
            return kind if luhn_ok(digits) else None
        if kind == "phone":
            return kind if _phone_ok(m.group()) else None
        return kind

    def _sub(self, pattern: re.Pattern, text: str, counts: dict[str, int],
             kind_of: Callable[[re.Match], str | None]) -> str:
        def replace(m: re.Match) -> str:
            kind = kind_of(m)
            if kind is None:
                if m.lastgroup == "card_number" and self.phone:  # not a card: maybe a phone number inside
                    return self._sub(_PHONE_ONLY, m.group(), counts, self._digit_kind)
                return m.group()
            counts[kind] = counts.get(kind, 0) + 1
            return self.tags[kind]
        return pattern.sub(replace, text)

    def _emails(self, text: str, counts: dict[str, int]) -> str:
        pieces, last, n = [], 0, 0
        at = text.find("@")
        while at != -1:
            local = _EMAIL_LOCAL.search(text, max(last, at - 64), at)
            domain = _EMAIL_DOMAIN.match(text, at + 1)
            if local is not None and domain is not None:
                start = local.start()
                while start < at and not text[start].isalnum():  # an address starts with a letter or digit
                    start += 1
                if start < at:
                    pieces.append(text[last:start])
                    pieces.append(self.tags["email"])
                    last = domain.end()
                    n += 1
                    at = text.find("@", last)
                    continue
            at = text.find("@", at + 1)
        if not n:
            return text
        pieces.append(text[last:])
        counts["email"] = n
        return "".join(pieces)
