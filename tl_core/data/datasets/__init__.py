"""Datasets: safe ingest of folders, uploads and archives; the audit; seeded splits; the decoded-image cache.

A dataset lives in `<workspace>/datasets/<id>/`: the accepted files, byte for byte, under
`images/<class>/`, and `manifest.json` listing them with their hashes and sizes and every file
that was refused, with the reason. Nothing a user gives is dropped without a record, except
operating-system clutter (`.DS_Store`, `__MACOSX/`, `Thumbs.db`, `desktop.ini`, dot-files).

One idea a module:
    images   opening one image safely (bounded decoding, EXIF, RGB), ImageRefused
    store    the Dataset record; loading and listing the workspace's datasets
    ingest   folders, zips and uploads into a new dataset, every refusal recorded
    audit    counts, imbalance, duplicates, tiny images, overlap; a subset without some classes
    splits   seeded stratified hold-out and k folds
    pixels   decoded, resized and cropped once per size, cached as uint8; prepare_image
    versions a new dataset with images relabelled, dropped or added; its parent stays as it was
"""
from .audit import FEW_IMAGES_PER_CLASS, audit, without
from .images import MAX_ASPECT_RATIO, MAX_DECODE_BYTES, MAX_IMAGE_PIXELS, ImageRefused, open_image
from .ingest import (MAX_ZIP_BYTES, MAX_ZIP_MEMBERS, MAX_ZIP_RATIO, ingest_files, ingest_folder,
                     ingest_or_reuse_folder, ingest_zip)
from .pixels import decode_images, prepare_image
from .splits import held_out_count, stratified_folds, stratified_split
from .store import Dataset, DatasetError, dataset_name, list_datasets, load_dataset
from .versions import describe_changes, new_version

__all__ = [
    "FEW_IMAGES_PER_CLASS", "audit", "without",
    "MAX_ASPECT_RATIO", "MAX_DECODE_BYTES", "MAX_IMAGE_PIXELS", "ImageRefused", "open_image",
    "MAX_ZIP_BYTES", "MAX_ZIP_MEMBERS", "MAX_ZIP_RATIO", "ingest_files", "ingest_folder", "ingest_or_reuse_folder",
    "ingest_zip",
    "decode_images", "prepare_image",
    "held_out_count", "stratified_folds", "stratified_split",
    "Dataset", "DatasetError", "dataset_name", "list_datasets", "load_dataset",
    "describe_changes", "new_version",
]
