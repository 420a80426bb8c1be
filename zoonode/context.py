"""The DSO context-injection prompt: selected experiences as a numbered list before the task.

Pure: takes the selected lessons (text, domain, confidence) and the task, returns the text an
agent prepends to its LLM prompt. With nothing selected the task comes back unchanged, so an
empty network never adds an empty heading.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

HEADING = "# Learned Experiences"
PREAMBLE = (
    "Lessons learned on earlier tasks, shared by peers and selected for this task. "
    "Apply the ones that fit; ignore the rest."
)
FEEDBACK_HINT = (
    "After the task, report each lesson you used as helpful or harmful by its id "
    "(POST /v1/experiences/{id}/feedback, MCP rate_experience, zoonode feedback)."
)


@dataclass(frozen=True)
class Lesson:
    text: str
    domain: str
    confidence: float
    id: str | None = None  # hex id, shown so an agent can report which lesson helped


def render_context(task: str, lessons: Sequence[Lesson]) -> str:
    if not lessons:
        return task
    lines = [HEADING, PREAMBLE, ""]
    for i, lesson in enumerate(lessons, 1):
        text = " ".join(lesson.text.split())  # one line each: no injected headings
        ref = f", id {lesson.id}" if lesson.id else ""
        lines.append(f"{i}. {text} ({lesson.domain}, confidence {lesson.confidence:.2f}{ref})")
    if any(lesson.id for lesson in lessons):
        lines += ["", FEEDBACK_HINT]
    lines += ["", "# Task", task]
    return "\n".join(lines)
