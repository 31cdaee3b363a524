"""The good set's own audit: a "good" image that scores far outside the others (a defect slipped in).

Each good image is scored against the memory of the others (leave-one-out); an image whose score lies far
above the rest, by a robust z-score (median and MAD), is named so the user can look at it.
"""
from __future__ import annotations

import numpy as np

OUTLIER_Z = 3.5  # Iglewicz and Hoaglin's cut for the modified z-score


def outlier_goods(scores, names: list[str], z_cut: float = OUTLIER_Z) -> list[dict]:
    """Good images whose leave-one-out score is far above the others', worst first: {name, score, z, message}."""
    scores = np.asarray(scores, dtype=float)
    if len(scores) < 4:
        return []
    median = np.median(scores)
    spread = 1.4826 * np.median(np.abs(scores - median)) or (np.std(scores) or 1.0)
    z = (scores - median) / spread
    found = [{"name": names[i], "score": float(scores[i]), "z": round(float(z[i]), 1),
              "message": f"good image {names[i]} scores far outside the other good images ({scores[i]:.2f}, typical "
                         f"{median:.2f}): it may show a defect; look at it, and remove it if it does"}
             for i in np.argsort(-z) if z[i] > z_cut]
    return found
