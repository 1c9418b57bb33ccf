"""One many-part object through the embedded model at its defaults: wall time and stage times.

    python benchmarks/bench_assembly_defaults.py PATH/VW-new-beetle.obj [TAG]

(the 68-part stand-in: ``/usr/share/sweethome3d/furniture/KatorLegaz.sh3f``, a zip; extract
``katorlegaz/VW-new-beetle/`` from it). Prints one JSON line: wall seconds from before the import,
the pipeline's stage times, and how many parts the guard flagged and replaced.
"""
import json
import sys
import time

t0 = time.perf_counter()
import holopart_infer as hp  # noqa: E402
from holopart_infer import assets  # noqa: E402


def main() -> int:
    path, tag = sys.argv[1], (sys.argv[2] if len(sys.argv) > 2 else "run")
    res = hp.load(assets.demo_model_path()).complete(path)
    t = res.timings
    print(json.dumps({"tag": tag, "wall_s": round(time.perf_counter() - t0, 2), "total": round(sum(t.values()), 2),
                      **{k: round(v, 2) for k, v in t.items() if k in ("extract", "denoise", "quality", "postprocess")},
                      "flagged": len(res.stats["guard"]["flagged"]), "replaced": len(res.stats["guard"]["replaced"]),
                      "parts": len(res.parts)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
