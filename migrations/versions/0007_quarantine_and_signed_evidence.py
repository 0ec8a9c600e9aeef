"""quarantine and signed evidence

Received instances kept aside (content, study or patient identity conflicts), the issuer
of a study's PatientID, and the instance digests a signed report was signed on.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05 06:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import node.db.types

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None

STATES = ('QUARANTINED', 'ACCEPTED', 'DISCARDED')
REASONS = ('CONTENT_CONFLICT', 'STUDY_CONFLICT', 'PATIENT_IDENTITY_CONFLICT')


def upgrade() -> None:
    with op.batch_alter_table('studies', schema=None) as batch_op:
        batch_op.add_column(sa.Column('issuer_of_patient_id', sa.String(length=64),
                                      nullable=True))
    with op.batch_alter_table('reports', schema=None) as batch_op:
        batch_op.add_column(sa.Column('signed_evidence', sa.JSON(), nullable=True))

    op.create_table('quarantined_instances',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('state', sa.Enum(*STATES, name='quarantinestate', native_enum=False,
                               length=24), nullable=False),
    sa.Column('reason', sa.Enum(*REASONS, name='quarantinereason', native_enum=False,
                                length=32), nullable=False),
    sa.Column('detail', sa.Text(), nullable=True),
    sa.Column('sop_instance_uid', sa.String(length=64), nullable=False),
    sa.Column('sop_class_uid', sa.String(length=64), nullable=False),
    sa.Column('study_instance_uid', sa.String(length=64), nullable=False),
    sa.Column('series_instance_uid', sa.String(length=64), nullable=False),
    sa.Column('study_id', sa.Integer(), nullable=True),
    sa.Column('instance_id', sa.Integer(), nullable=True),
    sa.Column('patient_id', sa.String(length=64), nullable=True),
    sa.Column('issuer_of_patient_id', sa.String(length=64), nullable=True),
    sa.Column('patient_name', sa.String(length=324), nullable=True),
    sa.Column('patient_birth_date', sa.String(length=8), nullable=True),
    sa.Column('path', sa.String(length=512), nullable=True),
    sa.Column('size_bytes', sa.BigInteger(), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('calling_ae', sa.String(length=16), nullable=True),
    sa.Column('received_at', node.db.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('resolved_at', node.db.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('resolved_by_id', sa.Integer(), nullable=True),
    sa.ForeignKeyConstraint(['instance_id'], ['instances.id'],
                            name=op.f('fk_quarantined_instances_instance_id_instances'),
                            ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['resolved_by_id'], ['users.id'],
                            name=op.f('fk_quarantined_instances_resolved_by_id_users')),
    sa.ForeignKeyConstraint(['study_id'], ['studies.id'],
                            name=op.f('fk_quarantined_instances_study_id_studies'),
                            ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_quarantined_instances'))
    )
    with op.batch_alter_table('quarantined_instances', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_quarantined_instances_received_at'),
                              ['received_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_quarantined_instances_sop_instance_uid'),
                              ['sop_instance_uid'], unique=False)
        batch_op.create_index(batch_op.f('ix_quarantined_instances_study_id'),
                              ['study_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('quarantined_instances', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_quarantined_instances_study_id'))
        batch_op.drop_index(batch_op.f('ix_quarantined_instances_sop_instance_uid'))
        batch_op.drop_index(batch_op.f('ix_quarantined_instances_received_at'))
    op.drop_table('quarantined_instances')

    with op.batch_alter_table('reports', schema=None) as batch_op:
        batch_op.drop_column('signed_evidence')
    with op.batch_alter_table('studies', schema=None) as batch_op:
        batch_op.drop_column('issuer_of_patient_id')
