"""The one table from error type to HTTP status, and the client's way back."""

from __future__ import annotations

import pytest

from pipetune.daemon.base import (
    BadRequestError,
    DaemonError,
    TrialConflictError,
    UnknownTrialError,
    error_from_body,
    http_status,
)
from pipetune.errors import ConfigError, ControlError, PipetuneError, PrivilegeError


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (BadRequestError("x"), 400),
        (ConfigError("x"), 400),
        (PrivilegeError("x"), 403),  # before ControlError: it is one
        (UnknownTrialError("x"), 404),
        (TrialConflictError("x"), 409),
        (ControlError("x"), 500),
        (PipetuneError("x"), 500),
        (RuntimeError("x"), 500),
    ],
)
def test_status_of_each_error_type(error: BaseException, status: int) -> None:
    assert http_status(error) == status


def test_client_raises_the_daemons_error_type_again() -> None:
    err = error_from_body(403, {"error": "pid 1 belongs to uid 0", "type": "PrivilegeError"})
    assert isinstance(err, PrivilegeError) and isinstance(err, PermissionError)
    assert err.status == 403 and "uid 0" in str(err)
    assert isinstance(error_from_body(404, {"error": "x", "type": "UnknownTrialError"}),
                      LookupError)
    other = error_from_body(500, {"error": "boom", "type": "SomethingNew"})
    assert isinstance(other, DaemonError) and other.status == 500
    assert other.type_name == "SomethingNew"
    assert str(error_from_body(502, None)) == "HTTP 502"
