"""Data access, one module per aggregate; functions take an ``AsyncSession``.

They add and flush but never commit: the caller owns the transaction.
"""
