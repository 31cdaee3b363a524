"""Datasets in the workspace: the Dataset record, loading one from its manifest, listing them."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ...ops.filecache import file_stamp, keyed_on
from ...ops.storage import read_json, workspace_root


class DatasetError(ValueError):
    """The files as a whole cannot make a dataset; the message says what to fix.

    `refused` lists the files that were refused on the way, for the UI to show.
    """

    def __init__(self, message: str, refused: list[dict] | None = None):
        super().__init__(message)
        self.refused = list(refused or [])


@dataclass
class Dataset:
    """An ingested dataset: its folder, classes (sorted), accepted items and refused files."""

    root: Path
    id: str
    name: str
    classes: list[str]
    items: list[dict]
    refused: list[dict]
    created: str = ""
    source: dict = field(default_factory=dict)
    tasks: list[dict] = field(default_factory=list)  # a labels table's tasks [{name, kind, classes}]; [] for folders
    notes: list[str] = field(default_factory=list)  # what the ingest wants the user to know (labels_table)
    parent: str | None = None  # the id of the dataset this version was made from (tl_core.data.datasets.versions)
    changes: list[dict] = field(default_factory=list)  # what this version changed in its parent, one record each

    def paths(self) -> list[Path]:
        """Absolute image paths, in items order."""
        return [self.root / item["path"] for item in self.items]

    def labels(self) -> list[int]:
        """Class indices into `classes`, in items order."""
        index_of = {name: index for index, name in enumerate(self.classes)}
        return [index_of[item["label"]] for item in self.items]

    @property
    def num_outputs(self) -> int:
        """The model's outputs for this data: its classes, or every task's classes side by side (a labels table)."""
        return sum(len(task["classes"]) for task in self.tasks) if self.tasks else len(self.classes)

    def counts(self) -> dict[str, int]:
        """Images per class, in class order."""
        per_class = Counter(item["label"] for item in self.items)
        return {name: per_class[name] for name in self.classes}


def load_dataset(root: str | Path) -> Dataset:
    """The dataset in `root`, from its manifest.json."""
    manifest_path = Path(root) / "manifest.json"
    try:
        manifest = read_json(manifest_path)
    except ValueError as error:
        raise DatasetError(f"{manifest_path} is damaged ({error})") from None
    if manifest is None:
        raise DatasetError(f"{root}: no manifest.json here; ingest the images first")
    try:
        return _from_manifest(Path(root), manifest)
    except (KeyError, TypeError, AttributeError) as error:
        raise DatasetError(f"{manifest_path} is damaged (missing or wrong {error})") from None


@keyed_on(lambda root: file_stamp(Path(root) / "manifest.json"), copy_result=False)
def dataset_name(root: str | Path) -> str:
    """The name of the dataset in `root` (DatasetError as load_dataset): tables of runs name every run's dataset
    at each rerun, and a manifest lists every image, so it is read again only when it changes."""
    return load_dataset(root).name


def list_datasets(workspace: Path | None = None) -> list[Dataset]:
    """Every complete dataset in the workspace, newest first."""
    datasets_dir = Path(workspace or workspace_root()) / "datasets"
    if not datasets_dir.is_dir():
        return []
    found = []
    for root in datasets_dir.iterdir():
        if root.name.startswith(".") or not (root / "manifest.json").is_file():
            continue  # half-built (a failed ingest cleans up, a crashed one may not)
        try:
            found.append(load_dataset(root))
        except DatasetError:
            continue  # one damaged folder must not hide the others
    return sorted(found, key=lambda dataset: dataset.id, reverse=True)


def _from_manifest(root: Path, manifest: dict) -> Dataset:
    return Dataset(root=Path(root), id=manifest["id"], name=manifest["name"], classes=list(manifest["classes"]),
                   items=list(manifest["items"]), refused=list(manifest.get("refused", [])),
                   created=manifest.get("created", ""), source=dict(manifest.get("source", {})),
                   tasks=list(manifest.get("tasks", [])), notes=list(manifest.get("notes", [])),
                   parent=manifest.get("parent"), changes=list(manifest.get("changes", [])))
