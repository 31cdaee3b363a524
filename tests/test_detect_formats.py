"""Box datasets in (COCO, YOLO, VOC, zip) and their audit, on small real-looking sets (tl_core.detect.sample)."""
import json
import shutil
import zipfile

import pytest
from PIL import Image

from tl_core.detect import audit, batches
from tl_core.detect.formats import AnnotationError, detect_layout, ingest, load_boxset
from tl_core.detect.sample import write_set


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("detect_sets")
    return {fmt: write_set(root / fmt, 8, fmt, seed=4) for fmt in ("coco", "yolo", "voc")}


def _by_source(boxset):
    return {image["source"].rsplit("/", 1)[-1]: image for image in boxset.images}


def test_three_layouts_read_to_the_same_boxes(sets):
    read = {fmt: load_boxset(ingest(folder)) for fmt, folder in sets.items()}
    assert {detect_layout(folder) for folder in sets.values()} == {"coco", "yolo", "voc"}
    coco = _by_source(read["coco"])
    for fmt in ("yolo", "voc"):
        other = _by_source(read[fmt])
        assert other.keys() == coco.keys()
        for name, image in coco.items():
            assert other[name]["labels"] == image["labels"]
            for a, b in zip(other[name]["boxes"], image["boxes"]):
                assert a == pytest.approx(b, abs=1.01)  # VOC rounds to whole pixels
    assert sorted(read["voc"].classes) == sorted(read["coco"].classes)
    assert sum(len(i["boxes"]) for i in read["coco"].images) > 8


def test_same_folder_is_reused_and_a_zip_with_a_wrapper_reads_alike(sets, tmp_path):
    first = ingest(sets["coco"])
    assert ingest(sets["coco"]) == first
    archive = tmp_path / "boxes.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for path in sets["yolo"].rglob("*"):
            if path.is_file():
                z.write(path, "my_set/" + path.relative_to(sets["yolo"]).as_posix())
        z.writestr("../evil.txt", "outside")
    assert detect_layout(archive) == "zip"
    boxset = load_boxset(ingest(archive))
    assert len(boxset.images) == 8
    assert any("outside the archive" in r["reason"] for r in boxset.refused)


def test_an_uploaded_folder_reads_as_the_folder_and_paths_outside_are_refused(sets):
    from tl_core.detect.formats import ingest_files

    files = [("yolo/" + p.relative_to(sets["yolo"]).as_posix(), p.read_bytes())
             for p in sets["yolo"].rglob("*") if p.is_file()]
    boxset = load_boxset(ingest_files(files + [("../../etc/evil.txt", b"x")], "yolo"))
    assert len(boxset.images) == 8 and boxset.layout == "yolo"
    assert any("outside" in r["reason"] for r in boxset.refused)


def test_class_folders_are_not_taken_for_boxes(sample_dir, tmp_path):
    assert detect_layout(sample_dir) is None
    archive = tmp_path / "classes.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for path in sorted(sample_dir.rglob("*.png"))[:3]:
            z.write(path, path.relative_to(sample_dir).as_posix())
    assert detect_layout(archive) is None


def test_malformed_json_yaml_and_xml_name_the_file_and_line(sets, tmp_path):
    coco = shutil.copytree(sets["coco"], tmp_path / "coco")
    (coco / "annotations.json").write_text('{"images": [\n  {"id": 1,\n  oops\n]}')
    with pytest.raises(AnnotationError, match=r"annotations.json: line 3"):
        ingest(coco)
    yolo = shutil.copytree(sets["yolo"], tmp_path / "yolo")
    (yolo / "data.yaml").write_text("names:\n  0: a\n  1: [b\n")
    with pytest.raises(AnnotationError, match=r"data.yaml: line \d+"):
        ingest(yolo)
    voc = shutil.copytree(sets["voc"], tmp_path / "voc")
    (voc / "Annotations" / "scene_0001.xml").write_text("<annotation>\n<object>\n</annotation>")
    with pytest.raises(AnnotationError, match=r"scene_0001.xml: line 3"):
        ingest(voc)


def test_missing_pictures_corrupt_files_and_wrong_convention_are_listed(sets, tmp_path):
    coco = shutil.copytree(sets["coco"], tmp_path / "coco")
    data = json.loads((coco / "annotations.json").read_text())
    (coco / "images" / "scene_0002.jpg").unlink()
    (coco / "images" / "scene_0003.jpg").write_bytes(b"not a picture at all")
    for ann in data["annotations"]:  # corners written where COCO wants x, y, w, h
        if ann["image_id"] == 5:
            x, y, w, h = ann["bbox"]
            ann["bbox"] = [x, y, x + w, y + h]
    (coco / "annotations.json").write_text(json.dumps(data))
    boxset = load_boxset(ingest(coco))
    assert any("scene_0002.jpg" in note and "missing picture" in note for note in boxset.notes)
    assert any(r["name"].endswith("scene_0003.jpg") for r in boxset.refused)
    assert any("x0, y0, x1, y1" in note for note in boxset.notes)
    assert len(boxset.images) == 6


def test_huge_picture_is_stored_smaller_with_its_boxes_scaled(tmp_path):
    folder = tmp_path / "big"
    (folder / "images").mkdir(parents=True)
    Image.new("RGB", (4096, 2048), (90, 120, 30)).save(folder / "images" / "big.jpg")
    Image.new("RGB", (100, 100), (9, 9, 9)).save(folder / "images" / "small.png")
    (folder / "annotations.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "big.jpg", "width": 4096, "height": 2048},
                   {"id": 2, "file_name": "small.png", "width": 100, "height": 100}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1000, 500, 400, 200]}],
        "categories": [{"id": 1, "name": "field"}]}))
    boxset = load_boxset(ingest(folder))
    big = _by_source(boxset)["big.jpg"]
    assert (big["width"], big["height"]) == (2048, 1024)
    assert big["boxes"][0] == pytest.approx([500, 250, 700, 350])
    assert Image.open(boxset.path(big)).size == (2048, 1024)
    assert any("big.jpg" in note and "scaled" in note for note in boxset.notes)
    assert _by_source(boxset)["small.png"]["boxes"] == []


def test_audit_lists_problems_and_training_uses_only_valid_boxes(tmp_path):
    folder = tmp_path / "odd"
    (folder / "images").mkdir(parents=True)
    for name in ("a.png", "b.png", "c.png"):
        Image.new("RGB", (200, 100), (50, 60, 70)).save(folder / "images" / name)
    anns = [(1, 1, [10, 10, 50, 40]), (1, 1, [10, 10, 50, 40]),  # a duplicate
            (1, 2, [150, 50, 100, 20]),  # reaches outside the 200×100 picture
            (2, 1, [30, 30, 0, 10]),  # zero width
            (2, 9, [5, 5, 20, 20]),  # unknown category
            (2, 2, [100, 50, 4, 3])]  # tiny at the input size
    (folder / "annotations.json").write_text(json.dumps({
        "images": [{"id": i, "file_name": n, "width": 200, "height": 100} for i, n in ((1, "a.png"), (2, "b.png"),
                                                                                      (3, "c.png"))],
        "annotations": [{"id": k, "image_id": i, "category_id": c, "bbox": b} for k, (i, c, b) in enumerate(anns)],
        "categories": [{"id": 1, "name": "cup"}, {"id": 2, "name": "plate"}]}))
    boxset = load_boxset(ingest(folder))
    report = audit.audit(boxset, image_size=96)
    assert report["problem_counts"] == {"outside": 1, "degenerate": 1, "unknown_class": 1, "duplicate": 1}
    assert report["background_images"] == 1 and report["too_small"] == 1
    assert report["class_counts"] == {"cup": 3, "plate": 2}
    assert any("too small" in w for w in report["warnings"])
    assert any("background" in w for w in report["warnings"])
    assert sum(b["count"] for b in report["size_histogram"]) == 4
    tensors = batches.load(boxset, 96)
    used = {f: t for f, t in zip(tensors.files, tensors.targets)}
    a = used[next(f for f in used if f.endswith("a.png"))]
    assert len(a["boxes"]) == 3 and float(a["boxes"].max()) <= 96  # duplicate kept, outside one clipped
    b = used[next(f for f in used if f.endswith("b.png"))]
    assert len(b["boxes"]) == 1  # zero-width and unknown-class boxes are not trained on
