"""Every tenantry error reads as plain text when raised without a message."""

from __future__ import annotations

import inspect

import pytest

import tenantry.errors as errors_module
from tenantry.errors import TenantryError


def _error_classes() -> list[type[TenantryError]]:
    return [
        cls
        for _, cls in inspect.getmembers(errors_module, inspect.isclass)
        if issubclass(cls, TenantryError)
    ]


@pytest.mark.parametrize("cls", _error_classes(), ids=lambda c: c.__name__)
def test_default_message_is_one_line_of_plain_text(cls: type[TenantryError]) -> None:
    try:
        error = cls()
    except TypeError:
        pytest.skip(f"{cls.__name__} needs arguments")
    message = str(error)
    assert message
    assert "``" not in message
    assert "\n" not in message


def test_a_docstring_with_quoted_code_loses_only_the_markup() -> None:
    message = str(errors_module.TenantNotSetError())
    assert "'with tenant_context(\"acme\"):'" in message
