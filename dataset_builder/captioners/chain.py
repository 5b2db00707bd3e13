"""The fallback chain: captioners tried in order, the first valid text kept per instance."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from mtcolor.lexicon import default_lexicon

from ..verification import text_problem
from .base import Captioner, CaptionerConfigError, CaptionerError, InstanceInput

logger = logging.getLogger(__name__)


@dataclass
class ChainResult:
    """Texts and, per text, the name of the captioner that produced it ("" where none did)."""

    texts: list[str | None]
    captioners: list[str]
    problems: Counter = field(default_factory=Counter)


class CaptionerChain:
    """Try captioners in order; per text keep the first answer without a problem
    (:func:`~mtcolor.dataset_builder.verification.text_problem`: empty, refusal, no colour word).

    :class:`CaptionerError` from a captioner counts as ``"<name>:error"`` and falls through;
    :class:`CaptionerConfigError` is raised.
    """

    def __init__(self, captioners: list[Captioner]):
        if not captioners:
            raise ValueError("captioners is empty; configure at least one captioner (e.g. [{type: rule}]).")
        self.captioners = list(captioners)
        self.lexicon = default_lexicon("extended")

    def caption_instances(self, image: np.ndarray, instances: list[InstanceInput]) -> ChainResult:
        texts: list[str | None] = [None] * len(instances)
        names = [""] * len(instances)
        problems: Counter = Counter()
        pending = list(range(len(instances)))
        for captioner in self.captioners:
            if not pending:
                break
            try:
                answers = captioner.caption_instances(image, [instances[i] for i in pending])
            except CaptionerConfigError:
                raise
            except CaptionerError as error:
                logger.warning("captioner %s failed: %s", captioner.name, error)
                problems[f"{captioner.name}:error"] += len(pending)
                continue
            if len(answers) != len(pending):
                raise ValueError(
                    f"captioner {captioner.name} returned {len(answers)} texts for {len(pending)} instances."
                )
            still = []
            for index, answer in zip(pending, answers):
                problem = text_problem(answer, self.lexicon)
                if problem is None:
                    texts[index], names[index] = answer, captioner.name
                else:
                    problems[f"{captioner.name}:{problem}"] += 1
                    still.append(index)
            pending = still
        return ChainResult(texts, names, problems)

    def caption_global(
        self, image: np.ndarray, instances: list[InstanceInput], instance_texts: list[str]
    ) -> ChainResult:
        problems: Counter = Counter()
        for captioner in self.captioners:
            try:
                answer = captioner.caption_global(image, instances, instance_texts)
            except CaptionerConfigError:
                raise
            except CaptionerError as error:
                logger.warning("captioner %s failed: %s", captioner.name, error)
                problems[f"{captioner.name}:error"] += 1
                continue
            problem = text_problem(answer, self.lexicon)
            if problem is None:
                return ChainResult([answer], [captioner.name], problems)
            problems[f"{captioner.name}:{problem}"] += 1
        return ChainResult([None], [""], problems)
