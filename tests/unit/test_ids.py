from __future__ import annotations

import pytest

from tenantry import TenantryError
from tenantry.errors import InvalidIdentifierError, InvalidTenantId
from tenantry.tenancy.ids import is_valid_tenant_id, validate_identifier, validate_tenant_id

HOSTILE = [
    "",
    "a'b",
    'a"b',
    "a;drop table tenants",
    "robert'); drop table students;--",
    "pg_catalog",
    "pg_x",
    "Acme",
    "1abc",
    "_abc",
    "a-b",
    "a b",
    "a\nb",
    "abc\n",
    "ümlaut",
    "a\u200bb",
    "\uff41\uff42\uff43",  # full-width letters
    "a" * 41,
    "a" * 64,
    "a\x00b",
    "a.b",
    "a/../b",
]


@pytest.mark.parametrize("bad", HOSTILE)
def test_hostile_ids_are_rejected(bad: str) -> None:
    with pytest.raises(InvalidTenantId):
        validate_tenant_id(bad)
    assert not is_valid_tenant_id(bad)


@pytest.mark.parametrize("bad", [None, 5, b"abc", ["a"]])
def test_non_strings_are_rejected(bad: object) -> None:
    with pytest.raises(InvalidTenantId):
        validate_tenant_id(bad)


@pytest.mark.parametrize("good", ["a", "acme", "acme_2", "a" * 40, "t0"])
def test_valid_ids(good: str) -> None:
    assert validate_tenant_id(good) == good


def test_error_is_part_of_the_hierarchy_and_a_value_error() -> None:
    with pytest.raises(TenantryError):
        validate_tenant_id("X")
    with pytest.raises(ValueError):
        validate_tenant_id("X")


def test_long_ids_are_truncated_in_the_message() -> None:
    with pytest.raises(InvalidTenantId) as info:
        validate_tenant_id("a" * 500)
    assert len(str(info.value)) < 250


@pytest.mark.parametrize("bad", ["pg_role", "A", 'x"y', "a" * 64, ""])
def test_derived_identifiers_are_checked(bad: str) -> None:
    with pytest.raises(InvalidIdentifierError):
        validate_identifier(bad)
