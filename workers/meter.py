"""A streaming call's running cost against its job's hold, which it extends ahead of need.

The API holds a call for its prompt and its model's typical answer (``shared.pricing``).
As the answer streams, the meter counts its output (UTF-8 bytes, about four a token:
CJK text, at three bytes a character, is not undercounted) and, once three quarters of
what is held for the call is used, extends the job's hold by as much again
(``shared.extension``): the call's allowance doubles each time, so a 4,000-token answer
on a 512-token hold needs three extensions and most answers none. The allowance never
passes the call's output cap (``max_tokens`` or the model's limit): a call with
``max_tokens`` is held for all of it and never extends.

When an extension is refused (the wallet or a budget cannot cover it, or the job ended)
the call goes on until it has used what is held, then stops: the provider stream is
closed and the call ends with ``finish_reason: "length"``. A call on the account's own
provider key costs no credits and is not metered.
"""

from __future__ import annotations

import logging
from decimal import ROUND_CEILING, Decimal

from sqlalchemy.exc import SQLAlchemyError

from shared import extension, pricing
from shared.credits import QUANTUM
from shared.db import autocommit, is_postgres, session_scope
from shared.registry import ModelSpec
from workers.providers.base import ChatCall

log = logging.getLogger(__name__)

BYTES_PER_TOKEN = 4
# Extend once this share of the allowance is used: the extension's round trip is made
# while the answer still has room, and a refused one leaves a quarter to stream.
EXTEND_AT = Decimal(3) / 4
UNAVAILABLE = "unavailable"


class Meter:
    """One call's output against its allowance; ``add`` says whether the call may go on."""

    def __init__(self, job_id: str, model: ModelSpec, call: ChatCall, *, charge: bool,
                 prompt_excess: int = 0) -> None:
        self.job_id = job_id
        self.model = model
        self.prompt_tokens = pricing.prompt_tokens(call.messages)
        # Output tokens held for this call, and the most it may ever be held for.
        self.allowed = pricing.expected_output(model, call.max_tokens)
        self.cap = pricing.output_cap(model, call.max_tokens)
        # Credits held for this call: what the API held, plus every extension.
        self.held = model.cost(self.prompt_tokens, self.allowed)
        self.extensions = 0
        # Why the hold could not grow (the call stops once it has used what is held).
        self.refused: str | None = None
        self.stopped = False
        self._units = 0
        self._active = charge and self.allowed < self.cap
        if charge and prompt_excess > 0:
            self._hold_prompt(prompt_excess)
        self._next = self._threshold()

    def _hold_prompt(self, excess: int) -> None:
        """Hold the prompt tokens the plan did not foresee (earlier answers it quotes ran
        longer than held); if the job cannot, the answer gets that much less room."""
        credits = self.price(excess, self.model.input_per_mtok)
        outcome = extend(self.job_id, credits)
        if outcome == extension.OK:
            self.extensions += 1
            self.held += credits
            return
        self.refused, self._active = outcome, True
        lost = (credits / self.price(1)).to_integral_value(rounding=ROUND_CEILING)
        self.allowed = max(0, self.allowed - int(lost))

    def _threshold(self) -> int:
        """Bytes at which to act next: extend at three quarters, or stop at the end."""
        full = self.allowed * BYTES_PER_TOKEN
        return full if self.refused is not None else int(full * EXTEND_AT)

    def add(self, text: str, extra: int = 0) -> bool:
        """Count a delta (and ``extra`` bytes of tool-call arguments); False: stop now."""
        if not self._active:
            return True
        self._units += (len(text) if text.isascii() else len(text.encode())) + extra
        if self._units < self._next:
            return True
        return self._act()

    def trim(self, text: str) -> str:
        """The head of the delta that ``add`` stopped on which fits what is held."""
        over = self._units - self.allowed * BYTES_PER_TOKEN
        if over <= 0:
            return text
        if text.isascii():
            return text[: max(0, len(text) - over)]
        raw = text.encode()
        return raw[: max(0, len(raw) - over)].decode(errors="ignore")

    def _act(self) -> bool:
        if self.refused is not None:
            self.stopped = True
            return False
        chunk = min(self.allowed, self.cap - self.allowed)
        outcome = extend(self.job_id, self.price(chunk))
        if outcome == extension.OK:
            self.extensions += 1
            self.held += self.price(chunk)
            self.allowed += chunk
            if self.allowed >= self.cap:
                # Held for all the model may answer: the provider stops it there.
                self._active = False
        else:
            self.refused = outcome
        self._next = self._threshold()
        return self._units < self._next or self._act()

    def price(self, tokens: int, per_mtok: Decimal | None = None) -> Decimal:
        """Credits for ``tokens`` (output, unless ``per_mtok`` says), rounded up to the
        micro-credit the hold stores."""
        rate = self.model.output_per_mtok if per_mtok is None else per_mtok
        exact = rate * tokens / Decimal(1_000_000)
        return exact.quantize(QUANTUM, rounding=ROUND_CEILING)

    def top_up(self, cost: Decimal) -> None:
        """After the call: hold what its actual cost (the provider's count) exceeds its
        allowance by, so the job's charge, capped at its hold, is the whole cost."""
        if (self._metered and cost > self.held and self.refused is None
                and extend(self.job_id, cost - self.held) == extension.OK):
            self.extensions += 1
            self.held = cost

    @property
    def _metered(self) -> bool:
        return self._active or self.extensions > 0


def quoted_excess(texts: list[tuple[ModelSpec, str]], max_tokens: int | None) -> int:
    """Prompt tokens by which quoted answers (model, text) exceed what the plan held for
    them (``shared.plans`` quotes each answer at its expected length)."""
    return sum(max(0, pricing.estimate_tokens(text) - pricing.expected_output(m, max_tokens))
               for m, text in texts)


def extend(job_id: str, credits: Decimal) -> str:
    """Extend the job's hold by ``credits``: ``extension.OK`` or why not."""
    try:
        if is_postgres():
            with autocommit() as conn:
                return extension.extend(conn, job_id, credits).outcome
        with session_scope() as session:
            return extension.extend(session.connection(), job_id, credits).outcome
    except SQLAlchemyError:
        # Without the database the hold cannot grow: the call stops within what it has.
        log.exception("extending the hold of job %s failed", job_id)
        return UNAVAILABLE
