import datetime

from google.api import annotations_pb2 as _annotations_pb2
from google.api import field_behavior_pb2 as _field_behavior_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.type import date_pb2 as _date_pb2
from google.type import money_pb2 as _money_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DocumentKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DOCUMENT_KIND_UNSPECIFIED: _ClassVar[DocumentKind]
    DOCUMENT_KIND_INVOICE: _ClassVar[DocumentKind]
    DOCUMENT_KIND_CREDIT_NOTE: _ClassVar[DocumentKind]

class DeliveryStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DELIVERY_STATUS_UNSPECIFIED: _ClassVar[DeliveryStatus]
    DELIVERY_STATUS_SENT: _ClassVar[DeliveryStatus]
    DELIVERY_STATUS_DUPLICATE: _ClassVar[DeliveryStatus]
    DELIVERY_STATUS_TEMPORARY_FAILURE: _ClassVar[DeliveryStatus]
    DELIVERY_STATUS_PERMANENT_FAILURE: _ClassVar[DeliveryStatus]
    DELIVERY_STATUS_REJECTED: _ClassVar[DeliveryStatus]
DOCUMENT_KIND_UNSPECIFIED: DocumentKind
DOCUMENT_KIND_INVOICE: DocumentKind
DOCUMENT_KIND_CREDIT_NOTE: DocumentKind
DELIVERY_STATUS_UNSPECIFIED: DeliveryStatus
DELIVERY_STATUS_SENT: DeliveryStatus
DELIVERY_STATUS_DUPLICATE: DeliveryStatus
DELIVERY_STATUS_TEMPORARY_FAILURE: DeliveryStatus
DELIVERY_STATUS_PERMANENT_FAILURE: DeliveryStatus
DELIVERY_STATUS_REJECTED: DeliveryStatus

class Recipient(_message.Message):
    __slots__ = ("customer_id", "name", "email", "locale")
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    EMAIL_FIELD_NUMBER: _ClassVar[int]
    LOCALE_FIELD_NUMBER: _ClassVar[int]
    customer_id: str
    name: str
    email: str
    locale: str
    def __init__(self, customer_id: _Optional[str] = ..., name: _Optional[str] = ..., email: _Optional[str] = ..., locale: _Optional[str] = ...) -> None: ...

class NotificationRequest(_message.Message):
    __slots__ = ("notification_id", "job_id", "invoice_number", "kind", "recipient", "amount", "issue_date", "due_date", "template")
    NOTIFICATION_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    INVOICE_NUMBER_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    RECIPIENT_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    ISSUE_DATE_FIELD_NUMBER: _ClassVar[int]
    DUE_DATE_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    notification_id: str
    job_id: str
    invoice_number: str
    kind: DocumentKind
    recipient: Recipient
    amount: _money_pb2.Money
    issue_date: _date_pb2.Date
    due_date: _date_pb2.Date
    template: str
    def __init__(self, notification_id: _Optional[str] = ..., job_id: _Optional[str] = ..., invoice_number: _Optional[str] = ..., kind: _Optional[_Union[DocumentKind, str]] = ..., recipient: _Optional[_Union[Recipient, _Mapping]] = ..., amount: _Optional[_Union[_money_pb2.Money, _Mapping]] = ..., issue_date: _Optional[_Union[_date_pb2.Date, _Mapping]] = ..., due_date: _Optional[_Union[_date_pb2.Date, _Mapping]] = ..., template: _Optional[str] = ...) -> None: ...

class DeliveryResult(_message.Message):
    __slots__ = ("notification_id", "status", "smtp_code", "detail", "message_id", "replica_id", "completed_at", "possible_copy")
    NOTIFICATION_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    SMTP_CODE_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    REPLICA_ID_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_AT_FIELD_NUMBER: _ClassVar[int]
    POSSIBLE_COPY_FIELD_NUMBER: _ClassVar[int]
    notification_id: str
    status: DeliveryStatus
    smtp_code: int
    detail: str
    message_id: str
    replica_id: str
    completed_at: _timestamp_pb2.Timestamp
    possible_copy: bool
    def __init__(self, notification_id: _Optional[str] = ..., status: _Optional[_Union[DeliveryStatus, str]] = ..., smtp_code: _Optional[int] = ..., detail: _Optional[str] = ..., message_id: _Optional[str] = ..., replica_id: _Optional[str] = ..., completed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., possible_copy: _Optional[bool] = ...) -> None: ...

class NotificationBatch(_message.Message):
    __slots__ = ("requests",)
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    requests: _containers.RepeatedCompositeFieldContainer[NotificationRequest]
    def __init__(self, requests: _Optional[_Iterable[_Union[NotificationRequest, _Mapping]]] = ...) -> None: ...

class DeliveryResultBatch(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[DeliveryResult]
    def __init__(self, results: _Optional[_Iterable[_Union[DeliveryResult, _Mapping]]] = ...) -> None: ...
