"""`GET /api/quota/`: the live quota board as JSON, with the management API's authentication (the master key,
or a staff session: the admin's quota page polls it). Here, not in accounts.api: the board is gateway's."""

from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework.authentication import SessionAuthentication
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.api import IsOperator, MasterKeyAuthentication
from gateway import board


class QuotaBoardView(APIView):
    """Every deployment in rotation: its limits used/limit, its pause and why, its recent health."""

    authentication_classes = [MasterKeyAuthentication, SessionAuthentication]
    permission_classes = [IsOperator]

    @extend_schema(responses={200: OpenApiTypes.OBJECT}, summary="Quota board: limits, pauses, health per deployment")
    def get(self, request: Request) -> Response:
        return Response(board.board(), headers={"Cache-Control": "no-store"})
