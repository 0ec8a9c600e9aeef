"""sign-off, triage and web logins

Urgent flags on studies, draft rejection and one successor per report version,
acknowledgement of failed jobs and exports, and the web app's login table.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24 09:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import node.db.types

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('studies', schema=None) as batch_op:
        batch_op.add_column(sa.Column('urgent', sa.Boolean(), server_default=sa.false(),
                                      nullable=False))
        batch_op.add_column(sa.Column('urgent_findings', sa.JSON(), nullable=True))

    with op.batch_alter_table('reports', schema=None) as batch_op:
        batch_op.add_column(sa.Column('rejected_at', node.db.types.UTCDateTime(timezone=True),
                                      nullable=True))
        batch_op.add_column(sa.Column('rejected_by_id', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('rejection_reason', sa.Text(), nullable=True))
        batch_op.create_foreign_key(batch_op.f('fk_reports_rejected_by_id_users'), 'users',
                                    ['rejected_by_id'], ['id'])
        batch_op.create_unique_constraint(batch_op.f('uq_reports_predecessor_id'),
                                          ['predecessor_id'])

    for table in ('jobs', 'exports'):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(sa.Column('acknowledged_at',
                                          node.db.types.UTCDateTime(timezone=True),
                                          nullable=True))
            batch_op.add_column(sa.Column('acknowledged_by_id', sa.Integer(), nullable=True))
            batch_op.create_foreign_key(batch_op.f(f'fk_{table}_acknowledged_by_id_users'),
                                        'users', ['acknowledged_by_id'], ['id'])

    op.create_table('web_sessions',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('token_hash', sa.String(length=64), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('created_at', node.db.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('last_seen_at', node.db.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('expires_at', node.db.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('ended_at', node.db.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('client_address', sa.String(length=64), nullable=True),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'],
                            name=op.f('fk_web_sessions_user_id_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_web_sessions')),
    sa.UniqueConstraint('token_hash', name=op.f('uq_web_sessions_token_hash'))
    )
    with op.batch_alter_table('web_sessions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_web_sessions_user_id'), ['user_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('web_sessions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_web_sessions_user_id'))
    op.drop_table('web_sessions')

    for table in ('exports', 'jobs'):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_constraint(batch_op.f(f'fk_{table}_acknowledged_by_id_users'),
                                     type_='foreignkey')
            batch_op.drop_column('acknowledged_by_id')
            batch_op.drop_column('acknowledged_at')

    with op.batch_alter_table('reports', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('uq_reports_predecessor_id'), type_='unique')
        batch_op.drop_constraint(batch_op.f('fk_reports_rejected_by_id_users'),
                                 type_='foreignkey')
        batch_op.drop_column('rejection_reason')
        batch_op.drop_column('rejected_by_id')
        batch_op.drop_column('rejected_at')

    with op.batch_alter_table('studies', schema=None) as batch_op:
        batch_op.drop_column('urgent_findings')
        batch_op.drop_column('urgent')
