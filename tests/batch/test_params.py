"""Job parameters: every bad value is refused with the field it concerns."""

import pytest
from google.type.date_pb2 import Date

from heraldo.batch.params import JobParams, parse_params, validate_job_name
from heraldo.errors import InvalidArgument
from heraldo.v1 import batch_pb2

TEMPLATES = frozenset({"invoice"})


def test_empty_parameters_select_open_invoices():
    params = parse_params(batch_pb2.JobParameters(), templates=TEMPLATES)

    assert params == JobParams()


def test_identity_ignores_how_invoices_are_sent_but_not_which():
    small = parse_params(batch_pb2.JobParameters(chunk_size=10), templates=TEMPLATES)
    large = parse_params(batch_pb2.JobParameters(chunk_size=500), templates=TEMPLATES)
    named = parse_params(batch_pb2.JobParameters(template="invoice"), templates=TEMPLATES)
    france = parse_params(batch_pb2.JobParameters(countries=["France"]), templates=TEMPLATES)

    assert small.identity_key() == large.identity_key() == named.identity_key()
    assert france.identity_key() != small.identity_key()


def test_parameters_survive_a_round_trip_through_the_repository_format():
    params = parse_params(batch_pb2.JobParameters(
        issued_from=Date(year=2011, month=1, day=1), issued_to=Date(year=2011, month=3, day=31),
        countries=["France", "EIRE"], kinds=[1, 2], chunk_size=50), templates=TEMPLATES)

    assert JobParams.from_json(params.to_json()) == params


@pytest.mark.parametrize(("message", "field"), [
    (batch_pb2.JobParameters(issued_from=Date(year=2011, month=2, day=30)),
     "parameters.issued_from"),
    (batch_pb2.JobParameters(issued_from=Date(year=2011, month=5, day=1),
                             issued_to=Date(year=2011, month=4, day=1)), "parameters.issued_to"),
    (batch_pb2.JobParameters(template="reminder"), "parameters.template"),
    (batch_pb2.JobParameters(chunk_size=-1), "parameters.chunk_size"),
    (batch_pb2.JobParameters(chunk_size=1_000_000), "parameters.chunk_size"),
    (batch_pb2.JobParameters(kinds=[0]), "parameters.kinds"),
    (batch_pb2.JobParameters(countries=[" "]), "parameters.countries"),
])
def test_bad_parameters_name_the_field(message, field):
    with pytest.raises(InvalidArgument) as caught:
        parse_params(message, templates=TEMPLATES)

    assert caught.value.field == field


@pytest.mark.parametrize("name", ["", "Upper", "has space", "x" * 101, "-leading"])
def test_bad_job_names_are_refused(name):
    with pytest.raises(InvalidArgument) as caught:
        validate_job_name(name)

    assert caught.value.field == "job_name"


def test_a_very_long_job_name_is_shown_cut_in_the_error():
    with pytest.raises(InvalidArgument) as caught:
        validate_job_name("x" * 5000)

    assert "... (5000 characters) must be 1-100" in str(caught.value)
    assert len(str(caught.value)) < 200


def test_a_chunk_size_out_of_range_says_0_means_the_default():
    with pytest.raises(InvalidArgument, match=r"between 1 and \d+ \(0 for the default\), got -5"):
        parse_params(batch_pb2.JobParameters(chunk_size=-5), templates=TEMPLATES)
