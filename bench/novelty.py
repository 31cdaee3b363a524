"""'Looks like none of these' (tl_core.use.novelty) measured: the share of pictures flagged, for held-out pictures of
the trained classes, of clothing classes the model never saw, and of far pictures (textures, noise), at the 95th
and 99th percentile thresholds. Fashion-MNIST (Debian's dataset-fashion-mnist), 4 classes trained (20 a class,
head only, default backbone and image size), over several draws.

    python bench/novelty.py [--draws 3] [--per-class 20]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tl_core.__main__ import main as cli  # noqa: E402
from tl_core.anomaly.synthetic import good_image  # noqa: E402
from tl_core.data.datasets import open_image  # noqa: E402
from tl_core.data.sample_data import write_fashion_mnist_folder  # noqa: E402
from tl_core.use import novelty  # noqa: E402
from tl_core.use.predict import Predictor  # noqa: E402

TRAINED = ("Trouser", "Bag", "Sneaker", "Dress")


def pictures(folder: Path, classes) -> list:
    return [open_image(path) for name in classes for path in sorted((folder / name).glob("*.png"))]


def far_pictures(seed: int, n: int = 30) -> list:
    rng = np.random.default_rng(seed)
    textures = [good_image(source, rng, size=160) for source in ("brick", "grass", "gravel") for _ in range(n // 6)]
    noise = [open_image(_png(rng.integers(0, 256, (128, 128, 3), dtype=np.uint8))) for _ in range(n - len(textures))]
    return textures + noise


def _png(array) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def one_draw(seed: int, per_class: int, root: Path) -> dict:
    train = write_fashion_mnist_folder(root / f"train{seed}", "train", per_class=per_class, seed=seed)
    for name in list(train.iterdir()):
        if name.name not in TRAINED:
            for f in name.iterdir():
                f.unlink()
            name.rmdir()
    test = write_fashion_mnist_folder(root / f"test{seed}", "test", per_class=20, seed=seed)
    run_dir = root / "workspace" / "runs" / f"draw{seed}"
    assert cli(["train", "--data", str(train), "--freeze", "head", "--run-dir", str(run_dir)]) == 0
    predictor = Predictor(run_dir)
    model = novelty.novelty_of(run_dir, predictor)
    similarity = model.features @ model.features.T
    np.fill_diagonal(similarity, -np.inf)
    loo = 1.0 - similarity.max(axis=1)
    groups = {"held-out, trained classes": pictures(test, TRAINED),
              "unseen clothing classes": pictures(test, [p.name for p in test.iterdir() if p.name not in TRAINED]),
              "textures and noise": far_pictures(seed)}
    scores = {group: model.score_images(predictor, images) for group, images in groups.items()}
    return {f"{quantile:.0%}": {group: float((s > np.quantile(loo, quantile)).mean()) for group, s in scores.items()}
            for quantile in (0.95, 0.99)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=3)
    parser.add_argument("--per-class", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    with tempfile.TemporaryDirectory() as tmp:
        import os

        os.environ["TL_STUDIO_HOME"] = str(Path(tmp) / "workspace")
        draws = [one_draw(seed, args.per_class, Path(tmp)) for seed in range(args.draws)]
    print(json.dumps(draws, indent=1))
    print(f"\n| threshold | {' | '.join(draws[0]['95%'])} |\n|---|---|---|---|")
    for quantile in ("95%", "99%"):
        cells = []
        for group in draws[0][quantile]:
            shares = [100 * draw[quantile][group] for draw in draws]
            spread = statistics.stdev(shares) if len(shares) > 1 else 0.0
            cells.append(f"{statistics.mean(shares):.0f} ± {spread:.0f} %")
        print(f"| {quantile} of leave-one-out distances | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
