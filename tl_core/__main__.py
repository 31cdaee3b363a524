"""Command line: python -m tl_core {train, evaluate, predict, export, runs, shift, rank, grow, suspects, suggest}."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tl_core", description="Transfer Learning Studio engine")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a prepared run folder, or prepare and train one from --data")
    train.add_argument("run_dir", nargs="?", help="a prepared run folder (what the app starts)")
    train.add_argument("--data", help="a folder of class folders")
    train.add_argument("--val-data", help="a separate folder of class folders for validation")
    train.add_argument("--labels", help="a CSV labels table (file, task_a, task_b, ... or file, tags) naming the "
                       "images of --data (any layout): one model with a head per task")
    train.add_argument("--tasks", help="the table's columns to train, comma-separated (default: all)")
    train.add_argument("--task-weights", help="loss weight per task, e.g. category=1,tags=0.5 (default: 1 each)")
    train.add_argument("--target-data", help="unlabelled images of where the model will be used (any layout)")
    train.add_argument("--target-test", help="labelled target images (class folders), used only to measure")
    train.add_argument("--weights", default=None,
                       help="embedded | hub | none | FILE.safetensors (default: embedded where the app ships weights, else hub)")
    _add_settings(train)
    train.add_argument("--run-dir", dest="new_run_dir", help="where to put the run folder (default: the workspace's runs/)")
    train.add_argument("--prepare-only", action="store_true",
                       help="make the run folder and stop (to train it with torchrun -m tl_core.distributed)")

    evaluate = commands.add_parser("evaluate", help="metrics of a finished run on a labelled folder")
    evaluate.add_argument("run_dir")
    evaluate.add_argument("--data", required=True, help="a folder of class folders (or of images named by --labels)")
    evaluate.add_argument("--labels", help="a CSV labels table for a multi-task run's images")
    evaluate.add_argument("--save", action="store_true",
                          help="a classifier: keep the result (and its mistakes) with the run, for its Results page")

    predict = commands.add_parser("predict", help="top-k classes of images")
    predict.add_argument("run_dir")
    predict.add_argument("images", nargs="+")
    predict.add_argument("--top-k", type=int, default=3)
    predict.add_argument("--json", action="store_true", help="one JSON object per image")

    export = commands.add_parser("export", help="export a finished run, verified against PyTorch")
    export.add_argument("run_dir")
    export.add_argument("--format", default="onnx", choices=["onnx", "torchscript", "safetensors"])
    export.add_argument("--out", default=None, help="the bundle's folder (default: RUN_DIR/export/FORMAT)")

    shift = commands.add_parser("shift", help="how different target images look from training images (shift meter)")
    shift.add_argument("--data", required=True, help="a folder of class folders")
    shift.add_argument("--target-data", required=True, help="unlabelled images of where the model will be used")
    shift.add_argument("--backbone", default="tf_efficientnet_lite0")

    runs = commands.add_parser("runs", help="list the runs of the workspace")
    runs.add_argument("--json", action="store_true")

    rank = commands.add_parser("rank", help="which backbone suits these images: cross-validated probe accuracy "
                                          "of each one's frozen features (one JSON object)")
    rank.add_argument("--data", required=True, help="a folder of class folders")
    rank.add_argument("--backbones", default=None,
                      help="NAME:WEIGHTS,... (default: every catalogue backbone whose weights are here)")
    rank.add_argument("--image-size", type=int, default=None)

    grow = commands.add_parser("grow", help="add images or classes to a finished run's model: a new run that trains "
                                            "only the head, the old images' features reused")
    grow.add_argument("run_dir", help="the finished run to grow")
    grow.add_argument("--data", required=True, help="a folder of class folders: new classes, or more images of old ones")
    grow.add_argument("--name", default=None)

    suspects = commands.add_parser("suspects", help="likely label errors of a finished run's images, the likeliest "
                                                    "first (confident learning on out-of-fold predictions; JSON)")
    suspects.add_argument("run_dir")
    suspects.add_argument("--all", action="store_true", help="every judged image, ranked, not only the flagged ones")

    suggest = commands.add_parser("suggest", help="which unlabelled images to label next for a finished run: the "
                                                  "model's least sure, unlike each other (JSON, with its guesses)")
    suggest.add_argument("run_dir")
    suggest.add_argument("--pool", required=True, help="unlabelled images (a folder, any layout, or an ingested "
                                                       "unlabelled dataset's folder)")
    suggest.add_argument("-k", type=int, default=20, help="how many images to suggest")
    suggest.add_argument("--by", default="margin", choices=["margin", "entropy"], help="how unsure the model is")
    suggest.add_argument("--choice", default="diverse", choices=["diverse", "uncertain"],
                         help="diverse: uncertainty times distance to the labelled and picked images; "
                              "uncertain: the least sure only")

    args = parser.parse_args(argv)
    try:
        return {"train": _train, "evaluate": _evaluate, "predict": _predict,
                "export": _export, "runs": _runs, "rank": _rank, "grow": _grow,
                "shift": _shift, "suspects": _suspects, "suggest": _suggest}[args.command](args)
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def _suspects(args) -> int:
    from .quality.label_errors import judge, suspects

    print(json.dumps(judge(args.run_dir) if args.all else suspects(args.run_dir), indent=1))
    return 0


def _suggest(args) -> int:
    from .quality.active import suggest

    print(json.dumps(suggest(args.run_dir, args.pool, k=args.k, by=args.by, choice=args.choice), indent=1))
    return 0


def _grow(args) -> int:
    from . import worker
    from .fit.callbacks import ConsoleProgress
    from .use.grow import grow
    from .ops.runs import read_config_record

    run_dir = grow(args.run_dir, args.data, args.name)
    print(f"run folder: {run_dir}", flush=True)
    metrics = worker.run(run_dir, extra_callbacks=[ConsoleProgress()], on_wait=_say)
    old = read_config_record(run_dir)["old_classes"]
    print(f"done: validation accuracy {metrics['val_acc']:.1%}; the old classes' mean recall "
          f"{old['before']:.1%} before, {old['after']:.1%} after")
    print(run_dir)
    return 0


def _rank(args) -> int:
    from .data.datasets import ingest_folder
    from .plan.ranking import rank

    candidates = None
    if args.backbones:
        candidates = [tuple(item.split(":", 1)) if ":" in item else (item, "embedded")
                      for item in args.backbones.split(",")]
    dataset = ingest_folder(args.data)
    result = rank(dataset.root, candidates, image_size=args.image_size,
                  on_progress=lambda i, n, what: print(f"[{i + 1}/{n}] features of {what}", file=sys.stderr))
    print(json.dumps(result, indent=1))
    return 0


def _train(args) -> int:
    from .ops.jobs import BUSY_EXIT, RunBusy, claim_run
    from .ops.runs import read_status

    if args.run_dir and not args.data:
        run_dir = Path(args.run_dir)
        try:
            # Claimed before torch is imported, so a second worker for this run exits at once.
            with claim_run(run_dir, on_wait=_say):
                from . import worker

                worker.run(run_dir)  # holds the claim already: no second wait
        except RunBusy as busy:
            print(f"error: {busy}", file=sys.stderr)
            return BUSY_EXIT
        except Exception as error:
            print(f"error: {_failure(run_dir, error)}", file=sys.stderr)
            return 1
        return 0
    if not args.data:
        print("error: give a prepared RUN_DIR, or --data DIR to prepare one", file=sys.stderr)
        return 2
    run_dir = _prepare_run(args)
    print(f"run folder: {run_dir}", flush=True)
    if args.prepare_only:
        return 0
    from . import worker
    from .fit.callbacks import ConsoleProgress

    try:
        metrics = worker.run(run_dir, extra_callbacks=[ConsoleProgress()], on_wait=_say)
    except Exception as error:
        print(f"error: {_failure(run_dir, error)}", file=sys.stderr)
        print(run_dir)
        return 1
    state = read_status(run_dir).get("state")
    if metrics:
        if "summary" in metrics:  # a task kind's own words for its result (tl_core.kinds)
            print(f"{state}: {metrics['summary']}")
        elif metrics.get("task", "classify") != "classify":  # another kind: its headline metrics (tl_core.kinds)
            from . import kinds

            headline = ", ".join(f"{name} {metrics[name]:.3f}" for name in kinds.get(metrics["task"]).metrics
                                 if isinstance(metrics.get(name), (int, float)))
            print(f"{state}: validation {headline} in {metrics['wall_s']:.1f} s")
        elif metrics.get("validation_method", {}).get("kind") == "none":
            print(f"{state} in {metrics['wall_s']:.1f} s, not validated: {metrics['validation']}")
        else:
            from .use import run_facts

            known = run_facts.facts(run_dir)  # the same figures as the app and the model card
            print(f"{state}: {known['name']}: validation accuracy {known['accuracy_words']} "
                  f"(95 % interval {known['interval_words']}); {known['images_words']}")
            print(f"learnt: {known['learnt_words']}"
                  + (f", {known['learnt_params']:,} parameters" if known["learnt_params"] is not None else ""))
            print(f"time: {known['wall_words']}" + (f" ({known['wall_parts_words']})" if known["wall_parts_words"]
                                                    else ""))
    else:
        print(state)
    print(run_dir)
    return 0 if state == "done" else 1


def _add_settings(parser: argparse.ArgumentParser) -> None:
    """One flag per RunConfig setting, with its default, type, help and choices from config.py."""
    from .config import settings

    for name, setting in settings().items():
        meta = setting.metadata
        flag = "--" + name.replace("_", "-")
        if meta["kind"] is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=setting.default, help=meta["help"])
        else:
            parser.add_argument(flag, type=meta["kind"], default=setting.default, choices=meta["choices"] or None,
                                help=meta["help"])


def _say(message: str) -> None:
    print(message, flush=True)


def _failure(run_dir: Path, error: BaseException) -> str:
    """Why the run failed: status.json's reason, else the error itself (a full disk may have kept it unsaved)."""
    from .ops.runs import read_status

    status = read_status(run_dir)
    if status.get("state") == "failed" and status.get("error"):
        return str(status["error"])
    notes = " ".join(getattr(error, "__notes__", []))
    text = str(error) or type(error).__name__
    return f"{text} {notes}".strip()


def _prepare_run(args) -> Path:
    """The run folder of the command line's settings: the data ingested by its task kind (tl_core.kinds)."""
    from . import kinds
    from .config import RunConfig, settings
    from .data.datasets import ingest_or_reuse_folder
    from .data.datasets.unlabelled import ingest_unlabelled_or_reuse_folder
    from .models.backbones import default_weights
    from .ops.runs import create_run

    # A labels table is passed on only when given: kinds that read none take no such keyword.
    table = {"labels": args.labels, "tasks": _names(args.tasks), "report": _say} if args.labels else {}
    root = kinds.get(args.task).call("ingest", args.data, **table)
    val_set = ingest_or_reuse_folder(args.val_data) if args.val_data else None
    target_set = ingest_unlabelled_or_reuse_folder(args.target_data) if args.target_data else None
    target_test = ingest_or_reuse_folder(args.target_test) if args.target_test else None
    config = RunConfig(dataset_dir=str(root), val_dataset_dir=str(val_set.root) if val_set else None,
                       weights=args.weights or default_weights(args.backbone),
                       target_dir=str(target_set.root) if target_set else None,
                       target_test_dir=str(target_test.root) if target_test else None,
                       task_weights=_task_weights(args.task_weights) if args.task_weights else {},
                       **{name: getattr(args, name) for name in settings()})
    config = config.replace(task=kinds.kind_of(config).name)  # a labels table makes a multi-task run
    return create_run(config, run_dir=Path(args.new_run_dir) if args.new_run_dir else None)


def _names(text: str | None) -> list[str] | None:
    return [name.strip() for name in text.split(",") if name.strip()] if text else None


def _task_weights(text: str) -> dict[str, float]:
    weights = {}
    for part in _names(text) or []:
        name, _, value = part.partition("=")
        try:
            weights[name.strip()] = float(value)
        except ValueError:
            raise SystemExit(f"error: --task-weights: {part!r} is not TASK=NUMBER") from None
    return weights


def _evaluate(args) -> int:
    from . import kinds

    if args.save:  # the app's held-out test, without its size bound: the Results page shows it afterwards
        from .use.heldout import test_heldout

        data = Path(args.data)
        result = test_heldout(args.run_dir, data if data.is_dir() else data.read_bytes(), label=data.name,
                              max_images=sys.maxsize)
        print(json.dumps(result, indent=2))
        return 0
    labels = {"labels": args.labels} if args.labels else {}  # passed on only when given (see _prepare_run)
    print(json.dumps(kinds.run_kind(args.run_dir).call("evaluate", Path(args.run_dir), Path(args.data), **labels),
                     indent=2))
    return 0


def _predict(args) -> int:
    from . import kinds

    predictor = kinds.run_kind(args.run_dir).call("predictor", Path(args.run_dir))
    for image, answer in zip(args.images, _answers(predictor, args.images, args.top_k)):
        print(json.dumps({"image": image, **answer}) if args.json else f"{image}: {_in_words(answer)}")
    return 0


def _answers(predictor, images: list[str], top_k: int) -> list[dict]:
    """One answer per image ({"error": why} for one that cannot be read: it never stops the others). A
    predictor that reads files in batches (a classifier's top_k classes) does so; others see one image at a time."""
    if hasattr(predictor, "predict_files"):
        return predictor.predict_files(images, top_k=top_k)
    from .data.datasets import open_image

    answers = []
    for image in images:
        try:
            answers.append(predictor.predict(open_image(image)))
        except Exception as error:  # one bad image never stops the others
            answers.append({"error": str(error)})
    return answers


def _in_words(answer: dict) -> str:
    """An answer on one line: each task's labels (a multi-task model), the top classes, or the answer as it is."""
    if "error" in answer:
        return str(answer["error"])
    if "tasks" in answer:
        return "; ".join(
            f"{name}: " + (", ".join(f"{t['label']} {t['prob']:.0%}" for t in task["tags"]) or "no tag"
                           if task["kind"] == "multi-label" else f"{task['top'][0]['label']} {task['top'][0]['prob']:.1%}")
            for name, task in answer["tasks"].items())
    if "top" in answer:
        return ", ".join(f"{t['label']} {t['prob']:.1%}" for t in answer["top"])
    return str(answer)


def _export(args) -> int:
    from . import kinds

    report = kinds.run_kind(args.run_dir).call("export", Path(args.run_dir), args.format,
                                               Path(args.out) if args.out else None)
    print(json.dumps(report, indent=2))
    return 0


def _shift(args) -> int:
    from .adapt import measure_shift
    from .models.backbones import default_weights
    from .data.datasets import ingest_or_reuse_folder
    from .data.datasets.unlabelled import ingest_unlabelled_or_reuse_folder

    source, target = ingest_or_reuse_folder(args.data), ingest_unlabelled_or_reuse_folder(args.target_data)
    print(json.dumps(measure_shift(source.root, target.root, args.backbone, default_weights(args.backbone)), indent=2))
    return 0


def _runs(args) -> int:
    from .ops.runs import list_runs
    from .ops.words import summarize

    rows = [summarize(p) for p in list_runs()]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        acc = f"{row['val_acc']:.1%}" if row["val_acc"] is not None else "-"
        print(f"{row['run_id']:45s} {row['state']:9s} {row['backbone'] or '':22s} freeze={row['freeze']:8s} val_acc={acc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
