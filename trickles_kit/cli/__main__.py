"""`python -m trickles_kit.cli`: the same as the `trickles` script."""

from trickles_kit.cli import main

raise SystemExit(main())
