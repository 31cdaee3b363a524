"""Many pictures at once: the pictures of a zip (read safely, member by member), a row of predictions per picture
(with 'looks like none of these', tl_core.use.novelty) and the CSV of those rows."""
from __future__ import annotations

import csv
import io

from ..data.datasets import ImageRefused
from ..data.datasets.ingest import zip_members

# Predicted in the app's own process: enough for a class's worth of photos, small enough to answer in a minute on a CPU
MAX_PICTURES = 500
CSV_COLUMNS = ("file", "predicted", "probability", "second", "second_probability", "unlike_training", "distance")


def zip_pictures(data: bytes, label: str = "archive", max_pictures: int = MAX_PICTURES) -> tuple[list, list[dict]]:
    """The files of a zip as (name, bytes), and the members refused, each with its reason: a link, an escaping path,
    a zip bomb, or one past `max_pictures` (said, never dropped silently). Folders and system clutter are passed by."""
    pictures, refused = [], []
    with zip_members(data, label) as (files, _folders):
        for member in files:
            if member.refusal:  # first: an escaping "../" path is said, never passed by as a hidden file
                refused.append({"name": member.name, "reason": member.refusal})
            elif any(part.startswith(".") or part.lower() in ("__macosx", "thumbs.db", "desktop.ini")
                     for part in member.parts):
                continue
            elif len(pictures) >= max_pictures:
                refused.append({"name": member.name, "reason": f"past the {max_pictures} pictures predicted at once"})
            else:
                try:
                    pictures.append((member.name, member.read()))
                except ImageRefused as error:
                    refused.append({"name": member.name, "reason": error.reason})
    return pictures, refused


def prediction_rows(names: list[str], probabilities, classes: list[str], scores=None, unlike=None) -> list[dict]:
    """A row per picture: its best two classes with their probabilities and, when measured, its distance to the
    training pictures and whether that makes it unlike all of them."""
    rows = []
    for index, (name, probs) in enumerate(zip(names, probabilities)):
        order = probs.argsort(descending=True).tolist() if hasattr(probs, "argsort") else []
        row = {"file": name, "predicted": classes[order[0]], "probability": round(float(probs[order[0]]), 4),
               "second": classes[order[1]] if len(order) > 1 else "",
               "second_probability": round(float(probs[order[1]]), 4) if len(order) > 1 else None,
               "unlike_training": bool(unlike[index]) if unlike is not None else None,
               "distance": round(float(scores[index]), 4) if scores is not None else None}
        rows.append(row)
    return rows


def rows_csv(rows: list[dict]) -> bytes:
    """The rows as a CSV (UTF-8, a header line; an unmeasured value is an empty cell, a file name that starts like a
    spreadsheet formula starts with a quote)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows({key: _cell(value) for key, value in row.items()} for row in rows)
    return buffer.getvalue().encode("utf-8")


def _cell(value):
    """An empty cell for an unmeasured value; a name a spreadsheet would run as a formula is quoted as text."""
    if value is None:
        return ""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value
