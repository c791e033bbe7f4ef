"""SR teachers written as a user writes them, named by ``package.module:factory`` in the tests of teacher plug-ins."""

from __future__ import annotations

from typing import Any

from ee_middleware.trainers.datasets.teachers import ReflectionCase


class ServiceTeacher:
    """Asks a rationale service; ``mode`` says how it misbehaves."""

    name = "service-teacher"

    def __init__(self, mode: str = "ok", style: str = "plain") -> None:
        self.mode = mode
        self.style = style

    def write(self, cases: list[ReflectionCase]) -> Any:
        if self.mode == "down":
            raise ConnectionError("rationale service at http://rationale.internal returned 503")
        if self.mode == "bug":
            raise RuntimeError("no rationale for " + str(len(cases)) + " cases")
        if self.mode == "bad_sampling":  # a bad value in the plug-in's own code: ee's ConfigError, raised in its line
            from ee_middleware.models import Sampling

            Sampling(temperature=-1)
        texts = [f"({self.style}) I call {case.chosen_tool} because it returns what the task asks." for case in cases]
        if self.mode == "short":
            return texts[:-1]
        if self.mode == "numbers":
            return [len(text) for text in texts]
        if self.mode == "generator":
            return (text for text in texts)
        return texts


def make_down() -> ServiceTeacher:
    return ServiceTeacher("down")


def make_bug() -> ServiceTeacher:
    return ServiceTeacher("bug")


def make_bad_sampling() -> ServiceTeacher:
    return ServiceTeacher("bad_sampling")


def make_short() -> ServiceTeacher:
    return ServiceTeacher("short")


def make_numbers() -> ServiceTeacher:
    return ServiceTeacher("numbers")


def make_generator() -> ServiceTeacher:
    return ServiceTeacher("generator")


def make_styled(style: str = "plain", mode: str = "ok") -> ServiceTeacher:
    return ServiceTeacher(mode, style=style)


class ClosesBadly(ServiceTeacher):
    """Writes rationales, then fails to release what it holds."""

    def close(self) -> None:
        raise ValueError("close failed: the rationale service's session is gone")


def make_closes_badly() -> ClosesBadly:
    return ClosesBadly()
