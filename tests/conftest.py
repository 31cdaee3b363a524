import shutil
from pathlib import Path

import pytest

from tl_core.data.sample_data import SAMPLE_DIR, fashion_mnist_available, write_fashion_mnist_folder

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _workspace(tmp_path, monkeypatch):
    """Every test gets its own workspace, so runs and caches never leak between tests."""
    monkeypatch.setenv("TL_STUDIO_HOME", str(tmp_path / "workspace"))
    return tmp_path / "workspace"


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    """The bundled sample: 30 Fashion-MNIST PNGs per class, 10 classes."""
    return SAMPLE_DIR


@pytest.fixture(scope="session")
def small_sample(tmp_path_factory) -> Path:
    """4 classes × 8 images of the bundled sample: enough to train in seconds."""
    dest = tmp_path_factory.mktemp("small_sample")
    for name in ("Trouser", "Bag", "Sneaker", "Dress"):
        (dest / name).mkdir()
        for f in sorted((SAMPLE_DIR / name).glob("*.png"))[:8]:
            shutil.copy(f, dest / name / f.name)
    return dest


@pytest.fixture(scope="session")
def head_run(small_sample, tmp_path_factory) -> Path:
    """A real finished run, trained once per session in its own workspace: the embedded
    EfficientNet-Lite0, head only on last-layer features, 2 epochs at 96 px on `small_sample`.
    Tests copy it to change it."""
    from tl_core.__main__ import main as cli

    root = tmp_path_factory.mktemp("head_run")
    run_dir = root / "workspace" / "runs" / "20260101-000000-efficientnet_lite0-test"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TL_STUDIO_HOME", str(root / "workspace"))
        assert cli(["train", "--data", str(small_sample), "--freeze", "head", "--epochs", "2",
                    "--features", "last", "--image-size", "96", "--run-dir", str(run_dir)]) == 0
    return run_dir


@pytest.fixture(scope="session")
def multi_layer_run(small_sample, tmp_path_factory) -> Path:
    """As head_run, with a head on every stage's pooled outputs (--features multi-layer)."""
    from tl_core.__main__ import main as cli

    root = tmp_path_factory.mktemp("multi_layer_run")
    run_dir = root / "workspace" / "runs" / "20260101-000000-efficientnet_lite0-multi"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TL_STUDIO_HOME", str(root / "workspace"))
        assert cli(["train", "--data", str(small_sample), "--freeze", "head", "--epochs", "2",
                    "--features", "multi-layer", "--image-size", "96", "--run-dir", str(run_dir)]) == 0
    return run_dir


@pytest.fixture(scope="session")
def fashion_test_dir(tmp_path_factory) -> Path:
    """Held-out Fashion-MNIST test images (Debian's dataset-fashion-mnist), 10 per class."""
    if not fashion_mnist_available():
        pytest.skip("Debian's dataset-fashion-mnist is not installed (apt-get install dataset-fashion-mnist)")
    return write_fashion_mnist_folder(tmp_path_factory.mktemp("fashion_test"), "test", per_class=10, seed=1)


def has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.fixture
def navigation_pages(monkeypatch):
    """AppTest runs app.py's st.navigation, as a server does, not the legacy pages/ folder mode."""
    from streamlit.testing.v1 import app_test as app_test_module

    from apptest_support import NavigationPagesManager

    monkeypatch.setattr(app_test_module, "PagesManager", NavigationPagesManager)


@pytest.fixture
def fake_jobs(monkeypatch):
    """The app's job manager records submissions and starts no worker; returns its instances."""
    from apptest_support import FakeJobManager
    from tl_core.ops import jobs

    FakeJobManager.instances.clear()
    monkeypatch.setattr(jobs, "JobManager", FakeJobManager)
    return FakeJobManager.instances
