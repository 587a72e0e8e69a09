"""bandit arms

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-24 08:30:00
"""

from alembic import op
import sqlalchemy as sa
import emma.db


revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('automation_bandit_arms',
    sa.Column('tactic_id', sa.String(length=64), nullable=False),
    sa.Column('node_id', sa.String(length=64), nullable=False),
    sa.Column('variant', sa.String(length=64), nullable=False),
    sa.Column('trials', sa.Integer(), nullable=False),
    sa.Column('conversions', sa.Integer(), nullable=False),
    sa.Column('updated_at', emma.db.UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('tactic_id', 'node_id', 'variant', name=op.f('pk_automation_bandit_arms'))
    )


def downgrade() -> None:
    op.drop_table('automation_bandit_arms')
