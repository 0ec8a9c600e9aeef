"""derived image facts and report SR index

Image Type and Conversion Type of each instance, so that selection can tell secondary
captures and derived images from acquired radiographs whatever their Modality.
Rows stored before this revision keep NULL (no evidence of being derived).

The series and status attributes of each report's SR (Series Description and Number,
Instance Number, Completion and Verification Flags, Content Date and Time) for
Query/Retrieve and QIDO-RS. Rows written before this revision are filled from their
stored SR files when the node starts (node.reports.sr_index.backfill_report_sr_index).

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-05 06:30:00.000000
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None

_REPORT_COLUMNS: list[tuple[str, Any]] = [
    ('sr_series_number', sa.Integer()),
    ('sr_series_description', sa.String(length=64)),
    ('sr_instance_number', sa.Integer()),
    ('sr_completion_flag', sa.String(length=16)),
    ('sr_verification_flag', sa.String(length=16)),
    ('sr_content_date', sa.String(length=8)),
    ('sr_content_time', sa.String(length=16)),
]


def upgrade() -> None:
    with op.batch_alter_table('instances', schema=None) as batch_op:
        batch_op.add_column(sa.Column('image_type', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('conversion_type', sa.String(length=16), nullable=True))
    with op.batch_alter_table('reports', schema=None) as batch_op:
        for name, column_type in _REPORT_COLUMNS:
            batch_op.add_column(sa.Column(name, column_type, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('reports', schema=None) as batch_op:
        for name, _ in reversed(_REPORT_COLUMNS):
            batch_op.drop_column(name)
    with op.batch_alter_table('instances', schema=None) as batch_op:
        batch_op.drop_column('conversion_type')
        batch_op.drop_column('image_type')
