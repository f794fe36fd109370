"""GPU busy fractions from ``nvidia-smi`` samples taken while a run goes (none on a machine without it)."""
from __future__ import annotations

import shutil
import subprocess
from datetime import datetime
from pathlib import Path
from typing import Optional

NVIDIA_SMI = ["nvidia-smi", "--query-gpu=timestamp,utilization.gpu", "--format=csv,noheader,nounits", "-lms", "200"]


class GpuSampler:
    """``nvidia-smi`` utilisation samples (epoch seconds, percent) every 200 ms while running; none without it."""

    def __init__(self, log: Path) -> None:
        self.log, self.proc = log, None
        if shutil.which(NVIDIA_SMI[0]):
            self.handle = open(log, "w")
            self.proc = subprocess.Popen(NVIDIA_SMI, stdout=self.handle, stderr=subprocess.DEVNULL)

    def stop(self) -> list[tuple[float, float]]:
        if self.proc is None:
            return []
        self.proc.terminate()
        self.proc.wait()
        self.handle.close()
        return parse_nvidia_smi(self.log.read_text())


def parse_nvidia_smi(text: str) -> list[tuple[float, float]]:
    """``2026/11/23 08:40:01.123, 87`` lines -> [(epoch seconds, 87.0)] (malformed lines skipped)."""
    samples = []
    for line in text.splitlines():
        stamp, _, util = line.partition(",")
        try:
            when = datetime.strptime(stamp.strip(), "%Y/%m/%d %H:%M:%S.%f").timestamp()
            samples.append((when, float(util)))
        except ValueError:
            continue
    return samples


def busy_fraction(samples: list[tuple[float, float]], start: float, end: float) -> Optional[float]:
    """Mean GPU utilisation (0..1) of the samples in [start, end]; None without samples there."""
    inside = [u for t, u in samples if start <= t <= end]
    return sum(inside) / len(inside) / 100.0 if inside else None

