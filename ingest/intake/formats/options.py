"""What a foreign score means: which score name is the thumbs, and which values are up or down.

    FormatOptions(score_name="user-feedback", up_at=4, down_at=2)   # a 1-5 star NUMERIC score
    FormatOptions(up_values=("helpful",), down_values=("unhelpful",))  # a CATEGORICAL score

The same rule reads every tool's value: a bool is itself; a number is up at or above `up_at` and down
at or below `down_at` (in between is neither: quarantined as bad_label); a string is up or down when it
is one of the configured values (any case), and bad_label otherwise.
"""

from __future__ import annotations

import math
from common.configfile import config
from ingest.intake.records import BadRow, describe
from ingest.schema import Reason

UP_VALUES = ("up", "thumbs_up", "thumbs-up", "thumbsup", "positive", "good", "true", "👍")
DOWN_VALUES = ("down", "thumbs_down", "thumbs-down", "thumbsdown", "negative", "bad", "false", "👎")


@config(frozen=True)
class FormatOptions:
    score_name: str = "thumbs"
    """Langfuse score `name`, LangSmith feedback `key`, OTel `gen_ai.evaluation.name` that holds the thumbs."""
    up_at: float = 1.0
    """A numeric score at or above this is a thumbs-up."""
    down_at: float = 0.0
    """A numeric score at or below this is a thumbs-down (-1 and 0 both are, by default)."""
    up_values: tuple[str, ...] = UP_VALUES
    """Categorical values (strings) that mean thumbs-up, compared case-insensitively."""
    down_values: tuple[str, ...] = DOWN_VALUES
    """Categorical values that mean thumbs-down."""
    openai_metadata_key: str = "thumbs"
    """For `--format openai`: the stored completion's `metadata` key that holds the thumbs."""

    def __post_init__(self):
        if not self.score_name:
            raise ValueError("score_name must not be empty: set --score-name to the name your tool gives the thumbs")
        if not self.down_at < self.up_at:
            raise ValueError(f"down_at ({self.down_at}) must be below up_at ({self.up_at}): "
                             "set --down-at and --up-at so that no score is both")
        up = {v.strip().lower() for v in self.up_values}
        down = {v.strip().lower() for v in self.down_values}
        if up & down:
            raise ValueError(f"values {sorted(up & down)} are in both --up-values and --down-values")
        object.__setattr__(self, "_up", frozenset(up))
        object.__setattr__(self, "_down", frozenset(down))

    def decide(self, value, what: str = "score") -> bool:
        """True for a thumbs-up, False for a thumbs-down; BadRow(bad_label) for anything else."""
        if isinstance(value, bool):
            return value
        if isinstance(value, (int, float)):
            if math.isfinite(value):
                if value >= self.up_at:
                    return True
                if value <= self.down_at:
                    return False
            raise BadRow(Reason.BAD_LABEL, f"{what}: {describe(value)} is neither >= --up-at {self.up_at:g} "
                                           f"nor <= --down-at {self.down_at:g}")
        if isinstance(value, str):
            folded = value.strip().lower()
            if folded in self._up:
                return True
            if folded in self._down:
                return False
            raise BadRow(Reason.BAD_LABEL, f"{what}: {describe(value)} is in neither --up-values nor "
                                           "--down-values")
        raise BadRow(Reason.BAD_LABEL, f"{what} is a JSON {type(value).__name__}, not a bool, number or string")
