"""login attempt windows

Failed logins become one counter row per throttle key and window (instead of one row per
failure), so a flood of attempts cannot grow the table without bound.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05 06:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import node.db.types

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('login_attempt_windows',
    sa.Column('key_hash', sa.String(length=64), nullable=False),
    sa.Column('window_start', node.db.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('failures', sa.Integer(), nullable=False),
    sa.Column('refusals', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('key_hash', name=op.f('pk_login_attempt_windows'))
    )
    with op.batch_alter_table('login_attempt_windows', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_login_attempt_windows_window_start'),
                              ['window_start'], unique=False)
    with op.batch_alter_table('login_failures', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_login_failures_key_hash_failed_at'))
        batch_op.drop_index(batch_op.f('ix_login_failures_failed_at'))
    op.drop_table('login_failures')


def downgrade() -> None:
    op.create_table('login_failures',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('key_hash', sa.String(length=64), nullable=False),
    sa.Column('failed_at', node.db.types.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_login_failures'))
    )
    with op.batch_alter_table('login_failures', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_login_failures_failed_at'), ['failed_at'],
                              unique=False)
        batch_op.create_index(batch_op.f('ix_login_failures_key_hash_failed_at'),
                              ['key_hash', 'failed_at'], unique=False)
    with op.batch_alter_table('login_attempt_windows', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_login_attempt_windows_window_start'))
    op.drop_table('login_attempt_windows')
