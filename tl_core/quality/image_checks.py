"""Pictures a person would want to look at again before training: blank or near-empty ones, blurry ones, and ones
enlarged more than twice to the model's input size. Each finding names the file and the reason; nothing is dropped.

Blank: almost no contrast (grey-level standard deviation under BLANK_STD) or nearly all black or all white (mean
under DARK_MEAN or over BRIGHT_MEAN, of 255); one such picture, mean brightness 1.4, was the only mistake of every
run on a materials set. Blurry: the variance of the Laplacian (the usual focus measure) under BLUR_SHARE of the
set's median, so a set of soft pictures is judged against itself, not against an absolute number; measured at
a common scale (shorter side FOCUS_SIDE) so large and small pictures compare. Enlarged: the shorter side times
UPSCALE_LIMIT still under the input size: the model then sees interpolated pixels, not detail.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ..data.datasets import Dataset, ImageRefused, open_image
from ..ops.storage import DamagedFile, atomic_write_json, read_json, workspace_root

BLANK_STD = 4.0
DARK_MEAN = 8.0
BRIGHT_MEAN = 247.0
BLUR_SHARE = 0.1
UPSCALE_LIMIT = 2.0
FOCUS_SIDE = 128
_MIN_FOR_BLUR = 5  # "blurrier than the others" needs others


def measure(image: Image.Image) -> dict:
    """A picture's mean grey level, its contrast (standard deviation) and its focus (variance of the Laplacian)."""
    grey = image.convert("L")
    if min(grey.size) > FOCUS_SIDE:
        scale = FOCUS_SIDE / min(grey.size)
        grey = grey.resize((max(1, round(grey.width * scale)), max(1, round(grey.height * scale))),
                           Image.Resampling.BILINEAR)
    pixels = np.asarray(grey, dtype=np.float32)
    laplacian = (pixels[1:-1, :-2] + pixels[1:-1, 2:] + pixels[:-2, 1:-1] + pixels[2:, 1:-1]
                 - 4 * pixels[1:-1, 1:-1]) if min(pixels.shape) >= 3 else np.zeros(1, np.float32)
    return {"mean": float(pixels.mean()), "std": float(pixels.std()), "focus": float(laplacian.var())}


def image_findings(dataset: Dataset, input_size: int, progress=None) -> list[dict]:
    """Every finding of the dataset's pictures: {"path", "label", "problem": blank | blurry | enlarged, "reason"}."""
    findings, measured = [], []
    kept = _kept_measures(dataset)
    n_kept = len(kept)
    for done, item in enumerate(dataset.items, 1):
        short = min(item["width"], item["height"])
        if short * UPSCALE_LIMIT < input_size:
            findings.append(_finding(item, "enlarged", f"{item['width']}×{item['height']} px, enlarged "
                                                       f"{input_size / short:.1f}× to the model's {input_size} px"))
        numbers = kept.get(item.get("sha256") or "")
        if numbers is None:
            try:
                numbers = measure(open_image(dataset.root / item["path"], draft_size=2 * FOCUS_SIDE))
            except (ImageRefused, OSError) as error:
                findings.append(_finding(item, "unreadable", str(error)))
                continue
            if item.get("sha256"):
                kept[item["sha256"]] = numbers
        blank = _blank_reason(numbers)
        if blank:
            findings.append(_finding(item, "blank", blank))
        else:  # a blank picture has no focus to speak of: it is not also called blurry
            measured.append((item, numbers["focus"]))
        if progress:
            progress(done, len(dataset.items))
    if len(measured) >= _MIN_FOR_BLUR:
        median = float(np.median([focus for _, focus in measured]))
        for item, focus in measured:
            if focus < BLUR_SHARE * median:
                findings.append(_finding(item, "blurry", f"sharpness {focus:.0f}, under {BLUR_SHARE:.0%} of the "
                                                         f"set's typical {median:.0f} (variance of the Laplacian)"))
    if len(kept) > n_kept:
        _keep_measures(dataset, kept)
    return findings


# A picture's numbers depend only on its bytes: kept on disk by content hash, per dataset version, so a dataset is
# looked at once, not at every server start, in every server process, or when a cache in memory lets it go.
# (Issue 26: 30 students' first Data visits each decoded their whole set, about 0.1 s of server CPU a set.)
def _measures_file(dataset: Dataset) -> Path:
    return workspace_root() / "cache" / "image_checks" / f"{dataset.id}.json"


def _kept_measures(dataset: Dataset) -> dict:
    try:
        kept = read_json(_measures_file(dataset), {})
    except (DamagedFile, OSError):
        return {}  # a damaged cache is measured again, and rewritten
    return {sha: numbers for sha, numbers in kept.items() if isinstance(numbers, dict)} if isinstance(kept, dict) else {}


def _keep_measures(dataset: Dataset, kept: dict) -> None:
    try:
        _measures_file(dataset).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(_measures_file(dataset), kept)
    except OSError:
        pass  # a cache: a full or read-only disk only means the pictures are looked at again next time


def _blank_reason(numbers: dict) -> str | None:
    if numbers["mean"] < DARK_MEAN:
        return f"nearly black (mean brightness {numbers['mean']:.1f} of 255)"
    if numbers["mean"] > BRIGHT_MEAN:
        return f"nearly white (mean brightness {numbers['mean']:.1f} of 255)"
    if numbers["std"] < BLANK_STD:
        return f"almost no contrast (standard deviation {numbers['std']:.1f} of 255)"
    return None


def _finding(item: dict, problem: str, reason: str) -> dict:
    return {"path": str(Path(item["path"]).as_posix()).removeprefix("images/"), "label": item["label"],
            "problem": problem, "reason": reason}


def summary(findings: list[dict]) -> list[str]:
    """One sentence per kind of problem, with how many pictures and the first few named."""
    words = {"blank": "blank or nearly empty", "blurry": "much blurrier than the others",
             "enlarged": "enlarged more than 2× to the model's input size", "unreadable": "unreadable now"}
    sentences = []
    for problem, meaning in words.items():
        named = [finding["path"] for finding in findings if finding["problem"] == problem]
        if named:
            more = f" and {len(named) - 3} more" if len(named) > 3 else ""
            picture = "picture is" if len(named) == 1 else "pictures are"
            sentences.append(f"{len(named)} {picture} {meaning}: {', '.join(named[:3])}{more}. They are kept; "
                             "look at them below.")
    return sentences
