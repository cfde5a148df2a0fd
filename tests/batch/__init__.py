"""Tests of edge/batch/."""
