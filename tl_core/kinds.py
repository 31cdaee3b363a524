"""Task kinds: what a run learns (labels, several labels, anomalies, boxes). The seam new kinds plug into.

A kind declares everything that differs between kinds: its data layout, how it fits (probe and fine-tune,
a memory bank, a detector's loop), what a finished run answers (evaluate, predict, export). The worker,
the command line and the app ask this registry; none of them branches on a kind's name, and a new kind
registers here without touching the loop, the worker or the router (the shape of Ultralytics' task_map).

A kind's functions are named by "module:function" strings and imported on first use, so `import tl_core`
stays cheap and a kind's heavy dependencies (pycocotools, say) load only for runs of that kind.

The contract of each function:
  fit(config, run_dir, emit, strategy) -> metrics dict
        trains the run and writes its outputs through tl_core's run folder; `emit(event, **info)` announces
        the closed list of events (tl_core.fit.callbacks.EVENTS) to the worker's standard listeners (event log,
        STOP file) and raises CancelFit when the user stopped the run. `strategy` is None for one device.
        A kind whose loop is tl_core.fit.loop.Fit hands `emit.callbacks(*its_own)` to the loop instead (the
        same listeners, which then also see the fit). tl_core.worker calls it (see there for a run's life);
        a caller's own training objective comes as a keyword `task=` (tl_core.fit.tasks), for kinds that take one.
  evaluate(run_dir, data_dir) -> JSON-able metrics of a finished run on data it never saw
  predictor(run_dir) -> an object whose predict(image: PIL.Image) returns a JSON-able dict
  export(run_dir, fmt, out_dir) -> a dict describing the verified bundle
  ingest(folder) -> Path of the dataset made (or reused) in the workspace from a folder in the kind's layout;
        refused files are reported, never silently dropped
  detect_layout(folder) -> True when a folder holds this kind's data layout (for the CLI's and the app's ingest)
Optional hooks (None: nothing to do):
  plan(config, run_dir, notice) -> RunConfig: the settings the fit trains, settled first (the Auto plan
        measures candidate plans); `notice(text, **progress)` tells the event log what happens meanwhile
        (progress, optional: `fraction` done of what is being measured and `eta_s`, read by the live view)
  after_fit(config, run_dir): checks of a finished run, before it is marked done (a grown model's recall of
        its old classes)
  refine(config) -> the name of the kind a run made under this kind's name really is (a classify run whose
        dataset came with a labels table is multitask; runs made before `task` existed are classify)
A kind may take more keywords than the contract's (classify's ingest takes a labels table); callers pass
them only when the user gave them.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class TaskKind:
    name: str  # RunConfig.task
    title: str  # in words, for the app: "Classify images"
    summary: str  # one sentence a newcomer reads before choosing
    layout: str  # the data layout it reads, in words
    fit: str  # "module:function" (see the contract above)
    ingest: str
    evaluate: str
    predictor: str
    export: str
    export_formats: tuple[str, ...] = ("onnx",)
    detect_layout: str | None = None
    metrics: tuple[str, ...] = ()  # the headline metric names of metrics.json, best first
    plan: str | None = None  # optional hooks: see the contract above
    after_fit: str | None = None
    refine: str | None = None
    options: dict = field(default_factory=dict)  # anything else a kind wants the app to know

    def call(self, hook: str, *args, **kwargs):
        """Import and call one of the kind's functions by its field name ("fit", "evaluate", ...)."""
        return resolve(getattr(self, hook))(*args, **kwargs)


_KINDS: dict[str, TaskKind] = {}


def register(kind: TaskKind) -> TaskKind:
    """Add a kind (a module of BUILTIN does it on import); one name with two different kinds is an error."""
    if kind.name in _KINDS and _KINDS[kind.name] != kind:
        raise ValueError(f"task kind {kind.name!r} is registered twice")
    _KINDS[kind.name] = kind
    return kind


def get(name: str) -> TaskKind:
    """The registered kind called `name`; ValueError naming the known ones otherwise."""
    _load_builtin()
    if name not in _KINDS:
        raise ValueError(f"unknown task kind {name!r}: choose one of {', '.join(_KINDS)}")
    return _KINDS[name]


def all_kinds() -> list[TaskKind]:
    """Every registered kind, the built-in ones first."""
    _load_builtin()
    return list(_KINDS.values())


def resolve(target: str):
    """The function a "module:function" string names, imported now."""
    module, _, function = target.partition(":")
    return getattr(importlib.import_module(module), function)


# The modules of the kinds that ship with the studio; each registers its kind(s) when imported.
BUILTIN = (
    "tl_core.classify",
    "tl_core.multitask.kind",
    "tl_core.detect.kind",
    "tl_core.anomaly.kind",
)


def _load_builtin() -> None:
    for module in BUILTIN:
        importlib.import_module(module)


def kind_of(config) -> TaskKind:
    """The kind that trains and answers for a RunConfig: its `task`, as that kind refines it."""
    kind = get(config.task)
    if kind.refine:
        kind = get(kind.call("refine", config))
    return kind


def run_kind(run_dir: str | Path) -> TaskKind:
    """The kind of a run, from its config.json (runs made before kinds existed are classifiers)."""
    from .ops.runs import read_config

    return kind_of(read_config(Path(run_dir)))
