"""Moderation plugins used by the tests (loaded by dotted path, also in worker processes)."""

from __future__ import annotations


class FlagEveryImage:
    """An image safety checker that flags every image."""

    def check(self, images) -> list[bool]:
        return [True] * len(images)


class SaysNo:
    """A prompt classifier: a score of 0.99 for texts containing "classifier-says-no"."""

    def classify(self, text: str) -> float:
        return 0.99 if "classifier-says-no" in text else 0.0
