"""``python -m benchmarks``: see benchmarks/run.py."""

from __future__ import annotations

from .run import main

raise SystemExit(main())
