"""Role grants ⇄ tierstore.v1 messages."""

from __future__ import annotations

from tierstore.errors import InvalidArgument
from tierstore.types import Grant, Role
from tierstore.v1 import admin_pb2

__all__ = ["grant_from_pb", "grant_to_pb"]

_ROLES = {
    admin_pb2.ROLE_READER: Role.READER,
    admin_pb2.ROLE_WRITER: Role.WRITER,
    admin_pb2.ROLE_ADMIN: Role.ADMIN,
}
_ROLES_PB = {role: value for value, role in _ROLES.items()}


def grant_from_pb(message: admin_pb2.Grant) -> Grant:
    """Raises InvalidArgument for an unknown role."""
    role = _ROLES.get(message.role)
    if role is None:
        raise InvalidArgument(f"unknown or unspecified role {message.role}")
    return Grant(dataset=message.dataset, role=role)


def grant_to_pb(grant: Grant) -> admin_pb2.Grant:
    return admin_pb2.Grant(dataset=grant.dataset, role=_ROLES_PB[grant.role])
