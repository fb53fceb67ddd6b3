"""The site's own policy (:class:`~mmfl.config.SitePolicy`), checked before any work, any read
of the site's files or features and any privacy charge.

Each check looks only at the policy and the instruction, so a refusal's reason can say exactly
which key refused which value, and no refusal costs privacy. The one exception is the step
ceiling of a site without DP, which counts its training rows; a DP site has none (a refusal
that depends on its exact size would be a release): it bounds its work by ``max_local_epochs``
and ``min_batch_size`` (at most ``max_local_epochs * ceil(N / min_batch_size)`` steps).
"""

from __future__ import annotations

import math

from mmfl.config import SitePolicy, WorkKind
from mmfl.errors import MmflError
from mmfl.protocols.messages import RepresentInstruction, TrainSettings

WIRE_BYTES = {"float32": 4, "float16": 2, "int8": 1}


class PolicyRefusal(MmflError):
    """Outside the site's own policy; the message names the key and the value asked for."""


class PolicyCheck:
    """The checks of one site's policy."""

    def __init__(self, policy: SitePolicy) -> None:
        self.policy = policy

    def _refuse(self, key: str, limit: object, asked: object, what: str) -> None:
        raise PolicyRefusal(f"site policy: {key} is {limit}; the coordinator asked for {asked} {what}")

    def work(self, kind: WorkKind) -> None:
        if kind not in self.policy.accept:
            accepted = ", ".join(self.policy.accept) or "nothing"
            raise PolicyRefusal(f"site policy: accept is [{accepted}]; the coordinator asked for {kind} work")

    def settings(self, settings: TrainSettings) -> None:
        p = self.policy
        if settings.local_epochs > p.max_local_epochs:
            self._refuse("max_local_epochs", p.max_local_epochs, settings.local_epochs, "local epochs")
        if settings.batch_size > p.max_batch_size:
            self._refuse("max_batch_size", p.max_batch_size, settings.batch_size, "as the batch size")
        if settings.batch_size < p.min_batch_size:
            self._refuse("min_batch_size", p.min_batch_size, settings.batch_size, "as the batch size")

    def steps(self, steps: int) -> None:
        """The round's optimizer steps on private rows (sites without DP)."""
        if steps > self.policy.max_steps_per_round:
            self._refuse("max_steps_per_round", self.policy.max_steps_per_round, steps, "steps")

    def steps_of(self, settings: TrainSettings, rows: int) -> None:
        """Steps of a round over ``rows`` training rows at the settings' batch size."""
        self.steps(settings.local_epochs * math.ceil(rows / settings.batch_size))

    def reply(self, nbytes: int) -> None:
        mb = nbytes / 2**20
        if mb > self.policy.max_reply_mb:
            self._refuse("max_reply_mb", self.policy.max_reply_mb, f"{mb:.1f} MB", "in its reply")

    def represent(self, instruction: RepresentInstruction, modalities: list[str]) -> None:
        """Everything of a ``train.represent`` instruction that the policy bounds, before any work."""
        p = self.policy
        self.work("regress" if instruction.mix is not None else "represent")
        self.settings(instruction.settings)
        if len(instruction.public_indices) > p.max_public_items:
            self._refuse(
                "max_public_items", p.max_public_items, len(instruction.public_indices), "public rows"
            )
        if instruction.mix is not None and len(instruction.mix.first) > p.max_mixed_items:
            self._refuse("max_mixed_items", p.max_mixed_items, len(instruction.mix.first), "mixed items")
        rows = instruction.expected_rows()
        floats = sum(rows.get(m, 0) for m in modalities) * instruction.embed_dim
        self.reply(floats * WIRE_BYTES[instruction.settings.payload_dtype])

    def weights(self, settings: TrainSettings, weight_bytes: int) -> None:
        """A ``train.weights`` instruction: the work kind, the settings, the weights sent back."""
        self.work("weights")
        self.settings(settings)
        self.reply(weight_bytes)

    def release(self, dp: bool) -> None:
        """The end-of-run release of the site's final model."""
        if not self.policy.release_final_model:
            how = "a DP-trained model's" if dp else "its"
            raise PolicyRefusal(
                f"site policy: release_final_model is false; {how} weights never leave the site"
            )
