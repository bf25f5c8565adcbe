"""Placeholder: the Postfix socketmap server is being written."""

from __future__ import annotations

from typing import Any


def register_cli(commands: Any) -> None:
    return None
