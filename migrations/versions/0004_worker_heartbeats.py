"""worker heartbeats

Worker and GPU heartbeats shown on the monitoring page; the bearer tokens of service
accounts (drafting workers that fetch instances over WADO-RS) and the draft SRs such
workers hand over to the node in the report row.

Downgrading keeps every user row (the audit trail refers to them) but leaves no role the
older schema cannot load: a worker service account, whose tokens go with
``service_tokens``, becomes a deactivated radiologist account. Its password is already
unusable, so it cannot sign in until an admin gives it a password and reactivates it.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23 09:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import node.db.types

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('reports', schema=None) as batch_op:
        batch_op.add_column(sa.Column('pending_sr_data', sa.LargeBinary(), nullable=True))

    op.create_table('worker_heartbeats',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('worker_name', sa.String(length=128), nullable=False),
    sa.Column('host', sa.String(length=255), nullable=False),
    sa.Column('pid', sa.Integer(), nullable=False),
    sa.Column('device', sa.String(length=32), nullable=False),
    sa.Column('gpu_name', sa.String(length=128), nullable=True),
    sa.Column('gpu_memory_used_bytes', sa.BigInteger(), nullable=True),
    sa.Column('gpu_memory_total_bytes', sa.BigInteger(), nullable=True),
    sa.Column('model_name', sa.String(length=128), nullable=True),
    sa.Column('model_version', sa.String(length=128), nullable=True),
    sa.Column('jobs_in_flight', sa.Integer(), nullable=False),
    sa.Column('started_at', node.db.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('last_beat_at', node.db.types.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_worker_heartbeats')),
    sa.UniqueConstraint('worker_name', name=op.f('uq_worker_heartbeats_worker_name'))
    )
    with op.batch_alter_table('worker_heartbeats', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_worker_heartbeats_last_beat_at'), ['last_beat_at'],
                              unique=False)

    op.create_table('service_tokens',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('token_hash', sa.String(length=64), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('created_at', node.db.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('last_used_at', node.db.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('revoked_at', node.db.types.UTCDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'],
                            name=op.f('fk_service_tokens_user_id_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_service_tokens')),
    sa.UniqueConstraint('token_hash', name=op.f('uq_service_tokens_token_hash'))
    )
    with op.batch_alter_table('service_tokens', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_service_tokens_user_id'), ['user_id'], unique=False)


def downgrade() -> None:
    users = sa.table('users', sa.column('role', sa.String()), sa.column('active', sa.Boolean()))
    op.execute(users.update().where(users.c.role == 'WORKER')
               .values(role='RADIOLOGIST', active=False))
    with op.batch_alter_table('service_tokens', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_service_tokens_user_id'))
    op.drop_table('service_tokens')
    with op.batch_alter_table('worker_heartbeats', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_worker_heartbeats_last_beat_at'))
    op.drop_table('worker_heartbeats')
    with op.batch_alter_table('reports', schema=None) as batch_op:
        batch_op.drop_column('pending_sr_data')
