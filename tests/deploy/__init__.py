"""Tests of edge/deploy/."""
