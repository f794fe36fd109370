"""The device plan's figures: a run at a fraction of Stanford Cars' size extrapolated to the full size, and the
performance targets checked on them (figures in, figures out; ``scripts/device_plan.py`` measures them)."""
from __future__ import annotations

from typing import Optional

from .scale import TARGETS
from .workspace import SCALE_DATA

FULL = SCALE_DATA
FULL_PHOTOS = FULL["num_classes"] * (FULL["train_per_class"] + FULL["test_per_class"])   # 16,268
#: --tiny: a CPU smoke of both phases (tests/scripts/test_device_plan.py): 4 classes of small photos.
TINY_DATA = {"num_classes": 4, "train_per_class": 8, "test_per_class": 4, "min_size": 64, "max_size": 96,
             "grayscale_fraction": 0.0}
METHOD = ("full-scale stage seconds = fixed + images_full / rate, where fixed = the stage's time to its first batch "
          "(process start-up, imports, data loading, model build; for a stage without model batches: the start-up "
          "of a stage process, timed once), rate = the images the stage processed after its first batch (train, "
          "refit, validation, feature-cache or test images) per second of its wall time after it, and images_full "
          "= images x full_photos / photos; summed over the stages, plus dvc's own time between stages (dvc repro "
          "wall - stage sum) times the same ratio. Upper-bound leaning: warm-up, per-epoch saves and evaluate's "
          "latency probe are scaled with the images; lower-bound leaning: data reading before the first batch is "
          "taken as fixed.")


def stage_images(record: dict) -> int:
    """Images a stage processed after its first batch (0 for a stage without model batches)."""
    kind = record["stage"].partition("@")[0]
    if kind == "train":
        return int(record.get("epochs", 0) * record.get("train_per_epoch", 0)
                   + record.get("refit_epochs", 0) * record.get("refit_per_epoch", 0)
                   + record.get("val_images", 0) + record.get("feature_images", 0))
    return int(record.get("images", 0) or 0)


def extrapolate(records: list[dict], ratio: float, startup_s: float, dvc_wall_s: Optional[float] = None,
                floor_s: Optional[float] = None, expected: Optional[list[str]] = None) -> dict:
    """Full-scale seconds of each stage ``record`` (stage log lines at the fraction) and of the whole run, by
    :data:`METHOD`; ``ratio`` = full photos / photos. ``dvc_wall_s``: the ``dvc repro`` wall of a complete run
    (None: partial, dvc's own time left out); ``floor_s``: the bare-compute floor measured at the fraction;
    ``expected``: every stage of the run (to list those not measured)."""
    rows = []
    for r in records:
        images, first = stage_images(r), r.get("first_batch_s")
        if first is not None and images and r["seconds"] > first:
            fixed = first
            rate = images / (r["seconds"] - first)
            full = fixed + images * ratio / rate
        else:
            fixed = min(startup_s, r["seconds"])
            rate = None
            full = fixed + (r["seconds"] - fixed) * ratio
        rows.append({"stage": r["stage"], "seconds": r["seconds"], "fixed_s": fixed, "images": images,
                     "images_full": images * ratio, "rate": rate, "full_s": full})
    stage_sum = sum(r["seconds"] for r in records)
    stage_sum_full = sum(r["full_s"] for r in rows)
    overhead = dvc_wall_s - stage_sum if dvc_wall_s is not None else None
    overhead_full = overhead * ratio if overhead is not None else None
    total = stage_sum_full + (overhead_full or 0.0)
    floor_full = floor_s * ratio if floor_s else None
    measured = {r["stage"] for r in records}
    missing = [s for s in expected if s not in measured] if expected is not None else []
    return {"method": METHOD, "ratio": ratio, "startup_s": startup_s, "stages": rows,
            "stage_sum_s": stage_sum, "stage_sum_full_s": stage_sum_full,
            "dvc_overhead_s": overhead, "dvc_overhead_full_s": overhead_full,
            "total_full_s": total,
            "total_full_s_dvc_overhead_fixed": stage_sum_full + (overhead or 0.0),
            "floor_full_s": floor_full, "sum_over_floor_full": stage_sum_full / floor_full if floor_full else None,
            "missing_stages": missing, "complete": dvc_wall_s is not None and not missing}


def flags(rows: list[dict]) -> list[dict]:
    """The stages that miss a per-stage target (bugs to remove): > 8 s before the first batch, or > 1.25x their
    bare compute."""
    out = []
    for r in rows:
        if r.get("first_batch_s") is not None and r["first_batch_s"] > TARGETS["first_batch_s"]:
            out.append({"stage": r["stage"], "problem": f"{r['first_batch_s']:.1f} s before its first batch "
                                                        f"(> {TARGETS['first_batch_s']:.0f} s)"})
        if r.get("floor_s") and r["seconds"] / r["floor_s"] > TARGETS["sum_over_floor"]:
            out.append({"stage": r["stage"], "problem": f"wall {r['seconds']:.1f} s = {r['seconds'] / r['floor_s']:.2f}"
                                                        f" x its bare compute (> {TARGETS['sum_over_floor']}x)"})
    return out


def full_checks(ext: dict, rows: list[dict]) -> dict:
    """The performance targets on the extrapolated figures: (value, met)."""
    first = [r["first_batch_s"] for r in rows if r.get("first_batch_s") is not None]
    evaluate = [r["full_s"] for r in ext["stages"] if r["stage"].startswith("evaluate@")]
    ratio = ext["sum_over_floor_full"]
    total, limit = ext["total_full_s"], TARGETS
    return {"full-scale dvc repro wall <= 600 s": (total, total <= limit["total_s"]),
            "full-scale stage sum / floor <= 1.25": (ratio, ratio is not None and ratio <= limit["sum_over_floor"]),
            "max time to first batch <= 8 s": (max(first, default=None),
                                               bool(first) and max(first) <= TARGETS["first_batch_s"]),
            "full-scale max evaluate@ <= 8 s": (max(evaluate, default=None),
                                                bool(evaluate) and max(evaluate) <= TARGETS["evaluate_s"])}


def expected_stages(params: dict) -> list[str]:
    """Every stage of ``dvc repro`` for these params (dvc.yaml's DAG), as the stage log names them: a pretrained
    baseline's ``embed_pretrained@``/``knn_pretrained@`` run embed.py/knn.py, so they log as ``embed@``/``knn@``."""
    dag = params["dag"]
    retrieval = [*dag["retrieval"], *(dag.get("pretrained") or {})]
    return (["download", "split", "crop", "resolve"] + [f"train@{n}" for n in dag["train"]]
            + [f"embed@{n}" for n in retrieval] + [f"knn@{n}" for n in retrieval]
            + [f"evaluate@{n}" for n in params["experiments"]] + ["aggregate"]
            + [f"export@{n}" for n in params["experiments"]] + ["cards"])


def plan_size(fraction: float, tiny: bool) -> dict:
    """The generated data (:data:`SCALE_DATA`'s keys) for ``fraction`` of Stanford Cars' photos per class, and the
    ratio of the full size to it."""
    if tiny:
        data = dict(TINY_DATA)
    else:
        data = {**FULL, "train_per_class": max(2, round(FULL["train_per_class"] * fraction)),
                "test_per_class": max(1, round(FULL["test_per_class"] * fraction))}
    return size_of(data["num_classes"] * (data["train_per_class"] + data["test_per_class"]), data, tiny)


def size_of(photos: int, data: Optional[dict] = None, tiny: bool = False) -> dict:
    """The size record of a run on ``photos`` photos (``data``: the generated data's settings; None for a user's
    folder) and the ratio of Stanford Cars' full size to it."""
    return {"data": data, "photos": photos, "full_photos": FULL_PHOTOS, "ratio": FULL_PHOTOS / photos,
            "fraction": photos / FULL_PHOTOS, "tiny": tiny}


def print_extrapolation(result: dict) -> None:
    ext, size = result["extrapolation"], result["size"]
    print(f"\n== extrapolation to Stanford Cars' {size['full_photos']} photos (x{ext['ratio']:.2f} the "
          f"{size['photos']} measured) ==")
    print(f"method: {ext['method']}")
    print(f"{'stage':38s} {'wall s':>7s} {'fixed s':>7s} {'images':>8s} {'img/s':>8s} {'full s':>8s}")
    for r in ext["stages"]:
        rate = f"{r['rate']:8.0f}" if r["rate"] else "       -"
        print(f"{r['stage']:38s} {r['seconds']:7.1f} {r['fixed_s']:7.1f} {r['images']:8d} {rate} {r['full_s']:8.1f}")
    overhead = ext["dvc_overhead_full_s"]
    print(f"stage sum at full scale {ext['stage_sum_full_s']:.1f} s; dvc's own time "
          f"{'-' if overhead is None else f'{overhead:.1f} s'}; total {ext['total_full_s']:.1f} s "
          f"({ext['total_full_s_dvc_overhead_fixed']:.1f} s with dvc's own time fixed)"
          + ("" if ext["complete"] else f"  PARTIAL: not measured: {', '.join(ext['missing_stages']) or 'dvc time'}"))
    for check, (value, met) in result["checks_full_scale"].items():
        shown = "-" if value is None else f"{value:8.2f}"
        print(f"  {check:40s} {shown:>8s}   {'MET' if met else 'NOT MET'}")
    for flag in result["flags"]:
        print(f"  TO FIX {flag['stage']}: {flag['problem']}")
