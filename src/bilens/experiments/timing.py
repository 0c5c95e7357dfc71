"""How bilens times things: warm-up, synchronize, repeat, and report the median on a GPU and
the fastest run on a CPU (which other jobs share: load only ever adds time); calls that are
compared are interleaved round-robin so that load hits them alike. Agreement is normwise."""

from __future__ import annotations

import contextlib
import platform
import statistics
import time
from collections.abc import Callable

import torch
from torch import Tensor

PEAKS = {"H200": {"fp32": 67e12, "tf32": 494e12}, "H100": {"fp32": 67e12, "tf32": 494e12}}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, repeats: int = 1,
          warmup: bool = True) -> tuple[float, object, int]:
    """Seconds of `repeats` calls after one warm-up (median on a GPU; fastest on a CPU,
    which other jobs share: load only ever adds time), last result, peak bytes."""
    if warmup:
        fn()
    times, out = [], None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        out = fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) - base
        return statistics.median(times), out, peak
    return min(times), out, 0


def interleaved(fns: dict[str, Callable[[], object]], device: torch.device,
                repeats: int) -> dict[str, tuple[float, object, int]]:
    """`timed` for several functions, called round-robin (one warm-up round first)."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    outs: dict[str, object] = {}
    peaks = dict.fromkeys(fns, 0)
    for rep in range(repeats + 1):
        for name, fn in fns.items():
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
                base = torch.cuda.memory_allocated(device)
            _sync(device)
            start = time.perf_counter()
            with torch.no_grad() if name.startswith("forward") else contextlib.nullcontext():
                outs[name] = fn()
            _sync(device)
            if rep:
                times[name].append(time.perf_counter() - start)
            if device.type == "cuda":
                peaks[name] = max(peaks[name], torch.cuda.max_memory_allocated(device) - base)
    pick = statistics.median if device.type == "cuda" else min
    return {k: (pick(times[k]), outs[k], peaks[k]) for k in fns}


def agreement(got: Tensor, ref: Tensor) -> float:
    """Normwise relative error `max|got - ref| / max|ref|`."""
    got, ref = got.double().to(ref.device), ref.double()
    return ((got - ref).abs().max() / ref.abs().max()).item()


def machine(device: torch.device) -> dict:
    """Where it ran."""
    info = {"device": str(device), "torch": torch.__version__, "python": platform.python_version(),
            "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine()}
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        info["gpu"] = name
        info["peaks"] = next((v for k, v in PEAKS.items() if k in name), None)
    return info
