"""``python -m holopart_infer.cli``: the ``holopart-infer`` command."""
import sys

from holopart_infer.cli import main

sys.exit(main())
