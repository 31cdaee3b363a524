"""The CUDA path: AMP, channels-last only where it pays, memory, out-of-memory back-off. Skipped without CUDA."""
import pytest
import torch

from tl_core import worker
from tl_core.config import RunConfig
from tl_core.data.datasets import ingest_folder
from tl_core.ops.runs import create_run, read_config_record, read_events

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_cuda_fine_tune_runs_in_mixed_precision(small_sample):
    dataset = ingest_folder(small_sample)
    run_dir = create_run(RunConfig(dataset_dir=str(dataset.root), freeze="top-2", augment="light", epochs=3,
                                   device="cuda", early_stopping=0))
    metrics = worker.run(run_dir)
    record = read_config_record(run_dir)
    assert "CUDA" in record["device"]
    expected = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    assert record["precision"] == expected
    assert record["channels_last"] is False  # 32 images × 3 epochs: too short to repay its start-up
    assert 0 < metrics["gpu_peak_memory_mb"] < 4096
    assert metrics["val_acc"] >= 0.75


def test_cuda_and_cpu_agree_on_head_only_training(small_sample):
    dataset = ingest_folder(small_sample)
    accuracy = {}
    for device in ("cpu", "cuda"):
        run_dir = create_run(RunConfig(dataset_dir=str(dataset.root), freeze="head", epochs=4, device=device))
        accuracy[device] = worker.run(run_dir)["val_acc"]
    # bf16 features differ slightly from fp32 ones; out of 32 cross-validated images, at most 2 may flip.
    assert abs(accuracy["cpu"] - accuracy["cuda"]) <= 2 / 32 + 1e-6


def test_out_of_memory_backs_off_and_says_so(small_sample, monkeypatch):
    dataset = ingest_folder(small_sample)
    run_dir = create_run(RunConfig(dataset_dir=str(dataset.root), freeze="all", probe_first=False, epochs=1,
                                   batch_size=16, image_size=64, device="cuda", early_stopping=0))
    from tl_core.fit.batches import PixelSource

    features = PixelSource.features

    def features_that_fit_only_4(self, inputs):
        if len(inputs) > 4 and torch.is_grad_enabled():
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return features(self, inputs)

    monkeypatch.setattr(PixelSource, "features", features_that_fit_only_4)
    worker.run(run_dir)
    notices = [e["message"] for e in read_events(run_dir) if e["event"] == "notice"]
    assert any("batch size 16 does not fit" in m for m in notices)
    assert any("batch size 8 does not fit" in m for m in notices)
    batches = [e for e in read_events(run_dir) if e["event"] == "batch_end" and e.get("phase") == "finetune"]
    assert batches and all(e["batches"] == 6 for e in batches)  # 24 training images in batches of 4


def test_long_cuda_runs_use_channels_last(small_sample, monkeypatch):
    from tl_core.fit import strategy

    monkeypatch.setattr(strategy, "CUDA_CHANNELS_LAST_MIN_PASSES", 32)
    dataset = ingest_folder(small_sample)
    run_dir = create_run(RunConfig(dataset_dir=str(dataset.root), freeze="top-1", epochs=1, image_size=64,
                                   device="cuda", early_stopping=0))
    worker.run(run_dir)
    assert read_config_record(run_dir)["channels_last"] is True
