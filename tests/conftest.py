"""Shared test configuration: hypothesis profiles (bounded, no deadlines on slow CI machines)."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile("default", max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("long", max_examples=20_000, deadline=None, suppress_health_check=list(HealthCheck))
settings.load_profile(os.environ.get("MTASTS_HYPOTHESIS_PROFILE", "default"))
