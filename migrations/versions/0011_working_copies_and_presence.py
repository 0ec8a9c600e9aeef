"""working copies and presence

Radiologists' unsigned text per report, and who has a study open.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-05 06:30:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import node.db.types

revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('report_working_copies',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('report_id', sa.Integer(), nullable=False),
    sa.Column('findings', sa.Text(), nullable=False),
    sa.Column('impression', sa.Text(), nullable=False),
    sa.Column('saved_at', node.db.types.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['report_id'], ['reports.id'],
                            name=op.f('fk_report_working_copies_report_id_reports'),
                            ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'],
                            name=op.f('fk_report_working_copies_user_id_users'),
                            ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_report_working_copies')),
    sa.UniqueConstraint('user_id', 'report_id',
                        name=op.f('uq_report_working_copies_user_id_report_id'))
    )
    with op.batch_alter_table('report_working_copies', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_report_working_copies_report_id'), ['report_id'],
                              unique=False)

    op.create_table('study_presence',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('study_id', sa.Integer(), nullable=False),
    sa.Column('seen_at', node.db.types.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['study_id'], ['studies.id'],
                            name=op.f('fk_study_presence_study_id_studies'),
                            ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'],
                            name=op.f('fk_study_presence_user_id_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_study_presence')),
    sa.UniqueConstraint('user_id', 'study_id',
                        name=op.f('uq_study_presence_user_id_study_id'))
    )
    with op.batch_alter_table('study_presence', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_study_presence_study_id'), ['study_id'],
                              unique=False)
        batch_op.create_index(batch_op.f('ix_study_presence_seen_at'), ['seen_at'],
                              unique=False)


def downgrade() -> None:
    with op.batch_alter_table('study_presence', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_study_presence_seen_at'))
        batch_op.drop_index(batch_op.f('ix_study_presence_study_id'))
    op.drop_table('study_presence')
    with op.batch_alter_table('report_working_copies', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_report_working_copies_report_id'))
    op.drop_table('report_working_copies')
