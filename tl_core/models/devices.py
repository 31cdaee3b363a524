"""Which device trains, in which precision, and how to name it for a person."""
from __future__ import annotations

import os

import torch


def pick_device(preference: str = "auto") -> torch.device:
    """CUDA, then Apple's MPS, then the CPU; an explicit choice that is not there is an error."""
    if preference == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was asked for, but no CUDA GPU is visible to PyTorch")
    if preference == "mps" and not torch.backends.mps.is_available():
        raise RuntimeError("device 'mps' was asked for, but Apple's MPS is not available")
    if preference != "auto":
        return torch.device(preference)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """bf16 on GPUs that have it, else fp16 (with a grad scaler); None (fp32) on CPU and MPS.

    CPU autocast to bf16 is slower than fp32 on CPUs without native bf16, and no faster on most others.
    """
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def describe(device: torch.device | str | None = None) -> str:
    """"NVIDIA H100 (CUDA)" or "CPU (2 threads)"."""
    device = torch.device(device) if device is not None else pick_device()
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA)"
    if device.type == "mps":
        return "Apple GPU (MPS)"
    return f"CPU ({torch.get_num_threads()} threads of {os.cpu_count()} cores)"
