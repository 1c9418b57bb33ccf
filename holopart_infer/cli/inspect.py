"""``holopart-infer inspect``: the per-part scores stored in a result glb."""
from __future__ import annotations

from pathlib import Path

from holopart_infer.errors import InputError

NAME = "inspect"
HELP = "print the per-part scores stored in a result glb; exit 3 when a part was replaced"
DESCRIPTION = ("Print how much to trust each part of a result (the scores stored in its glb "
               "node extras; holopart_infer.postprocess.quality). Exit codes: 0 every part is the model's "
               "(plausible, or kept with --keep-implausible), 3 some part was replaced by its "
               "closed visible patch (implausible, or left empty by the model; with --strict "
               "also: a kept part is implausible), 2 unreadable file or no stored scores.")
EXIT_OK, EXIT_REPLACED = 0, 3


def add_arguments(i, argv: list[str]) -> None:
    i.add_argument("result", help="a .glb written by run / demo / batch / serve")
    i.add_argument("--strict", action="store_true",
                   help="also exit 3 when a part is implausible but was kept (--keep-implausible)")


def run(args) -> int:
    from holopart_infer.postprocess.quality import EXTRAS_KEY, format_table, read_scores, status

    scored = read_scores(Path(args.result))
    if not scored or all(q is None for _, q in scored):
        raise InputError(f"{args.result}: no per-part scores stored (node extras '{EXTRAS_KEY}'); "
                         "was it written by holopart-infer run / demo / batch / serve, or result.save()?")
    print(format_table(scored))
    replaced = [n for n, q in scored if status(q) in ("replaced", "stand-in")]
    kept = [n for n, q in scored if status(q) == "implausible"]
    if replaced:
        print(f"{len(replaced)} of {len(scored)} parts were replaced by their closed visible patch: "
              + ", ".join(replaced))
    if kept:
        print(f"{len(kept)} of {len(scored)} parts are implausible and were kept (guard off): " + ", ".join(kept))
    return EXIT_REPLACED if replaced or (kept and args.strict) else EXIT_OK
