"""User-supplied text shown safely: class, file, dataset and run names as plain text inside Streamlit markdown."""
from __future__ import annotations

import re

_AUTOLINK_STARTS = re.compile(r"(?i)(?<=:)(?=//)|(?<=www)(?=\.)|(?=@)")
_ASCII_PUNCTUATION = re.compile(r"([!-/:-@\[-`{-~])")


def literal(value) -> str:
    """`value` (a class, file, dataset or run name, a message that quotes one) as plain text in Streamlit markdown.

    Titles, captions, alerts, widget labels, image captions and progress texts all render markdown: a
    dataset named "![z](https://host/?leak=x)" would make every visitor's browser fetch that address.
    Every ASCII punctuation mark is escaped (links, images, HTML, colours, maths, icons), and a word
    joiner breaks the web addresses GitHub-flavoured markdown links by itself ("https://", "www.", "a@b").
    """
    text = " ".join(str(value).split())  # a newline would start a new markdown block
    text = _AUTOLINK_STARTS.sub("\u2060", text)
    return _ASCII_PUNCTUATION.sub(r"\\\1", text)


def code(value) -> str:
    """`value` as inline code: literal by markdown's own rules (nothing inside a code span is markup)."""
    return "`" + " ".join(str(value).split()).replace("`", "'") + "`"
