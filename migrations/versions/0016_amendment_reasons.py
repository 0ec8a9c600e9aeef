"""amendment reasons

An amendment of a signed report records why it was made (the radiologist's words); the
amended SR and the audit trail carry the same text. Versions written before this revision
keep NULL.

Revision ID: 0016
Revises: 0013
Create Date: 2026-12-05 08:20:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0016'
down_revision = '0015'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('reports', schema=None) as batch_op:
        batch_op.add_column(sa.Column('amendment_reason', sa.Text(), nullable=True))


def downgrade() -> None:
    # A plain ALTER TABLE ... DROP COLUMN (SQLite 3.35 and later have it): rebuilding the
    # table, as a batch operation would on SQLite, fails while exports reference reports.
    op.drop_column('reports', 'amendment_reason')
