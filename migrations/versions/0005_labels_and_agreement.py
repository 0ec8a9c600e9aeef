"""draft labels and agreement

CheXpert labels of drafts and finals (``reports.labels``, there since 0001), and the
agreement between a draft and the report signed from it, one row per observation.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23 09:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import node.db.types

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


OBSERVATIONS = ('NO_FINDING', 'ENLARGED_CARDIOMEDIASTINUM', 'CARDIOMEGALY', 'LUNG_OPACITY',
                'LUNG_LESION', 'EDEMA', 'CONSOLIDATION', 'PNEUMONIA', 'ATELECTASIS',
                'PNEUMOTHORAX', 'PLEURAL_EFFUSION', 'PLEURAL_OTHER', 'FRACTURE',
                'SUPPORT_DEVICES')
MENTIONS = ('POSITIVE', 'NEGATIVE', 'UNCERTAIN', 'NOT_MENTIONED')


def upgrade() -> None:
    op.create_table('observation_agreement',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('draft_report_id', sa.Integer(), nullable=True),
    sa.Column('final_report_id', sa.Integer(), nullable=True),
    sa.Column('model_name', sa.String(length=128), nullable=False),
    sa.Column('model_version', sa.String(length=128), nullable=False),
    sa.Column('observation', sa.Enum(*OBSERVATIONS, name='observation', native_enum=False,
                                     length=32), nullable=False),
    sa.Column('draft_mention', sa.Enum(*MENTIONS, name='mention', native_enum=False,
                                       length=24), nullable=False),
    sa.Column('final_mention', sa.Enum(*MENTIONS, name='mention', native_enum=False,
                                       length=24), nullable=False),
    sa.Column('signed_at', node.db.types.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['draft_report_id'], ['reports.id'],
                            name=op.f('fk_observation_agreement_draft_report_id_reports'),
                            ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['final_report_id'], ['reports.id'],
                            name=op.f('fk_observation_agreement_final_report_id_reports'),
                            ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_observation_agreement')),
    sa.UniqueConstraint('final_report_id', 'observation',
                        name=op.f('uq_observation_agreement_final_report_id_observation'))
    )
    with op.batch_alter_table('observation_agreement', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_observation_agreement_draft_report_id'),
                              ['draft_report_id'], unique=False)
        batch_op.create_index(
            batch_op.f('ix_observation_agreement_model_name_model_version_signed_at'),
            ['model_name', 'model_version', 'signed_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('observation_agreement', schema=None) as batch_op:
        batch_op.drop_index(
            batch_op.f('ix_observation_agreement_model_name_model_version_signed_at'))
        batch_op.drop_index(batch_op.f('ix_observation_agreement_draft_report_id'))
    op.drop_table('observation_agreement')
