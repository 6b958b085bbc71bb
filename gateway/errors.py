"""OpenAI-style error envelopes for every /v1 failure."""

from __future__ import annotations

import orjson
from django.http import HttpResponse

from accounts.principal import AuthRefused
from gateway import redact

# Default error "type" per status, following OpenAI's vocabulary.
TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}


class GatewayError(Exception):
    """An error the client sees as {"error": {message, type, param, code}} with a status."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        type: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = redact.redact(message)
        self.code = code
        self.type = type or TYPE_BY_STATUS.get(status, "api_error")
        self.param = param
        self.headers = headers or {}

    def body(self) -> dict[str, object]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> HttpResponse:
        response = HttpResponse(orjson.dumps(self.body()), status=self.status, content_type="application/json")
        for name, value in self.headers.items():
            response[name] = value
        return response


def bad_request(message: str, param: str | None = None, code: str | None = None) -> GatewayError:
    return GatewayError(400, message, param=param, code=code)


def not_found(message: str, code: str = "not_found", param: str | None = None) -> GatewayError:
    return GatewayError(404, message, code=code, param=param)


def refused(e: AuthRefused) -> GatewayError:
    """accounts' refusal to let a caller in, as the envelope every /v1 error is."""
    return GatewayError(e.status, e.message, code=e.code, headers=e.headers)
