"""A schema-driven fuzzer (schemathesis) over edge's own OpenAPI document: every operation gets a bounded
number of generated requests (valid ones, then invalid ones; a fixed seed, derandomised; against a live
server on loopback and the test database, so nothing leaves the machine), and none may answer 5xx.

The signed-in operations are called with an admin's token (so generated requests reach the handlers and
the database, not only the 401), the public ones exactly as the document describes them.

(schemathesis' own pytest plugin does not run under this pytest; its strategies are driven with
Hypothesis directly, which is what the plugin does.)"""

from __future__ import annotations

from collections import Counter

import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.config import SchemathesisConfig

from .conftest import token_for

MAX_EXAMPLES = 25  # per operation and generation mode
SEED = 20261203


def _load(base: str):
    config = SchemathesisConfig.from_dict({"seed": SEED, "generation": {"max-examples": MAX_EXAMPLES,
                                                                         "deterministic": True}})
    schema = schemathesis.openapi.from_url(f"{base}/openapi.json", config=config)
    schema.config.base_url = base
    return schema


def _signed_in(operation) -> bool:
    return any("bearerAuth" in s for s in operation.definition.raw.get("security") or [])


def test_no_operation_answers_5xx(live_server, conn, monkeypatch):
    # A deployed server has its Meta secrets; without them the Lead Ads webhook answers 503 on purpose
    # (and `luna up` / `luna api` say so at start-up: luna.up.missing_secrets).
    monkeypatch.setenv("LUNA_META_APP_SECRET", "fuzz-meta-secret")
    monkeypatch.setenv("LUNA_META_VERIFY_TOKEN", "fuzz-verify-token")
    token = token_for(conn, "admin@demo.luna.local")
    schema = _load(live_server)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 15
    server_errors: list[str] = []
    statuses: dict[str, Counter] = {}

    for operation in operations:
        headers = {"Authorization": f"Bearer {token}"} if _signed_in(operation) else {}
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            seen = statuses.setdefault(f"{operation.label} {mode.value}", Counter())

            @settings(max_examples=MAX_EXAMPLES, derandomize=True, database=None, deadline=None,
                      phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
            @given(case=operation.as_strategy(generation_mode=mode))
            def run(case):
                response = case.call(headers=headers, timeout=20)
                seen[response.status_code] += 1
                if response.status_code >= 500:
                    server_errors.append(f"{response.status_code} {case.method} {case.formatted_path} "
                                         f"query={case.query} headers={case.headers} body={case.body!r:.200} "
                                         f"-> {response.text[:300]}")

            try:
                run()
            except Unsatisfiable:  # nothing to make invalid (no parameters, no body): the valid cases ran
                assert mode is GenerationMode.NEGATIVE, operation.label

    total = sum(sum(c.values()) for c in statuses.values())
    print(f"\n{total} generated requests")
    for label, counts in statuses.items():
        print(f"  {label}: {dict(sorted(counts.items()))}")
    assert total >= len(operations) * 10
    assert server_errors == [], "\n".join(server_errors[:20])
