"""Image-quality warnings of the data audit (tl_core.quality.image_checks, pages/ui/image_quality.py): blank,
blurry and enlarged pictures are named with their reasons, and nothing is dropped."""
import io
import json

import numpy as np
import pytest
from PIL import Image, ImageFilter

from tl_core.data import datasets
from tl_core.data.sample_data import SAMPLE_DIR
from tl_core.quality import image_checks

pytestmark = pytest.mark.usefixtures("navigation_pages", "fake_jobs")


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def sample_set(size: int = 112) -> list[tuple[str, bytes, str]]:
    """12 Fashion-MNIST pictures at `size` px, a blurred one, a nearly black one (mean 1.4) and a 40 px one."""
    files = []
    for name in ("Bag", "Sneaker"):
        for path in sorted((SAMPLE_DIR / name).glob("*.png"))[:6]:
            files.append((path.name, png(Image.open(path).convert("RGB").resize((size, size), Image.NEAREST)), name))
    sharp = Image.open(sorted((SAMPLE_DIR / "Bag").glob("*.png"))[7]).convert("RGB").resize((size, size))
    files.append(("soft.png", png(sharp.filter(ImageFilter.GaussianBlur(6))), "Bag"))
    dark = np.zeros((size, size, 3), np.uint8)
    dark[: size // 4, : size // 4] = 23  # mean 23/16 ≈ 1.4 of 255, as the held-out picture of issue 25
    files.append(("dark.png", png(Image.fromarray(dark)), "Sneaker"))
    files.append(("small.png", png(sharp.resize((40, 40))), "Bag"))
    return files


def test_blank_blurry_and_enlarged_pictures_are_named_with_their_reasons():
    dataset = datasets.ingest_files(sample_set(), name="quality")
    findings = image_checks.image_findings(dataset, input_size=224)
    by_file = {(f["path"].split("/")[-1], f["problem"]): f["reason"] for f in findings}
    assert "mean brightness 1.4" in by_file[("dark.png", "blank")]
    assert ("soft.png", "blurry") in by_file
    assert "enlarged 5.6×" in by_file[("small.png", "enlarged")]
    assert {problem for name, problem in by_file if name not in ("dark.png", "soft.png", "small.png")} == set()
    assert len(dataset.items) == 15  # nothing dropped
    sentences = image_checks.summary(findings)
    assert any(s.startswith("1 picture is blank or nearly empty: Sneaker/dark.png") for s in sentences)


def test_pictures_upscaled_more_than_twice_are_all_named():
    dataset = datasets.ingest_files(sample_set(size=100), name="quality")
    enlarged = [f for f in image_checks.image_findings(dataset, input_size=224) if f["problem"] == "enlarged"]
    assert len(enlarged) == 15  # 100 px and 40 px to 224: every picture more than 2×
    assert not [f for f in image_checks.image_findings(dataset, input_size=200) if f["problem"] == "enlarged"
                and not f["path"].endswith("small.png")]  # exactly 2× is not past the limit


def test_the_data_page_warns_of_them_and_keeps_every_picture():
    from apptest_support import open_page, plain

    dataset = datasets.ingest_files(sample_set(), name="quality")
    at = open_page("pages/2_Data.py", dataset_dir=str(dataset.root))
    assert not at.exception, at.exception
    warnings = [plain(w.value) for w in at.warning]
    assert any("blank or nearly empty" in w and "dark.png" in w for w in warnings), warnings
    assert any("blurrier" in w and "soft.png" in w for w in warnings)
    table = next(df.value for df in at.dataframe if "problem" in df.value.columns)
    assert set(table["problem"]) == {"blank", "blurry", "enlarged"}
    assert metric(at, "Images") == "15"


def metric(at, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


def test_a_dataset_is_looked_at_once_then_read_from_disk(monkeypatch):
    """Issue 26: a student's first Data visit reads the numbers kept on disk, in any server process."""
    dataset = datasets.ingest_files(sample_set(), name="quality")
    first = image_checks.image_findings(dataset, input_size=224)
    kept = image_checks._measures_file(dataset)
    assert kept.is_file()

    def refuse(*args, **kwargs):
        raise AssertionError("a picture was decoded again")

    with monkeypatch.context() as patched:
        patched.setattr(image_checks, "open_image", refuse)
        assert image_checks.image_findings(dataset, input_size=224) == first
    kept.write_bytes(b'{"cut sh')  # a damaged cache is measured again and rewritten
    assert image_checks.image_findings(dataset, input_size=224) == first
    assert len(json.loads(kept.read_text())) == len({item["sha256"] for item in dataset.items})
