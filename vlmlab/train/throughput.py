"""Throughput of a run: tokens/s, achieved TFLOP/s per device and MFU against the device's peak.

Peak dense tensor-core TFLOP/s per GPU by the dtype the matrix products run in (the vendors' data sheets,
without sparsity): bf16 for `bf16-mixed`; for `32-true`, TF32 where torch lets matmuls use it, else FP32. A
device not listed (and the CPU) gets no MFU, only TFLOP/s: a guessed peak would give a wrong utilisation.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

import torch

# name fragment (as torch.cuda.get_device_name reports it) -> {dtype: peak TFLOP/s}; more specific first
PEAK_TFLOPS: dict[str, dict[str, float]] = {
    "GB200": {"bf16": 2500.0, "tf32": 1250.0, "fp32": 80.0},
    "B200": {"bf16": 2250.0, "tf32": 1100.0, "fp32": 80.0},
    "H200": {"bf16": 989.4, "tf32": 494.7, "fp32": 66.9},
    "H100 PCIe": {"bf16": 756.0, "tf32": 378.0, "fp32": 51.2},
    "H100 NVL": {"bf16": 835.0, "tf32": 417.5, "fp32": 60.0},
    "H100": {"bf16": 989.4, "tf32": 494.7, "fp32": 66.9},  # SXM
    "H800": {"bf16": 989.4, "tf32": 494.7, "fp32": 66.9},
    "A100": {"bf16": 312.0, "tf32": 156.0, "fp32": 19.5},
    "A800": {"bf16": 312.0, "tf32": 156.0, "fp32": 19.5},
    "L40S": {"bf16": 362.1, "tf32": 183.0, "fp32": 91.6},
    "L40": {"bf16": 181.0, "tf32": 90.5, "fp32": 90.5},
    "L4": {"bf16": 121.0, "tf32": 60.0, "fp32": 30.3},
    "A10": {"bf16": 125.0, "tf32": 62.5, "fp32": 31.2},
    "RTX 4090": {"bf16": 165.2, "tf32": 82.6, "fp32": 82.6},
}


def peak_tflops(device_name: str, precision: str, tf32: bool) -> float | None:
    """The device's peak for this precision, or None where it is not known (CPU, unlisted GPUs)."""
    dtype = "bf16" if precision.startswith("bf16") else ("tf32" if tf32 else "fp32")
    for fragment, peaks in PEAK_TFLOPS.items():
        if fragment in device_name:
            return peaks[dtype]
    return None


def this_device(precision: str) -> tuple[str, float | None]:
    """(device name, peak TFLOP/s or None) of the device this process trains on."""
    if not torch.cuda.is_available():
        return "cpu", None
    name = torch.cuda.get_device_name()
    return name, peak_tflops(name, precision, torch.backends.cuda.matmul.allow_tf32)


@dataclass
class Throughput:
    """Windows of training steps (between two logs): their rates, summarised for result.json."""

    device: str
    peak: float | None
    windows: list[dict[str, float]] = field(default_factory=list)

    def add(self, seconds: float, tokens: float, flops: float) -> dict[str, float]:
        """Record one window (this process's tokens and FLOPs; tokens/s is scaled to all processes by the
        caller); -> the metrics to log."""
        window = {"tokens_per_s_per_device": tokens / seconds, "tflops": flops / seconds / 1e12}
        if self.peak:
            window["mfu"] = window["tflops"] / self.peak
        self.windows.append(window)
        return window

    def summary(self) -> dict[str, float | str | None]:
        """Medians over the windows, the first left out when there are others (compilation, warm-up)."""
        windows = self.windows[1:] if len(self.windows) > 1 else self.windows
        summary: dict[str, float | str | None] = {"device": self.device, "peak_tflops": self.peak}
        for key in ("tokens_per_s_per_device", "tflops", "mfu"):
            values = [w[key] for w in windows if key in w]
            summary[key] = round(statistics.median(values), 6) if values else None
        return summary


__all__ = ["PEAK_TFLOPS", "Throughput", "peak_tflops", "this_device"]
