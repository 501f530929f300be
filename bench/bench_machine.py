"""The machine and library versions a benchmark ran on: the header of every table in BENCHMARKS.md."""
from __future__ import annotations

import datetime
import os
import platform


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def machine_info(device) -> dict:
    import PIL
    import torch
    import torchvision
    try:
        import nvidia.dali as dali
        dali_version = dali.__version__
    except ImportError:
        dali_version = "not installed"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": cpu_model(), "cores": cores, "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "torch": torch.__version__, "torchvision": torchvision.__version__, "dali": dali_version,
        "pillow": PIL.__version__, "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "load_average_at_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }


def header_line(info: dict) -> str:
    gpu = f", GPU {info['gpu']}" if info["gpu"] else ", no GPU"
    load = info.get("load_average_at_start")
    load = f"; load average at start {load[0]:.2f}" if load else ""
    return (f"{info['cpu']}, {info['cores']} cores ({info['torch_threads']} torch threads){gpu} | "
            f"torch {info['torch']}, torchvision {info['torchvision']}, DALI {info['dali']}, "
            f"Pillow {info['pillow']} | {info['date']}{load}")
