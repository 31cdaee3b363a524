"""Labels from a table: a CSV of `file, task_a, task_b, ...` beside the images, for multi-task and multi-label data.

The first row names the columns; the first column holds each image's path relative to the data folder. Every
other column is a task: a single-label task (one class per image), or a multi-label one when its name is
`tags` or ends in `tags` (`colour_tags`): several tags per image, separated by `;` or `|`. An empty cell
means the image has no label for that task; it still trains the others.

What cannot be used is reported, never silently dropped: a row whose file is not in the folder, a row that
lists a file again, a cell-less row, images in the folder that the table does not list (refused with the
reason, like any other refused file); empty labels are counted per task in the notes. A task asked for by name
(`tasks=`) that the table lacks is an error that lists the columns it has.
"""
from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Callable

from .ingest import _Entry, _ingest, _is_clutter, _walk_folder
from .store import Dataset, DatasetError

MAX_TABLE_BYTES = 20 << 20
TAG_SEPARATORS = (";", "|")
STORED_LABEL = "images"  # every image of a table dataset sits in one folder: its labels are in the manifest


def is_multi_label(column: str) -> bool:
    return column.strip().lower().endswith("tags")


def read_table(table: str | Path | bytes, table_name: str = "labels.csv") -> tuple[list[str], list[tuple[int, list[str]]]]:
    """(header, [(row number, cells)]) of a CSV file or its bytes; a clear message when it cannot be read."""
    data = table if isinstance(table, bytes) else _read_table_file(Path(table))
    if len(data) > MAX_TABLE_BYTES:
        raise DatasetError(f"{table_name}: {len(data) >> 20} MiB is too big for a labels table "
                           f"(at most {MAX_TABLE_BYTES >> 20} MiB)")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise DatasetError(f"{table_name}: not UTF-8 text (byte {error.start}); save the table as UTF-8 CSV") from None
    try:
        dialect = csv.Sniffer().sniff(text[:4096], delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    rows = [(n, [cell.strip() for cell in cells]) for n, cells in enumerate(csv.reader(io.StringIO(text), dialect), 1)]
    rows = [(n, cells) for n, cells in rows if any(cells)]
    if not rows:
        raise DatasetError(f"{table_name}: empty; its first row names the columns (file, then one column a task)")
    header = rows[0][1]
    if len(header) < 2:
        raise DatasetError(f"{table_name}: the first row names only {len(header)} column; it needs the file column "
                           "and at least one task column (for example: file,category,colour)")
    return header, rows[1:]


def _read_table_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise DatasetError(f"{path}: no such labels table") from None
    except OSError as error:
        raise DatasetError(f"{path}: cannot be read ({error.strerror or error})") from None


def parse_labels(header: list[str], rows: list[tuple[int, list[str]]], tasks: list[str] | None = None,
                 table_name: str = "labels.csv") -> tuple[list[dict], dict[str, dict], list[dict], list[str]]:
    """(tasks [{name, kind}], {file: {"row", "labels": {task: label | [tags]}}}, refused rows, notes)."""
    columns = {name: k for k, name in enumerate(header) if k > 0 and name}
    unnamed = [k + 1 for k, name in enumerate(header) if k > 0 and not name]
    notes = [f"{table_name}: column {k} has no name in the first row and is ignored" for k in unnamed]
    wanted = list(tasks) if tasks else list(columns)
    unknown = [name for name in wanted if name not in columns]
    if unknown:
        raise DatasetError(f"{table_name}: no column named {', '.join(repr(u) for u in unknown)}; its columns are "
                           f"{', '.join(repr(c) for c in columns) or 'none besides the file column'}")
    specs = [{"name": name, "kind": "multi-label" if is_multi_label(name) else "single-label"} for name in wanted]
    labelled, refused, empty = {}, [], {name: 0 for name in wanted}
    for n, cells in rows:
        file = cells[0].replace("\\", "/") if cells else ""
        where = f"{table_name} row {n}"
        if not file:
            refused.append({"name": where, "reason": "no file name in the first column"})
            continue
        if file in labelled:
            first = labelled[file]["row"]
            refused.append({"name": f"{where} ({file})", "reason": f"lists {file} again; row {first} is kept"})
            continue
        labels = {}
        for spec in specs:
            k = columns[spec["name"]]
            cell = cells[k] if k < len(cells) else ""
            if spec["kind"] == "multi-label":
                value = sorted({tag.strip() for tag in _split_tags(cell) if tag.strip()})
                labels[spec["name"]] = value  # no tags is a label too: none of them applies
                if not cell:
                    empty[spec["name"]] += 1
            elif cell:
                labels[spec["name"]] = cell
            else:
                empty[spec["name"]] += 1
        labelled[file] = {"row": n, "labels": labels}
    for name, count in empty.items():
        if count:
            notes.append(f"{count} image{'s' if count != 1 else ''} without a label for {name!r}: "
                         f"{'they count as having none of its tags' if is_multi_label(name) else 'they train the other tasks only'}")
    return specs, labelled, refused, notes


def _split_tags(cell: str) -> list[str]:
    for separator in TAG_SEPARATORS:
        if separator in cell:
            return cell.split(separator)
    return [cell] if cell else []


def ingest_labelled_folder(src: str | Path, table: str | Path | bytes, name: str | None = None,
                           workspace: Path | None = None, *, tasks: list[str] | None = None,
                           progress: Callable[[int, int], None] | None = None) -> Dataset:
    """A folder of images (any layout) and a labels table naming them: a new dataset whose manifest holds each
    image's label for every task. Refusals carry the row or file and the reason."""
    src = Path(src)
    if not src.is_dir():
        raise DatasetError(f"{src}: not a folder")
    table_file = _table_path(src, table)
    table_name = table_file.name if table_file else "labels.csv"
    data = _read_table_file(table_file) if table_file else table  # read once: parsed, then fingerprinted
    header, rows = read_table(data, table_name)
    specs, labelled, refused, notes = parse_labels(header, rows, tasks, table_name)
    files, _ = _walk_folder(src)
    on_disk = {file.name: file for file in files}
    table_file = table_file.resolve() if table_file else None
    entries = []
    for file, row in labelled.items():
        found = on_disk.get(os.path.normpath(file).replace(os.sep, "/"))
        if found is None:
            refused.append({"name": f"{table_name} row {row['row']} ({file})",
                            "reason": f"{file} is not in {src.name}/"})
            continue
        entries.append(_Entry(found.name, STORED_LABEL, found.read, None, None, {"tasks": row["labels"]}))
    listed = {entry.name for entry in entries}
    for file in files:
        if file.name in listed or _is_clutter(file.parts) or (table_file and (src / file.name).resolve() == table_file):
            continue
        if Path(file.name).suffix.lower() in {".csv", ".txt", ".md", ".json"}:
            continue  # the table itself and notes beside the images
        refused.append({"name": file.name, "reason": f"not listed in {table_name}, so it has no labels"})
    source = {"kind": "folder+table", **_table_source(src, data, files, tasks)}
    return _ingest(entries, refused, name or src.resolve().name, source, workspace, progress, min_classes=1,
                   extra={"tasks": _task_specs(specs, entries), "notes": notes})


def _table_path(src: Path, table: str | Path | bytes) -> Path | None:
    """The table's file: as given, or relative to the data folder (None when the table came as bytes)."""
    if isinstance(table, bytes):
        return None
    return Path(table) if Path(table).is_absolute() or Path(table).exists() else src / table


def _table_source(src: Path, data: bytes, files: list, tasks: list[str] | None) -> dict:
    """What identifies a labelled folder: the folder's files and the table's bytes (and the tasks asked for)."""
    import hashlib

    from .ingest import _fingerprint

    return {"path": str(src.resolve()), "fingerprint": _fingerprint(src, files),
            "table": hashlib.sha256(data).hexdigest(), "tasks": list(tasks or [])}


def ingest_labelled_or_reuse_folder(src: str | Path, table: str | Path, name: str | None = None,
                                    workspace: Path | None = None, *, tasks: list[str] | None = None) -> Dataset:
    """The dataset already ingested from this folder and table if neither changed since, else a new ingest."""
    from .store import list_datasets

    src = Path(src)
    if not src.is_dir():
        raise DatasetError(f"{src}: not a folder")
    table_file = _table_path(src, table)
    wanted = {"kind": "folder+table",
              **_table_source(src, _read_table_file(table_file), _walk_folder(src)[0], tasks)}
    for dataset in list_datasets(workspace):
        if all(dataset.source.get(key) == value for key, value in wanted.items()):
            return dataset
    return ingest_labelled_folder(src, table, name, workspace, tasks=tasks)


def _task_specs(specs: list[dict], entries: list[_Entry]) -> list[dict]:
    """Each task with its sorted classes (or tags), from the labels of the images accepted so far."""
    out = []
    for spec in specs:
        values = set()
        for entry in entries:
            value = entry.extra["tasks"].get(spec["name"])
            if value is None:
                continue
            values.update(value if isinstance(value, list) else [value])
        out.append({**spec, "classes": sorted(values)})
    return out


def ingest_labelled_zip(src: str | Path | bytes, table_member: str | None = None, name: str | None = None,
                        workspace: Path | None = None, **kwargs) -> Dataset:
    """A zip holding the images and one labels table (a `.csv` anywhere in it): unpacked with the zip ingest's
    limits into a temporary folder, then ingested as a labelled folder."""
    import tempfile
    import zipfile

    from .ingest import MAX_ZIP_MEMBERS, MAX_ZIP_RATIO, _check_archive_limits, _zip_tree

    label = src if isinstance(src, (str, Path)) else "upload.zip"
    try:
        archive = zipfile.ZipFile(io.BytesIO(src) if isinstance(src, bytes) else src)
    except (zipfile.BadZipFile, OSError) as error:
        raise DatasetError(f"{Path(str(label)).name}: not a readable zip archive ({error})") from None
    with archive, tempfile.TemporaryDirectory(prefix="tl-table-") as tmp:
        infos = [info for info in archive.infolist() if not info.is_dir()]
        _check_archive_limits(infos, Path(str(label)).name, MAX_ZIP_MEMBERS, 2 << 30)
        files, _ = _zip_tree(archive, infos, MAX_ZIP_RATIO)
        tables = [f for f in files if f.name.lower().endswith(".csv") and (table_member is None or f.name == table_member)]
        if len(tables) != 1:
            raise DatasetError(f"{Path(str(label)).name}: {'no' if not tables else len(tables)} .csv labels table"
                               f"{'s' if len(tables) > 1 else ''} in the archive; it needs exactly one")
        root = Path(tmp, "data")
        for f in files:
            if f.refusal or ".." in f.parts or _is_clutter(f.parts):
                continue  # a dangerous member never reaches the disk; the table then reports its row
            target = root.joinpath(*f.parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(f.read())
        table_path = root.joinpath(*tables[0].parts)  # its file names are relative to its own folder
        dataset = ingest_labelled_folder(table_path.parent, table_path, name or Path(str(label)).stem, workspace,
                                         **kwargs)
    return dataset
