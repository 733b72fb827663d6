"""The only way a shadow score leaves the service, and why it can never be the live topic.

:class:`ShadowScorePublisher` is bound at construction to one topic; it refuses the live score topic there and
again at every publish (the topic name is compared with the stack's live topic, whatever the settings say), and it
refuses any score whose stage is not ``shadow`` (a production-stage score must come from the live scorer).
Nothing in this package publishes scores any other way.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from vigil_contracts.events import RiskScored, Stage
from vigil_shadow.settings import LiveTopicRefused


class ShadowStageRefused(ValueError):
    """A score that is not shadow-stage was about to be published by the shadow service."""


PublishFn = Callable[[str, Sequence[RiskScored]], Awaitable[None]]


class ShadowScorePublisher:
    """Publishes shadow-stage scores to the shadow topic, and nothing else anywhere else."""

    def __init__(self, publish: PublishFn, *, topic: str, live_topic: str) -> None:
        if not topic or topic == live_topic:
            raise LiveTopicRefused(f"a shadow publisher may not write to the live topic {live_topic!r}")
        self._publish = publish
        self.topic = topic
        self.live_topic = live_topic

    def check(self, scores: Sequence[RiskScored]) -> None:
        """Raise unless every score is shadow-stage and the bound topic is not the live one."""
        if self.topic == self.live_topic:  # the attribute is public: check again at use
            raise LiveTopicRefused(f"a shadow publisher may not write to the live topic {self.live_topic!r}")
        for score in scores:
            if score.stage is not Stage.SHADOW:
                raise ShadowStageRefused(
                    f"score {score.event_id} is {score.stage.value}-stage; the shadow service publishes shadow only"
                )

    async def publish(self, scores: Sequence[RiskScored]) -> None:
        """Check every score, then publish them all and await the broker's acknowledgement."""
        self.check(scores)
        if scores:
            await self._publish(self.topic, scores)
