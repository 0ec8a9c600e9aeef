"""degenerate drafts

A draft whose text is degenerate (a loop, no end token, a misplaced header) is stored with
that verdict and its reasons.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-05 07:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('reports', schema=None) as batch_op:
        batch_op.add_column(sa.Column('degenerate', sa.Boolean(), nullable=False,
                                      server_default=sa.false()))
        batch_op.add_column(sa.Column('degeneracy_reasons', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('reports', schema=None) as batch_op:
        batch_op.drop_column('degeneracy_reasons')
        batch_op.drop_column('degenerate')
