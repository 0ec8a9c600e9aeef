"""personal access tokens

Bearer tokens of people (radiologists, admins, uploaders) for DICOMweb: hashed, scoped,
expiring, revocable. The ``uploader`` role (STOW-RS only) needs no column: roles are
stored by name.

Downgrading drops the tokens and, as 0004 does for worker accounts, leaves no role the
older schema cannot load: an uploader becomes a deactivated radiologist account, which
an admin must reactivate on purpose (it would otherwise gain the worklist).

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-05 08:30:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import node.db.types

revision = '0014'
down_revision = '0013'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('access_tokens',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('token_hash', sa.String(length=64), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('label', sa.String(length=64), nullable=False),
    sa.Column('scopes', sa.JSON(), nullable=False),
    sa.Column('created_at', node.db.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('expires_at', node.db.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('last_used_at', node.db.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('revoked_at', node.db.types.UTCDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'],
                            name=op.f('fk_access_tokens_user_id_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_access_tokens')),
    sa.UniqueConstraint('token_hash', name=op.f('uq_access_tokens_token_hash'))
    )
    with op.batch_alter_table('access_tokens', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_access_tokens_user_id'), ['user_id'], unique=False)


def downgrade() -> None:
    users = sa.table('users', sa.column('role', sa.String()), sa.column('active', sa.Boolean()))
    op.execute(users.update().where(users.c.role == 'UPLOADER')
               .values(role='RADIOLOGIST', active=False))
    with op.batch_alter_table('access_tokens', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_access_tokens_user_id'))
    op.drop_table('access_tokens')
