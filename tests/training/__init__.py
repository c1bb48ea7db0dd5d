"""Tests of the training/ package (generator, checker, model components)."""
