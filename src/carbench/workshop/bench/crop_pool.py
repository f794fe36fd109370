"""Benchmark 1 of ``scripts/benchmark.py``: the crop stage (reduced-scale decode, process pool) against a plain
sequential full PIL decode of the same JPEG bytes, in the same run."""
from __future__ import annotations

import io
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

from carbench.config import CropConfig, DataConfig, SplitConfig, SyntheticConfig

CROP_SIZES = (224, 384)
CROP_TARGET_RATIO = 1.0
SYNTHETIC_FALLBACK = SyntheticConfig(num_classes=20, train_per_class=10, test_per_class=5, min_size=600,
                                     max_size=900, grayscale_fraction=0.05)


def _ingest(raw_source: Optional[Path], work: Path) -> tuple[Path, Path, str]:
    """Pack ``raw_source`` (torchvision layout; synthetic large photos when None) into data/raw + split."""
    from carbench.download.acquire import acquire
    from carbench.data.split import write_split

    if raw_source is not None:
        if not raw_source.is_dir():
            raise SystemExit(f"error: {raw_source} is not a folder of photos (--raw)")
        data = DataConfig(source="local", path=str(raw_source), cache_dir=str(work / "cache"),
                          skip_bad_images=False, timeout_s=1.0, synthetic=SYNTHETIC_FALLBACK)
        label = f"{raw_source.name} (real photos)"
    else:
        data = DataConfig(source="synthetic", path=None, cache_dir=str(work / "cache"), skip_bad_images=False,
                          timeout_s=1.0, synthetic=SYNTHETIC_FALLBACK)
        label = "synthetic 600-900 px photos (no --raw folder given)"
    raw, split = work / "raw", work / "split"
    acquire(data, 0, raw, None)
    write_split(SplitConfig(strategy="official", val_fraction=0.2, test_fraction=0.2, allow_missing_classes=True),
                0, raw, split, None, None)
    return raw, split, label


def _plain_decode_rate(raw: Path) -> tuple[float, int]:
    """Images/s of a sequential full decode (``Image.open(...).convert('RGB')``) of every image in data/raw."""
    from PIL import Image

    from carbench.data.raw import IMAGES_BIN, read_manifest

    manifest = read_manifest(raw)
    blob = (raw / IMAGES_BIN).read_bytes()
    start = time.perf_counter()
    for offset, nbytes in zip(manifest["offset"], manifest["nbytes"]):
        Image.open(io.BytesIO(blob[offset:offset + nbytes])).convert("RGB")
    return len(manifest) / (time.perf_counter() - start), len(manifest)


def measure_crop(raw_source: Optional[Path]) -> dict[str, Any]:
    """Crop-stage images/s (whole ``write_crops`` call, pool start-up included) vs plain full decode."""
    from carbench.data.crop import write_crops

    with tempfile.TemporaryDirectory(prefix="carbench-crop-") as tmp:
        work = Path(tmp)
        raw, split, label = _ingest(raw_source, work)
        baseline, count = _plain_decode_rate(raw)
        rows = []
        for size in CROP_SIZES:
            cfg = CropConfig(margin=0.0, size=size, keep_aspect=False, workers=0, preview=0)
            start = time.perf_counter()
            metrics = write_crops(cfg, False, raw, split, work / f"crops{size}", None, None)
            rate = count / (time.perf_counter() - start)
            rows.append({"size": size, "workers": metrics["workers"], "images_per_second": rate,
                         "ratio": rate / baseline})
    return {"data": label, "images": count, "plain_decode_images_per_second": baseline, "rows": rows}


def print_crop(report: dict[str, Any]) -> None:
    """Print the crop benchmark table."""
    print(f"\n== 1. crop stage vs plain full PIL decode: {report['images']} images, {report['data']} ==")
    print(f"plain sequential full decode: {report['plain_decode_images_per_second']:8.1f} images/s")
    for row in report["rows"]:
        verdict = "MET" if row["ratio"] >= CROP_TARGET_RATIO else "NOT MET"
        print(f"crop stage {row['size']:4d} px, {row['workers']} worker(s): {row['images_per_second']:8.1f} images/s"
              f"   ratio {row['ratio']:.2f}x (target >= {CROP_TARGET_RATIO}x: {verdict})")
