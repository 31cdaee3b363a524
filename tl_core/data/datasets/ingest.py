"""Safe ingest of folders, zip archives and uploads into a new dataset folder: every file accepted
or refused with its reason, archives bounded, nothing written outside the workspace."""
from __future__ import annotations

import hashlib
import io
import os
import re
import secrets
import shutil
import stat
import time
import unicodedata
import zipfile
import zlib
from collections import Counter, defaultdict
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Callable, NamedTuple

from ...ops.storage import StorageFull, atomic_write_json, is_disk_full, workspace_root, write_bytes
from .images import ImageRefused, _decode, _read_source
from .store import Dataset, DatasetError, _from_manifest, list_datasets


MAX_ZIP_BYTES = 2 << 30  # uncompressed total of an archive
MAX_ZIP_MEMBERS = 20_000
MAX_ZIP_RATIO = 100  # images are already compressed; a member that deflates far more is suspect
_RATIO_CHECK_FROM_BYTES = 1 << 20  # a small member cannot hurt, whatever its ratio
_VALIDATE_DRAFT = 512  # ingest decodes big JPEGs at reduced scale: every byte is still read, so damage shows
_CLUTTER_NAMES = {"thumbs.db", "desktop.ini", "__macosx"}


class _File(NamedTuple):
    name: str  # as the user gave it, for messages
    parts: tuple[str, ...]  # its path in the tree, folder by folder
    read: Callable[[], bytes] | None
    refusal: str | None = None


class _Entry(NamedTuple):
    name: str
    label: str | None
    read: Callable[[], bytes] | None
    refusal: str | None = None
    subfolder: str | None = None  # the folders between the class folder and the file, when any
    extra: dict | None = None  # more fields of its manifest item (a labels table's labels: labels_table)


def ingest_folder(src: str | Path, name: str | None = None, workspace: Path | None = None, *,
                  progress: Callable[[int, int], None] | None = None, min_classes: int = 2) -> Dataset:
    """Ingest a folder of class folders (`cats/a.jpg`, `dogs/b.png`); bad files are refused, not fatal.
    `min_classes=1` takes a single class (images added to a model that has the others: tl_core.use.grow)."""
    src = Path(src)
    if not src.is_dir():
        raise DatasetError(f"{src}: not a folder")
    files, folders = _walk_folder(src)
    entries, refused = _tree_entries(files, folders)
    source = {"kind": "folder", "path": str(src.resolve()), "fingerprint": _fingerprint(src, files)}
    return _ingest(entries, refused, name or src.resolve().name, source, workspace, progress, min_classes)


def ingest_or_reuse_folder(src: str | Path, name: str | None = None, workspace: Path | None = None) -> Dataset:
    """The dataset already ingested from folder `src` if its files are unchanged since, else a new ingest.

    The command line is run again and again on one folder; a copy each time would fill the disk.
    """
    return ingested_before(src, {}, workspace) or ingest_folder(src, name, workspace)


def ingested_before(src: str | Path, marks: dict, workspace: Path | None = None) -> Dataset | None:
    """The dataset ingested from folder `src` whose files are unchanged since and whose source carries `marks`
    (a kind's own, e.g. {"anomaly": True}), or None: every "ingest or reuse" asks this."""
    src = Path(src)
    if not src.is_dir():
        raise DatasetError(f"{src}: not a folder")
    wanted = {"kind": "folder", "path": str(src.resolve()), "fingerprint": _fingerprint(src, _walk_folder(src)[0]),
              **marks}
    return next((dataset for dataset in list_datasets(workspace)
                 if all(dataset.source.get(key) == value for key, value in wanted.items())), None)


@contextmanager
def zip_members(src: str | Path | bytes, label: str, max_members: int = MAX_ZIP_MEMBERS,
                max_total_bytes: int = MAX_ZIP_BYTES, max_ratio: float = MAX_ZIP_RATIO):
    """(files, folders) of a zip archive (bytes or a path), read member by member within the limits while the
    archive stays open; a DatasetError naming `label` for an unreadable archive or one past a limit.

    Nothing is extracted blindly: escaping paths, links, encrypted members and zip bombs are refused."""
    in_memory = isinstance(src, (bytes, bytearray, memoryview))
    try:
        archive = zipfile.ZipFile(io.BytesIO(src) if in_memory else src)
    except (zipfile.BadZipFile, OSError) as error:
        raise DatasetError(f"{label}: not a readable zip archive ({error})") from None
    with archive:
        infos = archive.infolist()
        _check_archive_limits(infos, label, max_members, max_total_bytes)
        yield _zip_tree(archive, infos, max_ratio)


def ingest_zip(src: str | Path | bytes, name: str | None = None, workspace: Path | None = None, *,
               max_members: int = MAX_ZIP_MEMBERS, max_total_bytes: int = MAX_ZIP_BYTES,
               max_ratio: float = MAX_ZIP_RATIO, progress: Callable[[int, int], None] | None = None,
               min_classes: int = 2) -> Dataset:
    """Ingest a zip of class folders (one wrapper folder allowed), reading members one by one.

    Nothing is extracted blindly: escaping paths, links, encrypted members and zip bombs are refused.
    """
    label = "archive" if isinstance(src, (bytes, bytearray, memoryview)) else Path(src).name
    with zip_members(src, label, max_members, max_total_bytes, max_ratio) as (files, folders):
        entries, refused = _tree_entries(files, folders)
        source = {"kind": "zip", "file": label}
        return _ingest(entries, refused, name or Path(label).stem, source, workspace, progress, min_classes)


def ingest_files(files: list[tuple], name: str | None = None, workspace: Path | None = None, *,
                 progress: Callable[[int, int], None] | None = None, min_classes: int = 2) -> Dataset:
    """Ingest uploaded files given as (file name, bytes, class name), as an upload widget hands them over.

    A fourth element, when given, names the sub-folder of the class folder the file came from. `min_classes=1`
    takes a single class (a held-out test of one class: tl_core.use.heldout).
    """
    entries = []
    for file_name, data, label, *subfolder in files:
        if _is_clutter((_basename(file_name),)):
            continue
        label = _clean_label(label or "")
        entries.append(_Entry(file_name, label or None, partial(bytes, data), None if label else "no class given",
                              (subfolder or [None])[0] or None))
    default_name = time.strftime("upload %Y-%m-%d %H:%M")
    return _ingest(entries, [], name or default_name, {"kind": "upload", "files": len(files)}, workspace, progress,
                   min_classes)


def _walk_folder(src: Path) -> tuple[list[_File], list[tuple[str, tuple[str, ...]]]]:
    """Every file and folder below `src`, sorted; symlinks are followed (it is the user's own disk)."""
    files, folders = [], []
    for dirpath, dirnames, filenames in os.walk(src, followlinks=True):
        if _is_symlink_loop(Path(dirpath), src):
            dirnames.clear()  # its content was already listed under the folder it loops back to
            continue
        dirnames[:] = sorted(d for d in dirnames if not _is_clutter((d,)))
        rel = Path(dirpath).relative_to(src).parts
        if rel:
            folders.append(("/".join(rel), rel))
        for file_name in sorted(filenames):
            parts = rel + (file_name,)
            files.append(_File("/".join(parts), parts, partial(_read_source, Path(dirpath, file_name), "")))
    return files, folders


def _fingerprint(src: Path, files: list[_File]) -> str:
    """Hash of every file's path, size and modification time: changes when the folder's content does."""
    digest = hashlib.sha256()
    for file in files:
        try:
            info = src.joinpath(*file.parts).stat()
            digest.update(f"{file.name}\t{info.st_size}\t{info.st_mtime_ns}\n".encode())
        except OSError:
            digest.update(f"{file.name}\tunreadable\n".encode())
    return digest.hexdigest()


def _is_symlink_loop(path: Path, src: Path) -> bool:
    real = os.path.realpath(path)
    return any(os.path.realpath(parent) == real for parent in path.parents if len(parent.parts) >= len(src.parts))


def _check_archive_limits(infos: list[zipfile.ZipInfo], label: str, max_members: int, max_total_bytes: int) -> None:
    if len(infos) > max_members:
        raise DatasetError(f"{label}: {len(infos)} entries, over the limit of {max_members}; "
                           "split the archive into smaller ones")
    total = sum(info.file_size for info in infos)
    if total > max_total_bytes:
        raise DatasetError(f"{label}: {_human_bytes(total)} uncompressed, over the limit of "
                           f"{_human_bytes(max_total_bytes)}; split the archive into smaller ones")


def _zip_tree(archive: zipfile.ZipFile, infos: list[zipfile.ZipInfo], max_ratio: float):
    """The archive's members as files and folders, each dangerous member already carrying its refusal."""
    files, folders = [], []
    for info in infos:
        parts = tuple(p for p in info.filename.replace("\\", "/").split("/") if p not in ("", "."))
        refusal = _member_refusal(info, max_ratio)
        if info.is_dir():
            if refusal is None:
                folders.append((info.filename, parts))
            continue
        files.append(_File(info.filename, parts, partial(_read_member, archive, info), refusal))
    return files, folders


def _member_refusal(info: zipfile.ZipInfo, max_ratio: float) -> str | None:
    path = info.filename.replace("\\", "/")  # some Windows tools write backslashes
    if path.startswith("/") or re.match(r"[A-Za-z]:", path) or ".." in path.split("/"):
        return "path leads outside the archive's folder (absolute or '..'); skipped for safety"
    if stat.S_ISLNK(info.external_attr >> 16):
        return "symbolic link; skipped for safety"
    if info.flag_bits & 0x1:
        return "encrypted; unzip it with its password first"
    if info.file_size > _RATIO_CHECK_FROM_BYTES and info.file_size > max_ratio * max(info.compress_size, 1):
        ratio = info.file_size / max(info.compress_size, 1)
        return f"compressed {ratio:.0f}:1, far more than any image; possibly a zip bomb"
    return None


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    try:
        return archive.read(info)  # bounded by the declared size, which the limits checked
    except (zipfile.BadZipFile, zlib.error, NotImplementedError, RuntimeError, EOFError, OSError) as error:
        raise ImageRefused(f"could not be read from the archive ({error})") from None


def _tree_entries(files: list[_File], folders: list[tuple[str, tuple[str, ...]]]) -> tuple[list[_Entry], list[dict]]:
    """Entries whose class is the first folder below an optional wrapper; plus empty class folders, refused."""
    depth = _wrapper_depth([f.parts for f in files if f.refusal is None and not _is_clutter(f.parts)])
    entries, used_folders = [], set()
    for file in files:
        parts = file.parts[depth:]
        if file.refusal is not None:  # a dangerous member is reported even when it looks like clutter
            entries.append(_Entry(file.name, None, None, file.refusal))
        elif _is_clutter(file.parts):
            continue
        elif len(parts) == 1:
            entries.append(_Entry(file.name, None, None, "not inside a class folder"))
        elif len(parts) > 2:  # kept in its class; the audit says so and offers to leave such images out
            used_folders.add(parts[0])
            entries.append(_Entry(file.name, _clean_label(parts[0]), file.read, None, "/".join(parts[1:-1])))
        else:
            used_folders.add(parts[0])
            entries.append(_Entry(file.name, _clean_label(parts[0]), file.read))
    empty = [{"name": shown.rstrip("/") + "/", "reason": "empty class folder"}
             for shown, parts in folders
             if len(parts) == depth + 1 and not _is_clutter(parts) and parts[-1] not in used_folders]
    return entries, empty


def _wrapper_depth(file_parts: list[tuple[str, ...]]) -> int:
    """1 when every file sits two folders deep under one top folder (a zip's usual wrapper), else 0."""
    tops = {parts[0] for parts in file_parts}
    return 1 if len(tops) == 1 and all(len(parts) >= 3 for parts in file_parts) else 0


def _is_clutter(parts: tuple[str, ...]) -> bool:
    """Operating-system files that are no user data: dot-files, `__MACOSX/`, `Thumbs.db`, `desktop.ini`."""
    return any((part.startswith(".") and part not in (".", "..")) or part.lower() in _CLUTTER_NAMES
               for part in parts)


def _ingest(entries: list[_Entry], refused: list[dict], name: str, source: dict, workspace: Path | None,
            progress: Callable[[int, int], None] | None, min_classes: int = 2, extra: dict | None = None) -> Dataset:
    """Validate and copy entries into a new dataset folder, which appears only once complete; `extra` adds
    fields to its manifest."""
    dataset_id, created = _new_id()
    datasets_dir = Path(workspace or workspace_root()) / "datasets"
    building = datasets_dir / f".{dataset_id}.partial"  # list_datasets skips dot-folders
    with _published_or_removed(building):
        items, bad = _store_entries(entries, building, progress)
        refused = refused + bad
        _check_usable(Counter(item["label"] for item in items), refused, min_classes)
        manifest = {"id": dataset_id, "name": name, "created": created,
                    "classes": sorted({item["label"] for item in items}),
                    "items": items, "refused": refused, "source": source, **(extra or {})}
        atomic_write_json(building / "manifest.json", manifest)
    return _from_manifest(datasets_dir / dataset_id, manifest)


@contextmanager
def _published_or_removed(building: Path):
    """Around the making of a dataset in `building` (.<id>.partial): on success it appears whole as
    <id>; on any failure it is removed, so no half-made dataset is ever listed."""
    try:
        yield
        os.replace(building, building.with_name(building.name[1:].removesuffix(".partial")))
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise


def _store_entries(entries: list[_Entry], root: Path, progress) -> tuple[list[dict], list[dict]]:
    """Copy each decodable entry to `root/images/<class>/`; the others become refusals."""
    items, refused, placement = [], [], _Placement()
    for done, entry in enumerate(entries, 1):
        try:
            if entry.refusal:
                raise ImageRefused(entry.refusal)
            data = entry.read()
            _, (width, height) = _decode(data, entry.name, _VALIDATE_DRAFT, None)
        except ImageRefused as refusal:
            refused.append({"name": entry.name, "reason": refusal.reason})
        else:
            rel = placement.place(entry.label, _basename(entry.name))
            try:
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise StorageFull(root / rel, len(data), error) if is_disk_full(error) else error from None
            write_bytes(root / rel, data)  # the original bytes: a later pipeline may decode differently
            items.append({"path": rel, "label": entry.label, "sha256": hashlib.sha256(data).hexdigest(),
                          "width": width, "height": height, "bytes": len(data)})
            if entry.subfolder:
                items[-1]["subfolder"] = entry.subfolder
            items[-1].update(entry.extra or {})
        if progress:
            progress(done, len(entries))
    items.sort(key=lambda item: (item["label"], item["path"]))
    return items, refused


def _check_usable(counts: Counter, refused: list[dict], min_classes: int = 2) -> None:
    """Two classes at least (one for images added to a model); a class of a single image is the audit's
    warning, not an error."""
    note = _refused_note(refused)
    if not counts and min_classes < 2:
        raise DatasetError(f"no usable images{note}", refused)
    if len(counts) < min_classes:
        found = f"{len(counts)} ({', '.join(sorted(counts))})" if counts else "0"
        raise DatasetError(f"fewer than 2 classes: found {found}{note}; a classifier needs images of "
                           "2 classes or more, one folder per class", refused)


def _refused_note(refused: list[dict]) -> str:
    if not refused:
        return ""
    shown = ", ".join(f"{r['name']} ({r['reason']})" for r in refused[:3])
    more = f" and {len(refused) - 3} more" if len(refused) > 3 else ""
    return f"; {_plural(len(refused), 'file')} refused: {shown}{more}"


class _UniqueNames:
    """Safe file-system names, unique ignoring case (macOS and Windows disks ignore it)."""

    def __init__(self):
        self._taken: set[str] = set()

    def claim(self, wanted: str) -> str:
        stem, suffix = os.path.splitext(_safe_name(wanted))
        candidate, n = stem + suffix, 1
        while candidate.lower() in self._taken:
            candidate, n = f"{stem}_{n}{suffix}", n + 1
        self._taken.add(candidate.lower())
        return candidate


class _Placement:
    """Where each accepted file goes: `images/<safe class folder>/<safe, unique file name>`."""

    def __init__(self):
        self._folder_names = _UniqueNames()
        self._folder_of: dict[str, str] = {}
        self._file_names: dict[str, _UniqueNames] = defaultdict(_UniqueNames)

    def place(self, label: str, file_name: str) -> str:
        if label not in self._folder_of:
            self._folder_of[label] = self._folder_names.claim(label)
        folder = self._folder_of[label]
        return f"images/{folder}/{self._file_names[folder].claim(file_name)}"


def _safe_name(name: str) -> str:
    """Letters of any script, digits, `.`, `-` and `_`; no leading dot; short enough for any disk."""
    name = re.sub(r"[^\w.\-]+", "_", unicodedata.normalize("NFC", name)).strip("._") or "file"
    stem, suffix = os.path.splitext(name)
    return stem[:100] + suffix[:10]


def _clean_label(label: str) -> str:
    # macOS stores names decomposed (NFD); one class must not become two
    return unicodedata.normalize("NFC", label).strip()


def _basename(name: str) -> str:
    return re.split(r"[/\\]", name)[-1]


def _new_id() -> tuple[str, str]:
    """(id sortable by creation time and unique, ISO creation time in UTC)."""
    now_ns = time.time_ns()
    seconds = time.gmtime(now_ns // 1_000_000_000)
    micros = now_ns // 1000 % 1_000_000
    dataset_id = f"{time.strftime('%Y%m%d-%H%M%S', seconds)}-{micros:06d}-{secrets.token_hex(2)}"
    return dataset_id, time.strftime("%Y-%m-%dT%H:%M:%SZ", seconds)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}{'es' if word.endswith('s') else 's'}"


def _verb(n: int, singular: str, plural: str) -> str:
    return singular if n == 1 else plural


def _human_bytes(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
