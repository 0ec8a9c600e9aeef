"""storage commitment, rejection notes and the signer's language

Exports remember their latest storage commitment request (Transaction UID, the instances
it named, when it was made) and when the destination committed, so that a restart
between the request and the destination's report loses nothing. An export is of a kind:
a report's SR, or an IHE IOCM rejection note about a report (the file it sends is kept
on the row); one of each per report and destination. Users may have a report language.

Rows written before this revision are report exports (``kind`` REPORT) with no
commitment; users have no language (the site's ``[reports] language`` applies).

Revision ID: 0015
Revises: 0013
Create Date: 2026-12-05 08:30:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import node.db.types

revision = '0015'
down_revision = '0014'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('exports', schema=None) as batch_op:
        batch_op.add_column(sa.Column('kind', sa.Enum('REPORT', 'REJECTION_NOTE',
                                                      name='exportkind', native_enum=False,
                                                      length=24),
                                      server_default='REPORT', nullable=False))
        batch_op.add_column(sa.Column('object_path', sa.String(length=512), nullable=True))
        batch_op.add_column(sa.Column('object_sop_instance_uid', sa.String(length=64),
                                      nullable=True))
        batch_op.add_column(sa.Column('commitment_transaction_uid', sa.String(length=64),
                                      nullable=True))
        batch_op.add_column(sa.Column('commitment_references', sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column('commitment_requested_at',
                                      node.db.types.UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('committed_at',
                                      node.db.types.UTCDateTime(timezone=True), nullable=True))
        batch_op.drop_constraint('uq_exports_report_id_destination_ae', type_='unique')
        batch_op.create_unique_constraint(
            batch_op.f('uq_exports_report_id_destination_ae_kind'),
            ['report_id', 'destination_ae', 'kind'])
        batch_op.create_unique_constraint(
            batch_op.f('uq_exports_commitment_transaction_uid'),
            ['commitment_transaction_uid'])
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.add_column(sa.Column('language', sa.String(length=16), nullable=True))


def downgrade() -> None:
    # A plain ALTER TABLE ... DROP COLUMN (SQLite 3.35 and later have it): rebuilding the
    # table, as a batch operation would on SQLite, fails while other tables reference users.
    op.drop_column('users', 'language')
    # Older code knows neither rejection notes nor the commitment and withdrawal states.
    op.execute("DELETE FROM exports WHERE kind <> 'REPORT'")
    op.execute("UPDATE exports SET state = 'SENT' WHERE state = 'COMMITTED'")
    op.execute("UPDATE exports SET state = 'RETRYING' WHERE state = 'COMMITMENT_PENDING'")
    op.execute("UPDATE exports SET state = 'FAILED' WHERE state = 'WITHDRAWN'")
    with op.batch_alter_table('exports', schema=None) as batch_op:
        batch_op.drop_constraint('uq_exports_commitment_transaction_uid', type_='unique')
        batch_op.drop_constraint('uq_exports_report_id_destination_ae_kind', type_='unique')
        batch_op.create_unique_constraint(
            batch_op.f('uq_exports_report_id_destination_ae'), ['report_id', 'destination_ae'])
        batch_op.drop_column('committed_at')
        batch_op.drop_column('commitment_requested_at')
        batch_op.drop_column('commitment_references')
        batch_op.drop_column('commitment_transaction_uid')
        batch_op.drop_column('object_sop_instance_uid')
        batch_op.drop_column('object_path')
        batch_op.drop_column('kind')
