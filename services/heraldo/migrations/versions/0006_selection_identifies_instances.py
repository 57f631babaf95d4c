"""A job instance is identified by its name and its selection (dates, kinds, countries) only: the
template no longer counts, so naming the default template, or another one, does not make a new
instance that mails every customer again.

Existing instances get the key they would get now. Instances that differed only by their template
become runs of one instance, numbered in the order they were made, so the newest is the one a
start or restart finds.

Revision ID: 0006
Revises: 0005
"""

import json
from collections import defaultdict

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

instances = sa.table("job_instances", sa.column("id"), sa.column("job_name"),
                     sa.column("parameters_key"), sa.column("run_number"),
                     sa.column("create_time"))


def selection_key(parameters_key: str) -> str:
    """The key without the template, in the canonical form the batch service writes."""
    values = json.loads(parameters_key)
    values.pop("template", None)
    return json.dumps(values, default=str, sort_keys=True, separators=(",", ":"))


def upgrade() -> None:
    conn = op.get_bind()
    groups = defaultdict(list)
    for row in conn.execute(sa.select(instances)).all():
        groups[(row.job_name, selection_key(row.parameters_key))].append(row)
    changes = []
    for (_, key), members in groups.items():
        members.sort(key=lambda row: (row.run_number, row.create_time))
        for number, row in enumerate(members, start=1):
            if (row.parameters_key, row.run_number) != (key, number):
                changes.append((row.id, key, number))
    # Each changed row first steps aside to a run number no row has (below zero), so that the
    # unique (name, key, run number) never sees two alike on the way.
    for aside, (instance_id, _, _) in enumerate(changes, start=1):
        conn.execute(instances.update().where(instances.c.id == instance_id)
                     .values(run_number=-aside))
    for instance_id, key, number in changes:
        conn.execute(instances.update().where(instances.c.id == instance_id)
                     .values(parameters_key=key, run_number=number))


def downgrade() -> None:
    # The keys stay without the template: which instances it once told apart is not recorded.
    pass
