"""Reading the rich status (google.rpc.Status, through grpcio-status) that a failed call carries.

The error model's details (ErrorInfo, RetryInfo, QuotaFailure, BadRequest)
travel in the `grpc-status-details-bin` trailer; every client of our services
reads them here.
"""

from __future__ import annotations

from typing import TypeVar

import grpc
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

M = TypeVar("M", bound=Message)


def rich_status(err: grpc.aio.AioRpcError) -> status_pb2.Status | None:
    """The call's google.rpc.Status; None when it sent none (or one that disagrees with the call's own status)."""
    try:
        return rpc_status.from_call(err)
    except ValueError:
        return None


def status_detail(status: status_pb2.Status | None, kind: type[M]) -> M | None:
    """The first detail of that type in the status, unpacked."""
    for packed in status.details if status else ():
        if packed.Is(kind.DESCRIPTOR):
            found = kind()
            packed.Unpack(found)
            return found
    return None


def retry_delay_s(err: BaseException) -> float | None:
    """The delay of the RetryInfo in a failed call's rich status; None when it carries none."""
    if not isinstance(err, grpc.aio.AioRpcError):
        return None
    info = status_detail(rich_status(err), error_details_pb2.RetryInfo)
    return info.retry_delay.ToTimedelta().total_seconds() if info is not None else None
