"""Tests of train/sweep/."""
