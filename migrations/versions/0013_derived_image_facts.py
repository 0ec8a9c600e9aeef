"""derived image facts

Image Type and Conversion Type of each instance, so that selection can tell secondary
captures and derived images from acquired radiographs whatever their Modality.
Rows stored before this revision keep NULL (no evidence of being derived).

Revision ID: 0013
Revises: 0006
Create Date: 2026-12-05 06:30:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0013'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('instances', schema=None) as batch_op:
        batch_op.add_column(sa.Column('image_type', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('conversion_type', sa.String(length=16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('instances', schema=None) as batch_op:
        batch_op.drop_column('conversion_type')
        batch_op.drop_column('image_type')
