"""tl_core.data.datasets on real small data: Fashion-MNIST PNGs, plus bad files made here."""
from __future__ import annotations

import hashlib
import io
import os
import shutil
import stat
import struct
import zipfile
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tl_core.data import datasets
from tl_core.data.datasets import (Dataset, DatasetError, ImageRefused, audit, decode_images, ingest_files,
                                   ingest_folder, ingest_or_reuse_folder, ingest_zip, list_datasets, load_dataset,
                                   open_image, prepare_image, stratified_split)
from tl_core.data.sample_data import fashion_mnist_available, write_fashion_mnist_folder


# ---------------------------------------------------------------- helpers

@pytest.fixture(scope="session")
def fashion_dir(tmp_path_factory) -> Path:
    """10 class folders of 3 real 28×28 grey PNGs each."""
    if not fashion_mnist_available():
        pytest.skip("Fashion-MNIST is not installed (apt install dataset-fashion-mnist)")
    return write_fashion_mnist_folder(tmp_path_factory.mktemp("fashion"), split="test", per_class=3)


@pytest.fixture
def src(fashion_dir, tmp_path) -> Path:
    """A private copy of the Fashion-MNIST folder, for a test to spoil."""
    return Path(shutil.copytree(fashion_dir, tmp_path / "src"))


@pytest.fixture
def ws(tmp_path) -> Path:
    return tmp_path / "ws"


def _encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def _gradient(width: int, height: int) -> Image.Image:
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :]
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None]
    rgb = np.stack([x + 0 * y, y + 0 * x, (x + y) / 2], axis=-1)
    return Image.fromarray(rgb.astype(np.uint8))


def _png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width×height pixels: a decompression bomb's calling card."""
    data = bytearray(_encoded(Image.new("L", (1, 1)), "PNG"))
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))  # keep the IHDR checksum valid
    return bytes(data)


def _zip_of(folder: Path, wrapper: str = "") -> io.BytesIO:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.rglob("*.png")):
            archive.write(path, wrapper + path.relative_to(folder).as_posix())
    return buffer


def _summary(dataset: Dataset) -> tuple:
    return dataset.classes, dataset.counts(), sorted(item["sha256"] for item in dataset.items)


def _no_datasets_left(ws: Path) -> bool:
    return not (ws / "datasets").exists() or not any((ws / "datasets").iterdir())


# ---------------------------------------------------------------- ingest

def test_ingest_folder_keeps_original_bytes_and_writes_manifest(fashion_dir, ws):
    dataset = ingest_folder(fashion_dir, name="fashion", workspace=ws)

    assert dataset.root == ws / "datasets" / dataset.id
    assert dataset.classes == sorted(p.name for p in fashion_dir.iterdir())
    assert dataset.counts() == {name: 3 for name in dataset.classes}
    assert dataset.refused == []
    for item, path in zip(dataset.items, dataset.paths()):
        assert path.is_file() and path.parent.name == item["label"]
        source = fashion_dir / item["label"] / path.name
        assert path.read_bytes() == source.read_bytes()
        assert item["sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
        assert (item["width"], item["height"], item["bytes"]) == (28, 28, source.stat().st_size)
    assert [dataset.classes[k] for k in dataset.labels()] == [item["label"] for item in dataset.items]
    assert load_dataset(dataset.root) == dataset
    assert set(os.listdir(dataset.root)) == {"images", "manifest.json"}


def test_bad_files_are_refused_with_reasons_and_the_rest_is_ingested(src, ws):
    (src / "Bag" / "notes.jpg").write_text("my shopping list\nmilk\n")
    (src / "Bag" / "broken.jpg").write_bytes(_encoded(_gradient(256, 256), "JPEG")[:2000])
    (src / "Bag" / "empty.png").write_bytes(b"")
    (src / "Coat" / "bomb.png").write_bytes(_png_declaring(100_000, 100_000))
    (src / "readme.txt").write_text("not an image, not in a class")
    (src / "Empty").mkdir()
    (src / "Coat" / "extra").mkdir()
    shutil.copy(next((src / "Bag").glob("test_*.png")), src / "Coat" / "extra" / "nested.png")
    # operating-system clutter: ignored, and not reported as refused
    (src / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (src / "Bag" / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    (src / "Bag" / "desktop.ini").write_text("[.ShellClassInfo]")
    (src / "Bag" / "._test.png").write_bytes(b"\x00\x05\x16\x07")
    (src / "__MACOSX" / "Bag").mkdir(parents=True)
    (src / "__MACOSX" / "Bag" / "._x.png").write_bytes(b"\x00\x05\x16\x07")

    dataset = ingest_folder(src, workspace=ws)

    # the image in a sub-folder of a class folder is kept in that class, with a note and a way to leave it out
    assert len(dataset.classes) == 10 and len(dataset.items) == 31 and dataset.counts()["Coat"] == 4
    nested = [item for item in dataset.items if item.get("subfolder")]
    assert [(item["label"], item["subfolder"]) for item in nested] == [("Coat", "extra")]
    assert any("found in sub-folders of class folders and put in that class: Coat/extra/ (1)" in warning
               for warning in audit(dataset)["warnings"])
    assert audit(dataset)["from_subfolders"] == [{"path": nested[0]["path"], "label": "Coat", "subfolder": "extra"}]
    flat = datasets.without(dataset, from_subfolders=True, workspace=ws)
    assert len(flat.items) == 30 and audit(flat)["from_subfolders"] == [] and flat.refused == dataset.refused
    reasons = {r["name"]: r["reason"] for r in dataset.refused}
    assert set(reasons) == {"Bag/notes.jpg", "Bag/broken.jpg", "Bag/empty.png", "Coat/bomb.png",
                            "readme.txt", "Empty/"}
    assert reasons["Bag/notes.jpg"] == "not an image (text file)"
    assert "truncated" in reasons["Bag/broken.jpg"]
    assert reasons["Bag/empty.png"] == "empty file (0 bytes)"
    assert "decompression bomb" in reasons["Coat/bomb.png"]
    assert reasons["readme.txt"] == "not inside a class folder"
    assert reasons["Empty/"] == "empty class folder"
    assert load_dataset(dataset.root).refused == dataset.refused


def test_pixel_limit_is_configurable(monkeypatch):
    photo = _encoded(_gradient(20, 20), "PNG")
    assert open_image(photo).size == (20, 20)
    with pytest.raises(ImageRefused, match="too many pixels.*decompression bomb"):
        open_image(photo, max_pixels=399)
    monkeypatch.setattr(datasets.images, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(ImageRefused, match="too many pixels"):
        open_image(photo, "small.png")


@pytest.mark.parametrize("data, kind", [
    (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj", "PDF document"),
    (b"<!DOCTYPE html><html><body>404</body></html>", "HTML page"),
    (b"PK\x03\x04" + bytes(40), "zip archive"),
    ("café, naïve, résumé\n".encode(), "text file"),
])
def test_non_images_are_named_for_what_they_look_like(data, kind):
    with pytest.raises(ImageRefused) as refusal:
        open_image(data, "cats/x.jpg")
    assert refusal.value.reason == f"not an image ({kind})"
    assert str(refusal.value).startswith("cats/x.jpg: ")


def test_truncation_is_found_even_when_a_jpeg_decodes_at_draft_scale(tmp_path):
    path = tmp_path / "big.jpg"
    path.write_bytes(_encoded(_gradient(1200, 900), "JPEG", quality=90)[:-3000])
    with pytest.raises(ImageRefused, match="truncated") as refusal:
        open_image(path, draft_size=64)
    assert str(path) in str(refusal.value)


def test_exif_rotated_jpeg_comes_out_upright():
    image = Image.new("RGB", (40, 20), "blue")
    image.paste((255, 0, 0), (0, 0, 20, 20))  # left half red
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display": the left half ends on top
    upright = open_image(_encoded(image, "JPEG", exif=exif.tobytes(), quality=95))
    assert upright.size == (20, 40)
    pixels = np.asarray(upright).astype(int)
    assert pixels[5, 10, 0] > 200 and pixels[5, 10, 2] < 60  # top: red
    assert pixels[35, 10, 2] > 200 and pixels[35, 10, 0] < 60  # bottom: blue


def test_ingest_records_the_upright_size(src, ws):
    exif = Image.Exif()
    exif[0x0112] = 6
    (src / "Bag" / "phone.jpg").write_bytes(_encoded(_gradient(40, 20), "JPEG", exif=exif.tobytes()))
    item = next(i for i in ingest_folder(src, workspace=ws).items if i["path"].endswith("phone.jpg"))
    assert (item["width"], item["height"]) == (20, 40)


def test_16_bit_grey_is_scaled_by_257_not_clipped():
    values = np.array([[0, 4095, 32768, 65535]], dtype=np.uint16)
    image = Image.fromarray(values)
    assert image.mode == "I;16"
    rgb = np.asarray(open_image(_encoded(image, "PNG")))
    assert rgb.shape == (1, 4, 3)
    assert rgb[0, :, 0].tolist() == [0, 15, 127, 255]  # 65535/257 = 255; mid-grey stays mid-grey
    assert (rgb[..., 0] == rgb[..., 2]).all()


def test_32_bit_and_float_images_stretch_to_their_range():
    wide = Image.fromarray(np.array([[-1000, 0, 99000]], dtype=np.int32))
    assert np.asarray(open_image(_encoded(wide, "TIFF")))[0, :, 0].tolist() == [0, 3, 255]
    unit = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32))
    assert np.asarray(open_image(_encoded(unit, "TIFF")))[0, :, 0].tolist() == [0, 128, 255]


def test_palette_with_transparency_lands_on_white():
    image = Image.new("P", (4, 2), 0)
    image.putpalette([0, 0, 0, 0, 200, 0] + [0] * 762)
    image.paste(1, (2, 0, 4, 2))
    rgb = np.asarray(open_image(_encoded(image, "PNG", transparency=0)))
    assert rgb[0, 0].tolist() == [255, 255, 255]
    assert rgb[0, 3].tolist() == [0, 200, 0]
    opaque = np.asarray(open_image(_encoded(image, "PNG")))
    assert opaque[0, 0].tolist() == [0, 0, 0]


def test_rgba_and_la_composite_on_white():
    rgba = Image.new("RGBA", (3, 1))
    rgba.putdata([(255, 0, 0, 0), (0, 0, 255, 255), (0, 0, 0, 128)])
    rgb = np.asarray(open_image(_encoded(rgba, "PNG"))).astype(int)
    assert rgb[0, 0].tolist() == [255, 255, 255]
    assert rgb[0, 1].tolist() == [0, 0, 255]
    assert all(abs(v - 127) <= 1 for v in rgb[0, 2])
    la = Image.new("LA", (1, 1), (0, 0))
    assert np.asarray(open_image(_encoded(la, "PNG")))[0, 0].tolist() == [255, 255, 255]


def test_cmyk_grey_and_bilevel_become_rgb():
    cmyk = open_image(_encoded(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "JPEG", quality=95))
    r, g, b = np.asarray(cmyk)[4, 4].astype(int)
    assert cmyk.mode == "RGB" and r > 200 and g < 60 and b < 60
    assert np.asarray(open_image(_encoded(Image.new("L", (2, 2), 100), "PNG")))[0, 0].tolist() == [100] * 3
    bilevel = Image.new("1", (2, 1), 0)
    bilevel.putpixel((1, 0), 1)
    assert np.asarray(open_image(_encoded(bilevel, "PNG")))[0].tolist() == [[0] * 3, [255] * 3]


def test_zip_with_wrapper_matches_the_folder_and_refuses_dangerous_members(fashion_dir, ws, tmp_path):
    buffer = _zip_of(fashion_dir, wrapper="fashion/")
    png = _encoded(Image.new("L", (8, 8), 50), "PNG")
    with zipfile.ZipFile(buffer, "a", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(zipfile.ZipInfo("../evil.png"), png)
        archive.writestr(zipfile.ZipInfo("/tmp/absolute_evil.png"), png)
        link = zipfile.ZipInfo("fashion/Bag/link.png")
        link.create_system, link.external_attr = 3, (stat.S_IFLNK | 0o777) << 16
        archive.writestr(link, "/etc/passwd")
        archive.writestr("fashion/Coat/bomb.png", bytes(2 << 20))  # 2 MiB of zeros deflate ~1000:1
        archive.writestr("__MACOSX/fashion/Bag/._test.png", b"\x00\x05\x16\x07")
        archive.writestr("fashion/.DS_Store", b"\x00\x00\x00\x01Bud1")
        archive.writestr("fashion/Empty/", b"")
    zip_path = tmp_path / "fashion.zip"
    zip_path.write_bytes(buffer.getvalue())

    dataset = ingest_zip(zip_path, workspace=ws)

    assert dataset.name == "fashion"
    assert _summary(dataset) == _summary(ingest_folder(fashion_dir, workspace=ws))
    reasons = {r["name"]: r["reason"] for r in dataset.refused}
    assert set(reasons) == {"../evil.png", "/tmp/absolute_evil.png", "fashion/Bag/link.png",
                            "fashion/Coat/bomb.png", "fashion/Empty/"}
    assert reasons["fashion/Empty/"] == "empty class folder"
    assert "outside the archive" in reasons["../evil.png"]
    assert "outside the archive" in reasons["/tmp/absolute_evil.png"]
    assert "symbolic link" in reasons["fashion/Bag/link.png"]
    assert "zip bomb" in reasons["fashion/Coat/bomb.png"]
    assert not (ws / "evil.png").exists() and not (ws / "datasets" / "evil.png").exists()
    assert not any("evil" in p.name or "link" in p.name for p in ws.rglob("*"))


def test_zip_from_bytes_without_wrapper(fashion_dir, ws):
    dataset = ingest_zip(_zip_of(fashion_dir).getvalue(), workspace=ws)
    assert dataset.counts() == {name: 3 for name in dataset.classes} and len(dataset.classes) == 10


@pytest.mark.parametrize("limits, message", [
    ({"max_members": 5}, "30 entries, over the limit of 5"),
    ({"max_total_bytes": 1000}, "uncompressed, over the limit of 1000 bytes"),
])
def test_zip_over_a_limit_is_refused_whole(fashion_dir, ws, limits, message):
    with pytest.raises(DatasetError, match=message):
        ingest_zip(_zip_of(fashion_dir).getvalue(), workspace=ws, **limits)
    assert _no_datasets_left(ws)


def test_not_a_zip_is_a_dataset_error(ws):
    with pytest.raises(DatasetError, match="not a readable zip"):
        ingest_zip(b"this is not a zip", workspace=ws)


def test_ingest_files_matches_the_folder_and_sanitizes_names(fashion_dir, ws):
    uploads = [(p.name, p.read_bytes(), p.parent.name) for p in sorted(fashion_dir.rglob("*.png"))]
    dataset = ingest_files(uploads, workspace=ws)
    assert _summary(dataset) == _summary(ingest_folder(fashion_dir, workspace=ws))

    bag = [data for name, data, label in uploads if label == "Bag"]
    dataset = ingest_files([("same.png", bag[0], "Bag"), ("same.png", bag[1], "Bag"),
                            ("../../escape me.png", bag[2], "Bag"), (".DS_Store", b"junk", "Bag"),
                            ("a.png", bag[0], "Coat"), ("b.png", bag[1], "Coat"), ("c.png", bag[2], " ")],
                           workspace=ws)
    paths = [item["path"] for item in dataset.items]
    assert paths == ["images/Bag/escape_me.png", "images/Bag/same.png", "images/Bag/same_1.png",
                     "images/Coat/a.png", "images/Coat/b.png"]
    assert all(path.resolve().is_relative_to(dataset.root / "images") for path in dataset.paths())
    assert dataset.refused == [{"name": "c.png", "reason": "no class given"}]


def test_fewer_than_two_classes_is_an_error_naming_what_was_refused(tmp_path, fashion_dir, ws):
    cats = tmp_path / "one" / "cats"
    cats.mkdir(parents=True)
    for path in list((fashion_dir / "Bag").iterdir())[:2]:
        shutil.copy(path, cats)
    (cats / "notes.txt").write_text("hello")
    with pytest.raises(DatasetError) as error:
        ingest_folder(tmp_path / "one", workspace=ws)
    assert str(error.value).startswith("fewer than 2 classes: found 1 (cats); 1 file refused: cats/notes.txt")
    assert error.value.refused == [{"name": "cats/notes.txt", "reason": "not an image (text file)"}]
    assert _no_datasets_left(ws)


def test_a_class_with_one_image_is_a_warning_with_a_choice(tmp_path, fashion_dir, ws):
    for label, count in (("cats", 2), ("dogs", 1), ("birds", 3)):
        (tmp_path / "pets" / label).mkdir(parents=True)
        for path in sorted((fashion_dir / "Bag").iterdir())[:count]:
            shutil.copy(path, tmp_path / "pets" / label)
    dataset = ingest_folder(tmp_path / "pets", workspace=ws)  # the user may go on with it
    report = audit(dataset)
    assert dataset.counts() == {"birds": 3, "cats": 2, "dogs": 1} and report["single_image_classes"] == ["dogs"]
    assert report["warnings"][0].startswith("1 class has a single image ('dogs'): it can train, but it is never "
                                            "validated")
    assert "drop the class" in report["warnings"][0]
    dropped = datasets.without(dataset, classes=["dogs"], workspace=ws)  # ... or drop the class
    assert dropped.counts() == {"birds": 3, "cats": 2} and dropped.name == "pets (without 'dogs')"
    assert [d.id for d in list_datasets(ws)] == [dropped.id, dataset.id]
    assert all(path.read_bytes() == (dataset.root / path.relative_to(dropped.root)).read_bytes()
               for path in dropped.paths())
    with pytest.raises(DatasetError, match="fewer than 2 classes"):
        datasets.without(dataset, classes=["dogs", "cats"], workspace=ws)


def test_list_and_load_datasets(fashion_dir, ws, tmp_path, monkeypatch):
    uploads = [(p.name, p.read_bytes(), p.parent.name) for p in sorted(fashion_dir.rglob("*.png"))]
    first = ingest_files(uploads, name="first", workspace=ws)
    second = ingest_files(uploads, name="second", workspace=ws)
    (ws / "datasets" / ".half-built.partial").mkdir()
    assert [d.name for d in list_datasets(ws)] == ["second", "first"]
    assert load_dataset(str(first.root)) == first and second.id > first.id
    with pytest.raises(DatasetError, match="no manifest.json"):
        load_dataset(tmp_path)
    monkeypatch.setenv("TL_STUDIO_HOME", str(tmp_path / "home"))
    default = ingest_files(uploads)
    assert default.root.parent == tmp_path / "home" / "datasets"
    assert [d.id for d in list_datasets()] == [default.id]


def test_ingest_or_reuse_folder_reuses_until_the_folder_changes(src, ws):
    first = ingest_or_reuse_folder(src, workspace=ws)
    assert ingest_or_reuse_folder(src, workspace=ws).id == first.id
    shutil.copy(next((src / "Bag").iterdir()), src / "Bag" / "one_more.png")
    changed = ingest_or_reuse_folder(src, workspace=ws)
    assert changed.id != first.id and changed.counts()["Bag"] == 4
    assert [d.id for d in list_datasets(ws)] == [changed.id, first.id]


# ---------------------------------------------------------------- audit

def test_audit_finds_duplicates_within_across_classes_and_train_val(src, ws, tmp_path):
    bag_first = sorted((src / "Bag").iterdir())[0]
    shutil.copy(bag_first, src / "Bag" / "zz_copy.png")
    shutil.copy(bag_first, src / "Coat" / "from_bag.png")
    val_src = write_fashion_mnist_folder(tmp_path / "val", split="test", per_class=2, skip_per_class=3)
    shutil.copy(bag_first, val_src / "Bag" / "leaked.png")
    train, val = ingest_folder(src, workspace=ws), ingest_folder(val_src, workspace=ws)

    report = audit(train, val)

    original = f"images/Bag/{bag_first.name}"
    assert report["duplicates"] == {"within_class": [[original, "images/Bag/zz_copy.png"]],
                                    "across_classes": [[original, "images/Coat/from_bag.png"]],
                                    "across_train_val": [[original, "images/Bag/leaked.png"]]}
    assert report["total"] == 32 and report["counts"]["Bag"] == 4 and report["imbalance_ratio"] == 4 / 3
    assert len(report["tiny"]) == 32 and report["tiny"][0]["width"] == 28
    assert audit(train, tiny=28)["tiny"] == []
    text = "\n".join(report["warnings"])
    for phrase in ("1 image appears in two classes: Bag/", "1 image is an exact copy of another in the same class",
                   "1 validation image also appears in the training set", "32 images are smaller than 32 px"):
        assert phrase in text
    assert audit(val)["duplicates"]["across_train_val"] == []


def test_audit_warns_about_imbalance_and_refused_files():
    items = [{"path": f"images/{label}/{k}.png", "label": label, "sha256": f"{label}{k}", "width": 64,
              "height": 64, "bytes": 1} for label, n in (("Bag", 9), ("Coat", 3)) for k in range(n)]
    refused = [{"name": "Bag/notes.jpg", "reason": "not an image (text file)"}]
    dataset = Dataset(Path("/nowhere"), "x", "x", ["Bag", "Coat"], items, refused)
    report = audit(dataset)
    assert report["imbalance_ratio"] == 3.0 and report["tiny"] == [] and report["refused"] == refused
    assert any(w.startswith("class 'Coat' has 3x fewer images than 'Bag'") for w in report["warnings"])
    assert any("1 file was refused: Bag/notes.jpg (not an image (text file))" in w for w in report["warnings"])


# ---------------------------------------------------------------- split

def test_stratified_split_is_stratified_seeded_and_deterministic():
    labels = [0] * 10 + [1] * 5 + [2] * 2 + [3]
    labels = labels[::2] + labels[1::2]  # interleave, so classes are not contiguous
    train, val = stratified_split(labels, val_fraction=0.2, seed=0)
    assert sorted(train + val) == list(range(len(labels))) and not set(train) & set(val)
    assert Counter(labels[i] for i in val) == {0: 2, 1: 1, 2: 1}
    assert Counter(labels[i] for i in train) == {0: 8, 1: 4, 2: 1, 3: 1}
    assert stratified_split(labels, 0.2, seed=0) == (train, val)
    assert stratified_split(labels, 0.2, seed=1) != (train, val)
    assert Counter(labels[i] for i in stratified_split(labels, 0.5)[1]) == {0: 5, 1: 3, 2: 1}  # 2.5 rounds up
    with pytest.raises(ValueError):
        stratified_split(labels, 0.0)


# ---------------------------------------------------------------- decode

def test_decode_images_matches_timm_eval_geometry(tmp_path):
    transforms_factory = pytest.importorskip("timm.data.transforms_factory")
    rng = np.random.default_rng(0)
    paths = []
    for k, (width, height) in enumerate([(50, 37), (37, 61), (28, 28)]):
        paths.append(tmp_path / f"{k}.png")
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(paths[-1])
    for crop_pct, interpolation in ((0.875, "bicubic"), (1.0, "bilinear")):
        timm_eval = transforms_factory.transforms_imagenet_eval(
            img_size=32, crop_pct=crop_pct, interpolation=interpolation, use_prefetcher=True)
        expected = np.stack([np.asarray(timm_eval(open_image(p))) for p in paths])
        decoded = decode_images(paths, 32, crop_pct=crop_pct, interpolation=interpolation)
        assert decoded.dtype.is_floating_point is False and tuple(decoded.shape) == (3, 3, 32, 32)
        np.testing.assert_array_equal(decoded.numpy(), expected)
        prepared = prepare_image(open_image(paths[0]), 32, crop_pct, interpolation)  # what predict uses
        assert prepared.dtype == decoded.dtype
        np.testing.assert_array_equal(prepared.numpy(), expected[0])


def test_decode_images_drafts_big_jpegs_close_to_a_full_decode(tmp_path):
    path = tmp_path / "photo.jpg"
    path.write_bytes(_encoded(_gradient(1200, 900), "JPEG", quality=90))
    drafted = decode_images([path], 64)[0].numpy().astype(int)
    full = datasets.pixels._center_crop(datasets.pixels._resize_shorter(open_image(path), 73, Image.Resampling.BICUBIC), 64)
    assert drafted.shape == (3, 64, 64)
    assert np.abs(drafted - np.asarray(full).transpose(2, 0, 1)).mean() < 4


def test_decode_images_cache_is_a_pure_load_the_second_time(fashion_dir, ws, tmp_path, monkeypatch):
    dataset = ingest_folder(fashion_dir, workspace=ws)
    cache = tmp_path / "cache"
    calls = []
    first = decode_images(dataset.paths(), 24, cache_dir=cache, progress=lambda done, total: calls.append(done))
    assert first.shape == (30, 3, 24, 24) and str(first.dtype) == "torch.uint8"
    assert calls[-1] == 30 and len(list(cache.glob("decoded-*.npy"))) == 1

    def refuse(*args, **kwargs):
        raise AssertionError("a cache hit must not decode")

    monkeypatch.setattr(datasets.pixels, "open_image", refuse)
    second = decode_images(dataset.paths(), 24, cache_dir=cache, progress=lambda done, total: calls.append(total))
    assert (second == first).all() and calls[-1] == 30
    monkeypatch.undo()
    decode_images(dataset.paths(), 16, cache_dir=cache)  # other settings: another cache entry
    assert len(list(cache.glob("decoded-*.npy"))) == 2


def test_decode_images_names_the_file_it_cannot_decode(fashion_dir, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(20))
    good = sorted(fashion_dir.rglob("*.png"))[:2]
    with pytest.raises(ImageRefused, match="bad.png"):
        decode_images([good[0], bad, good[1]], 16)


# ---------------------------------------------------------------- bounded decoding

@pytest.mark.parametrize("width, height", [(20000, 2), (40000, 1), (1, 30000)])
def test_thin_images_are_refused_before_they_cost_memory(width, height, tmp_path):
    thin = _encoded(Image.new("L", (width, height)), "PNG")
    assert len(thin) < 2000  # a few hundred bytes that once cost gigabytes to resize
    for decode in (lambda: open_image(thin, "strip.png"), lambda: ingest_files(
            [("strip.png", thin, "a"), ("ok.png", _encoded(_gradient(8, 8), "PNG"), "a"),
             ("ok2.png", _encoded(_gradient(9, 9), "PNG"), "b")], workspace=tmp_path).refused[0]["reason"]):
        try:
            reason = decode()
        except ImageRefused as refusal:
            reason = str(refusal)
        assert f"too thin to use: {width}×{height} px is {max(width, height) // min(width, height):,}:1" in reason
        assert f"the limit is {datasets.MAX_ASPECT_RATIO}:1; crop it" in reason
    path = tmp_path / "strip.png"
    path.write_bytes(thin)
    with pytest.raises(ImageRefused, match="strip.png: too thin"):
        decode_images([path], 224)


def test_the_widest_accepted_image_decodes_within_a_small_memory_budget(tmp_path):
    """Resized by its shorter side, a 20:1 image at 1024 px would be 23 400 px long: only its crop is made."""
    path = tmp_path / "panorama.png"
    _gradient(4000, 200).save(path)
    code = ("import resource, sys; from tl_core.data.datasets import decode_images;"
            "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss;"
            f"out = decode_images([{str(path)!r}], 1024);"
            "grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before;"
            "print(tuple(out.shape), grown // 1024)")
    import subprocess
    import sys
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parent.parent)
    assert done.returncode == 0, done.stderr
    shape, grown_mb = done.stdout.split(") ")
    assert shape == "(1, 3, 1024, 1024" and int(grown_mb) < 60, done.stdout  # whole: 23 400×1 170 px = 110 MB


def test_the_crop_made_straight_from_the_source_matches_the_exact_geometry(monkeypatch):
    rng = np.random.default_rng(1)
    for width, height, size, crop_pct in [(3000, 40, 32, 0.875), (41, 3333, 48, 1.0), (64, 64, 32, 0.9),
                                          (20, 300, 40, 1.2), (2000, 300, 224, 0.875)]:
        photo = np.asarray(_gradient(width, height)) + rng.normal(0, 4, (height, width, 3))
        image = Image.fromarray(photo.clip(0, 255).astype(np.uint8))
        exact = prepare_image(image, size, crop_pct).numpy().astype(int)
        monkeypatch.setattr(datasets.pixels, "_RESIZE_PIXELS", 0)  # as for an image whose resized whole is too big
        direct = prepare_image(image, size, crop_pct).numpy().astype(int)
        monkeypatch.undo()
        assert direct.shape == exact.shape == (3, size, size)
        difference = np.abs(direct - exact)
        assert difference.max() <= 2 and difference.mean() < 0.5, (width, height)


def test_an_image_over_the_decode_budget_is_refused_with_the_figures(monkeypatch):
    rgba = _encoded(Image.new("RGBA", (400, 300), (10, 20, 30, 40)), "PNG")
    assert open_image(rgba).size == (400, 300)
    monkeypatch.setattr(datasets.images, "MAX_DECODE_BYTES", 1 << 20)
    with pytest.raises(ImageRefused) as refusal:
        open_image(rgba, "big.png")
    assert ("big.png: would need about 2 MB of memory to decode (400×300 px, RGBA); the limit is 1 MB an image. "
            "Save it smaller") in str(refusal.value)
    assert open_image(rgba, draft_size=40).size == (58, 43)  # reduced 7× right after decoding, so it fits


def test_big_images_are_reduced_right_after_decoding_when_a_size_is_given():
    png = _encoded(_gradient(1600, 1200), "PNG")
    reduced = open_image(png, draft_size=300)
    assert reduced.size == (400, 300)  # 1200 // 300 = 4: a whole factor that keeps 300 px a side
    full = open_image(png)
    assert full.size == (1600, 1200)
    small = np.asarray(full.resize((400, 300), Image.Resampling.BOX)).astype(int)
    assert np.abs(np.asarray(reduced).astype(int) - small).max() <= 1


def test_a_full_disk_during_ingest_names_the_file_and_the_size(fashion_dir, ws, monkeypatch):
    import errno

    from tl_core.ops import storage

    real = Path.write_bytes

    def full(self, data):
        if "datasets" in self.parts:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", full)
    with pytest.raises(storage.StorageFull) as error:
        ingest_folder(fashion_dir, workspace=ws)
    message = str(error.value)
    assert "/images/" in message and "the disk is full (" in message and "bytes needed" in message
    assert "free" in message and "TL_STUDIO_HOME" in message
    assert _no_datasets_left(ws)
