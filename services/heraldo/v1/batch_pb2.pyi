import datetime

from google.api import annotations_pb2 as _annotations_pb2
from google.api import field_behavior_pb2 as _field_behavior_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.type import date_pb2 as _date_pb2
from heraldo.v1 import notification_pb2 as _notification_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class JobStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_STATUS_UNSPECIFIED: _ClassVar[JobStatus]
    JOB_STATUS_STARTING: _ClassVar[JobStatus]
    JOB_STATUS_STARTED: _ClassVar[JobStatus]
    JOB_STATUS_STOPPING: _ClassVar[JobStatus]
    JOB_STATUS_STOPPED: _ClassVar[JobStatus]
    JOB_STATUS_COMPLETED: _ClassVar[JobStatus]
    JOB_STATUS_FAILED: _ClassVar[JobStatus]
JOB_STATUS_UNSPECIFIED: JobStatus
JOB_STATUS_STARTING: JobStatus
JOB_STATUS_STARTED: JobStatus
JOB_STATUS_STOPPING: JobStatus
JOB_STATUS_STOPPED: JobStatus
JOB_STATUS_COMPLETED: JobStatus
JOB_STATUS_FAILED: JobStatus

class JobParameters(_message.Message):
    __slots__ = ("issued_from", "issued_to", "kinds", "countries", "template", "chunk_size", "skip_limit", "partitions")
    ISSUED_FROM_FIELD_NUMBER: _ClassVar[int]
    ISSUED_TO_FIELD_NUMBER: _ClassVar[int]
    KINDS_FIELD_NUMBER: _ClassVar[int]
    COUNTRIES_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    CHUNK_SIZE_FIELD_NUMBER: _ClassVar[int]
    SKIP_LIMIT_FIELD_NUMBER: _ClassVar[int]
    PARTITIONS_FIELD_NUMBER: _ClassVar[int]
    issued_from: _date_pb2.Date
    issued_to: _date_pb2.Date
    kinds: _containers.RepeatedScalarFieldContainer[_notification_pb2.DocumentKind]
    countries: _containers.RepeatedScalarFieldContainer[str]
    template: str
    chunk_size: int
    skip_limit: int
    partitions: int
    def __init__(self, issued_from: _Optional[_Union[_date_pb2.Date, _Mapping]] = ..., issued_to: _Optional[_Union[_date_pb2.Date, _Mapping]] = ..., kinds: _Optional[_Iterable[_Union[_notification_pb2.DocumentKind, str]]] = ..., countries: _Optional[_Iterable[str]] = ..., template: _Optional[str] = ..., chunk_size: _Optional[int] = ..., skip_limit: _Optional[int] = ..., partitions: _Optional[int] = ...) -> None: ...

class StartJobRequest(_message.Message):
    __slots__ = ("job_name", "parameters", "new_instance")
    JOB_NAME_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    NEW_INSTANCE_FIELD_NUMBER: _ClassVar[int]
    job_name: str
    parameters: JobParameters
    new_instance: bool
    def __init__(self, job_name: _Optional[str] = ..., parameters: _Optional[_Union[JobParameters, _Mapping]] = ..., new_instance: _Optional[bool] = ...) -> None: ...

class GetJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListJobsResponse(_message.Message):
    __slots__ = ("jobs", "next_page_token")
    JOBS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[Job]
    next_page_token: str
    def __init__(self, jobs: _Optional[_Iterable[_Union[Job, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class StopJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class RestartJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class WatchJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class JobCounts(_message.Message):
    __slots__ = ("selected", "processed", "sent", "skipped", "failed", "duplicate")
    SELECTED_FIELD_NUMBER: _ClassVar[int]
    PROCESSED_FIELD_NUMBER: _ClassVar[int]
    SENT_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    selected: int
    processed: int
    sent: int
    skipped: int
    failed: int
    duplicate: int
    def __init__(self, selected: _Optional[int] = ..., processed: _Optional[int] = ..., sent: _Optional[int] = ..., skipped: _Optional[int] = ..., failed: _Optional[int] = ..., duplicate: _Optional[int] = ...) -> None: ...

class Job(_message.Message):
    __slots__ = ("job_id", "job_name", "status", "parameters", "counts", "reasons", "sent_by_replica", "create_time", "start_time", "end_time", "exit_message", "rate_per_second", "seconds_left", "exit_code", "partitions", "notices")
    class ReasonsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class SentByReplicaEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class NoticesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_NAME_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    REASONS_FIELD_NUMBER: _ClassVar[int]
    SENT_BY_REPLICA_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    EXIT_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    RATE_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    SECONDS_LEFT_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    PARTITIONS_FIELD_NUMBER: _ClassVar[int]
    NOTICES_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    job_name: str
    status: JobStatus
    parameters: JobParameters
    counts: JobCounts
    reasons: _containers.ScalarMap[str, int]
    sent_by_replica: _containers.ScalarMap[str, int]
    create_time: _timestamp_pb2.Timestamp
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    exit_message: str
    rate_per_second: float
    seconds_left: float
    exit_code: str
    partitions: _containers.RepeatedCompositeFieldContainer[Partition]
    notices: _containers.ScalarMap[str, int]
    def __init__(self, job_id: _Optional[str] = ..., job_name: _Optional[str] = ..., status: _Optional[_Union[JobStatus, str]] = ..., parameters: _Optional[_Union[JobParameters, _Mapping]] = ..., counts: _Optional[_Union[JobCounts, _Mapping]] = ..., reasons: _Optional[_Mapping[str, int]] = ..., sent_by_replica: _Optional[_Mapping[str, int]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., exit_message: _Optional[str] = ..., rate_per_second: _Optional[float] = ..., seconds_left: _Optional[float] = ..., exit_code: _Optional[str] = ..., partitions: _Optional[_Iterable[_Union[Partition, _Mapping]]] = ..., notices: _Optional[_Mapping[str, int]] = ...) -> None: ...

class Partition(_message.Message):
    __slots__ = ("index", "status", "replica_id", "after_id", "last_id", "checkpoint", "read", "written", "filtered", "skipped", "commits", "rollbacks", "exit_message")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REPLICA_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_ID_FIELD_NUMBER: _ClassVar[int]
    LAST_ID_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    READ_FIELD_NUMBER: _ClassVar[int]
    WRITTEN_FIELD_NUMBER: _ClassVar[int]
    FILTERED_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_FIELD_NUMBER: _ClassVar[int]
    COMMITS_FIELD_NUMBER: _ClassVar[int]
    ROLLBACKS_FIELD_NUMBER: _ClassVar[int]
    EXIT_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    index: int
    status: str
    replica_id: str
    after_id: int
    last_id: int
    checkpoint: int
    read: int
    written: int
    filtered: int
    skipped: int
    commits: int
    rollbacks: int
    exit_message: str
    def __init__(self, index: _Optional[int] = ..., status: _Optional[str] = ..., replica_id: _Optional[str] = ..., after_id: _Optional[int] = ..., last_id: _Optional[int] = ..., checkpoint: _Optional[int] = ..., read: _Optional[int] = ..., written: _Optional[int] = ..., filtered: _Optional[int] = ..., skipped: _Optional[int] = ..., commits: _Optional[int] = ..., rollbacks: _Optional[int] = ..., exit_message: _Optional[str] = ...) -> None: ...

class JobEvent(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: Job
    def __init__(self, job: _Optional[_Union[Job, _Mapping]] = ...) -> None: ...
