"""Uploads a user hands the Data page: a folder upload's files sorted into class folders, and a name for them."""
from __future__ import annotations

import time


def files_from_folder_upload(uploads) -> list[tuple[str, bytes, str, str]]:
    """Uploaded files of a folder of class folders → (name, bytes, class, sub-folder) for ingest_files.

    A folder upload names each file by its path below the chosen folder ("fashion/Bag/a.png").
    As for folders and zips, an optional single top folder wraps the class folders; a file that is
    in no class folder gets no class, so the engine refuses it with a reason. A file in a sub-folder
    of a class folder goes to that class, with the sub-folder named (the audit says so).
    """
    paths = [[part for part in upload.name.replace("\\", "/").split("/") if part not in ("", ".")]
             for upload in uploads]
    tops = {parts[0] for parts in paths if parts}
    depth = 1 if len(tops) == 1 and all(len(parts) >= 3 for parts in paths) else 0
    files = []
    for upload, parts in zip(uploads, paths):
        inner = parts[depth:]
        label = inner[0] if len(inner) >= 2 else ""
        files.append(("/".join(parts) or upload.name, upload.getvalue(), label, "/".join(inner[1:-1])))
    return files


def upload_name(uploads, fallback: str) -> str:
    """A dataset name from a folder upload's top folder."""
    for upload in uploads:
        parts = [p for p in upload.name.replace("\\", "/").split("/") if p not in ("", ".")]
        if len(parts) > 1:
            return parts[0]
    return fallback or time.strftime("upload %Y-%m-%d %H:%M")
