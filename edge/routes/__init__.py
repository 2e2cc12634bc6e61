"""One router per area; each module exposes `router` (and optionally BODY_LIMITS)."""
