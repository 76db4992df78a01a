"""The error answer of the fake, shaped as Compute Engine's error documents."""

from __future__ import annotations

from typing import Any

Json = dict[str, Any]


class ApiError(Exception):
    """An error answer: HTTP status, reason and message, as Compute Engine words them."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message

    def body(self) -> Json:
        error: Json = {
            "code": self.status,
            "message": self.message,
            "errors": [
                {
                    "domain": "global" if self.status != 403 else "usageLimits",
                    "reason": self.reason,
                    "message": self.message,
                }
            ],
        }
        return {"error": error}
