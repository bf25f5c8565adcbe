"""The RFC-derived vectors (tests/vectors/*.json, copied from the project's shared set), one test case each."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from mtasts import PolicyError, mx_matches, parse_policy, select_txt_record

VECTORS = Path(__file__).parent / "vectors"


def _load(name: str) -> list[dict[str, Any]]:
    data: list[dict[str, Any]] = json.loads((VECTORS / name).read_text(encoding="utf-8"))
    return data


def _ids(vectors: list[dict[str, Any]], key: str) -> list[str]:
    return [f"{i:02d}-{v.get('why') or v[key]!s}"[:80] for i, v in enumerate(vectors)]


POLICY = _load("policy.json")
TXT = _load("txt.json")
MX = _load("mx.json")


def test_vector_files_are_not_empty() -> None:
    assert len(POLICY) >= 40 and len(TXT) >= 20 and len(MX) >= 10


@pytest.mark.parametrize("vector", POLICY, ids=_ids(POLICY, "body"))
def test_policy_vector(vector: dict[str, Any]) -> None:
    body: str = vector["body"]
    for form in (body, body.encode("utf-8")):
        if vector["valid"]:
            policy = parse_policy(form)
            assert policy.mode == vector["mode"]
            assert list(policy.mx) == vector["mx"]
            assert policy.max_age == vector["max_age"]
            assert policy.version == "STSv1"
        else:
            with pytest.raises(PolicyError) as info:
                parse_policy(form)
            assert info.value.result_type == "sts-policy-invalid"


@pytest.mark.parametrize("vector", TXT, ids=_ids(TXT, "records"))
def test_txt_vector(vector: dict[str, Any]) -> None:
    records: list[str] = vector["records"]
    for form in (records, [r.encode("utf-8") for r in records]):
        record = select_txt_record(form)
        if vector["id"] is None:
            assert record is None
        else:
            assert record is not None
            assert record.id == vector["id"]


@pytest.mark.parametrize("vector", MX, ids=[f"{v['pattern']} ~ {v['host']}" for v in MX])
def test_mx_vector(vector: dict[str, Any]) -> None:
    assert mx_matches(vector["pattern"], vector["host"]) is vector["match"]
    policy = parse_policy(f"version: STSv1\nmode: enforce\nmx: {vector['pattern']}\nmax_age: 1\n")
    assert policy.matches(vector["host"]) is vector["match"]
