"""Connections to cloud directories: a Microsoft 365 tenant, a Google Workspace.

Each module keeps one connection's settings, secrets and tokens, and the
services built on them (consent, connection checks, mailbox search).
"""
