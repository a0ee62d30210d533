"""Reference data as the API returns it: the lists clients fill their pickers from."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from app.models.case import CasePriority


class ReferenceItemResponse(BaseModel):
    """An active reference entry; lists are already in display order."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    code: str
    name: str


class ServiceTypeResponse(ReferenceItemResponse):
    pass


class ComplaintTypeResponse(ReferenceItemResponse):
    service_type_id: int


class HandlerResponse(ReferenceItemResponse):
    pass


class ClosureReasonResponse(ReferenceItemResponse):
    pass


class SlaConfigResponse(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    service_type: ServiceTypeResponse
    priority: CasePriority
    response_hours: int
    resolution_hours: int
