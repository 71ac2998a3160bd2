"""Event text made inert for chat receivers: a run message can say anything, and Slack or
Teams must show it as text, never as a mention, a link, formatting or reordered characters.

Registered as template filters (consumers/notify/templating.py), so that the shipped Slack and
Teams templates apply them to every value that comes from an event, a run or a rule match:

    slack  Slack's control characters `&`, `<`, `>` as `&amp;`, `&lt;`, `&gt;` (the only three
           Slack decodes; api.slack.com/reference/surfaces/formatting#escaping), so
           `<!channel>` or `<https://evil|re-login>` arrive as text. The templates put such
           values in `plain_text` objects, where `*bold*`, `_italic_`, `:emoji:` and bare URLs
           are not formatted either.
    plain  for Adaptive Card TextRun (Teams), whose `text` is never read as Markdown; only
           the character clean-up below.

Both drop the Unicode bidirectional embedding, override and isolate controls (which can show
`exe.txt` for `txt.exe`) and other C0/C1 control characters but tab and newline;
`oneline=True` also turns line breaks into spaces, for titles and labels. `limit` cuts the
result to that many characters without splitting an escape.
"""

from __future__ import annotations

import re
from typing import Any

# LRE RLE PDF LRO RLO (U+202A-E), LRI RLI FSI PDI (U+2066-9); C0 but \t \n, DEL and C1.
_UNSAFE = re.compile("[\u202a-\u202e\u2066-\u2069\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x84\x86-\x9f]")
_BREAKS = re.compile("\r\n|[\r\n\x85\u2028\u2029]")
_SLACK = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;"})
_ENTITY_TAIL = re.compile(r"&[a-z]{0,3}$")


def _clean(value: Any, oneline: bool) -> str:
    text = "" if value is None else str(value)
    text = _BREAKS.sub(" " if oneline else "\n", text)
    return _UNSAFE.sub("", text)


def _cut(text: str, limit: int | None, escaped: bool) -> str:
    if limit is None or len(text) <= limit:
        return text
    cut = text[: max(limit - 1, 0)]
    if escaped:
        cut = _ENTITY_TAIL.sub("", cut)  # never end inside "&amp;"
    return cut + "…"


def slack(value: Any, limit: int | None = None, oneline: bool = False) -> str:
    return _cut(_clean(value, oneline).translate(_SLACK), limit, escaped=True)


def plain(value: Any, limit: int | None = None, oneline: bool = False) -> str:
    return _cut(_clean(value, oneline), limit, escaped=False)
