"""Alembic migration environment of stableserve (``env.py``) and its revisions (``versions/``).

A package only so that setuptools ships the files; Alembic loads them by path.
"""
