"""destination health

The latest success and failure of sending to each destination AE.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-05 06:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import node.db.types

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('destination_health',
    sa.Column('destination_ae', sa.String(length=16), nullable=False),
    sa.Column('last_success_at', node.db.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('last_failure_at', node.db.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('consecutive_failures', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('destination_ae', name=op.f('pk_destination_health'))
    )


def downgrade() -> None:
    op.drop_table('destination_health')
