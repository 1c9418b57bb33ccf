"""``holopart-infer batch``: many objects into a folder, resumably, here or on Ray
(:func:`holopart_infer.scale.batch.run_batch`; this module turns its callbacks into the bar and
the summary)."""
from __future__ import annotations

import sys

from holopart_infer.cli.options import add_option_args, add_run_args, add_up_arg, options_from, settings_line

NAME = "batch"
HELP = "complete many objects into a folder, resumably (parts of several objects share batches)"
DESCRIPTION = ("Complete many objects: files, folders of objects, or list files (.txt one path per line; "
               ".jsonl with per-object labels/options/id). Writes OUT_DIR/<id>.glb atomically and "
               "OUT_DIR/ledger.jsonl; a re-run skips objects already done (same input content, labels, options "
               "and model). A file already in OUT_DIR is never replaced without --overwrite. Exit codes: 0 "
               "every object completed (or already done), 3 some objects failed (see the ledger), 2 bad "
               "arguments or inputs (or OUT_DIR unusable or in use by another batch), 4 the disk filled up "
               "(what finished is kept; re-run to resume), 1 internal error, 130/143 interrupted (what "
               "finished is kept).")

#: exit codes of ``holopart-infer batch``
EXIT_ALL_OK, EXIT_INTERNAL, EXIT_BAD_INPUT, EXIT_SOME_FAILED, EXIT_NO_SPACE = 0, 1, 2, 3, 4


def add_arguments(b, argv: list[str]) -> None:
    from holopart_infer.pipeline import CompletionOptions

    b.add_argument("inputs", nargs="+", metavar="INPUT", help="object file, folder of objects, or .txt/.jsonl list")
    b.add_argument("-o", "--output-dir", dest="output_dir", required=True, help="output folder (created)")
    src = b.add_mutually_exclusive_group(required=True)
    src.add_argument("--weights", help="checkpoint dir (published layout; needs the [torch] extra)")
    src.add_argument("--model", help="exported model dir (manifest.json + ONNX)")
    b.add_argument("--ray", metavar="auto|local|ADDRESS",
                   help="run on Ray: 'auto' (the running cluster, else a local one), 'local' (always a new local "
                        "one) or a cluster address; needs pip install 'holopart-infer[ray]'. A local cluster this "
                        "run started is restarted if its node dies; on another cluster the objects left fail (exit 3)")
    b.add_argument("--ray-workers", dest="ray_workers", type=int,
                   help="number of Ray actors (default: one per GPU, else one per CPU)")
    add_run_args(b)
    add_up_arg(b)
    add_option_args(b, CompletionOptions().as_dict(),
                    "the library's; the model's manifest and a .jsonl line's options win over them")


class _ObjectsBar:
    """One tqdm bar over the objects (with an ETA and the ok/failed counts), on stderr."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.bar = None
        self.ok = self.failed = 0

    def progress(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc="objects", unit="obj", dynamic_ncols=True)
        self.bar.update(done - self.bar.n)

    def on_result(self, item, entry: dict) -> None:
        if entry.get("status") == "ok":
            self.ok += 1
        else:
            self.failed += 1
        if self.bar is not None:
            self.bar.set_postfix(ok=self.ok, failed=self.failed, refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run(args) -> int:
    """``holopart-infer batch``: see :data:`DESCRIPTION` for the exit codes."""
    from holopart_infer.scale.batch import LocalExecutor, OutOfSpace, collect_items, prepare_out_dir, run_batch
    from holopart_infer.pipeline import CompletionOptions, load, model_defaults

    items = collect_items(args.inputs)
    prepare_out_dir(args.output_dir)  # before any work: a read-only or full folder is exit 2
    for it in items:  # a .jsonl line's "up" wins over --up
        it.up = it.up or args.up
    path = args.weights or args.model
    if args.ray:
        from holopart_infer.scale.ray_runner import RayExecutor

        model = path  # loaded on each actor; the driver reads the defaults only
        executor = RayExecutor(args.ray, workers=args.ray_workers, backend=args.backend, device=args.device,
                               parts_per_batch=args.parts_per_batch)
    else:
        model = load(path, backend=args.backend, device=args.device, verify_integrity=not args.no_verify)
        executor = LocalExecutor(parts_per_batch=args.parts_per_batch)
    defaults = model_defaults(model)
    base = options_from(args, defaults)
    library = CompletionOptions()  # the settings line says where depth/steps come from, as run's does
    print(settings_line(args, base, {k: 1 for k in ("depth", "steps")
                                     if getattr(defaults, k) != getattr(library, k)}, "the model"))
    bar = _ObjectsBar(not args.quiet)
    try:
        summary = run_batch(model, items, args.output_dir, options=base, executor=executor, redo=args.overwrite,
                            on_result=bar.on_result, progress=bar.progress)
    except OutOfSpace as e:
        bar.close()
        if e.summary is not None:
            print(e.summary.describe())
        print(f"error: {e}", file=sys.stderr)
        return EXIT_NO_SPACE
    finally:
        bar.close()
    print(summary.describe())
    if summary.failed:
        shown = ", ".join(summary.failed_ids[:10]) + (" ..." if len(summary.failed_ids) > 10 else "")
        print(f"failed: {shown} (errors in {summary.ledger})", file=sys.stderr)
    print(f"outputs in {summary.out_dir}, ledger {summary.ledger}")
    return EXIT_SOME_FAILED if summary.failed else EXIT_ALL_OK
