"""The bundled sample set, and Fashion-MNIST from Debian's `dataset-fashion-mnist` for tests and benchmarks."""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
from PIL import Image

SAMPLE_DIR = Path(__file__).resolve().parents[2] / "assets" / "sample" / "fashion"
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = ("T-shirt_top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle_boot")


def fashion_mnist_available(root: Path = FASHION_MNIST_DIR) -> bool:
    return (root / "t10k-images-idx3-ubyte.gz").exists()


def read_fashion_mnist(split: str = "train", root: Path = FASHION_MNIST_DIR) -> tuple[np.ndarray, np.ndarray]:
    """(images N×28×28 uint8, labels N) from the idx files; split is "train" or "test"."""
    prefix = {"train": "train", "test": "t10k"}[split]
    with gzip.open(root / f"{prefix}-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(root / f"{prefix}-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)
    return images, labels


def write_fashion_mnist_folder(dest: str | Path, split: str = "train", per_class: int = 20,
                               seed: int = 0, skip_per_class: int = 0) -> Path:
    """Write `per_class` PNGs of each class into `dest/<class>/`, picked at random with `seed`.

    `skip_per_class` skips that many picks first, so two calls with different skips are disjoint.
    """
    images, labels = read_fashion_mnist(split)
    rng = np.random.default_rng(seed)
    dest = Path(dest)
    for k, name in enumerate(FASHION_CLASSES):
        idx = rng.permutation(np.flatnonzero(labels == k))[skip_per_class:skip_per_class + per_class]
        (dest / name).mkdir(parents=True, exist_ok=True)
        for i in idx:
            Image.fromarray(images[i], mode="L").save(dest / name / f"{split}_{i:05d}.png", optimize=True)
    return dest


# Fashion-MNIST's classes with a coarser grouping and tags that follow from what each class is: a real
# multi-task (category + group) and multi-label (tags) set for the sample, the tests and bench/multitask.py.
FASHION_GROUPS = {"T-shirt_top": "top", "Pullover": "top", "Coat": "top", "Shirt": "top", "Dress": "dress",
                  "Trouser": "bottom", "Sandal": "footwear", "Sneaker": "footwear", "Ankle_boot": "footwear",
                  "Bag": "bag"}
FASHION_TAGS = {"T-shirt_top": ["upper-body"], "Pullover": ["upper-body", "long-sleeves", "warm"],
                "Coat": ["upper-body", "long-sleeves", "warm", "outerwear"], "Shirt": ["upper-body", "long-sleeves"],
                "Dress": ["upper-body", "lower-body"], "Trouser": ["lower-body"], "Sandal": ["feet", "open"],
                "Sneaker": ["feet"], "Ankle_boot": ["feet", "warm"], "Bag": ["carried"]}


def write_fashion_task_table(class_folders: str | Path, table: str | Path | None = None) -> Path:
    """labels.csv (file, category, group, tags) for a folder of Fashion-MNIST class folders; returns its path."""
    import csv

    root = Path(class_folders)
    table = Path(table or root / "labels.csv")
    with open(table, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "category", "group", "tags"])
        for image in sorted(root.glob("*/*.png")):
            category = image.parent.name
            writer.writerow([f"{category}/{image.name}", category, FASHION_GROUPS[category],
                             ";".join(FASHION_TAGS[category])])
    return table
