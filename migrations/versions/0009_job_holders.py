"""job holders

Which worker process holds a RUNNING job (name and per-process incarnation), so its
heartbeat renews the job's lease and a restarted or silent worker's jobs are released
at once; the incarnation and the "broken" reason of each worker's heartbeat.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-05 06:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('worker_name', sa.String(length=128), nullable=True))
        batch_op.add_column(sa.Column('worker_incarnation', sa.String(length=32),
                                      nullable=True))
    with op.batch_alter_table('worker_heartbeats', schema=None) as batch_op:
        batch_op.add_column(sa.Column('incarnation', sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column('broken_reason', sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('worker_heartbeats', schema=None) as batch_op:
        batch_op.drop_column('broken_reason')
        batch_op.drop_column('incarnation')
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_column('worker_incarnation')
        batch_op.drop_column('worker_name')
