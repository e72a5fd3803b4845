"""Tests of the Google Workspace / Gmail account type."""
