"""The benchmark's data: 200 Fashion-MNIST training images (20 a class) and 500 test images (50 a class)."""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tl_core.data.sample_data import fashion_mnist_available, write_fashion_mnist_folder  # noqa: E402


def bench_folders(root: Path | None = None, train_per_class: int = 20, test_per_class: int = 50) -> tuple[Path, Path]:
    """(train folder, test folder) of class folders, written once under `root`."""
    root = Path(root or tempfile.mkdtemp(prefix="tl_bench_"))
    train, test = root / "train", root / "test"
    if not train.exists():
        if not fashion_mnist_available():
            sys.exit("bench needs Debian's dataset-fashion-mnist: apt-get install dataset-fashion-mnist")
        write_fashion_mnist_folder(train, "train", per_class=train_per_class, seed=0)
        write_fashion_mnist_folder(test, "test", per_class=test_per_class, seed=0)
    return train, test
