"""/v1/moderations: categories and flags for every key, spans and scores only for keys allowed to see them,
bounded input."""

from __future__ import annotations

from pathlib import Path

import pytest

TEXT = "Everyone knows Peter Parker from Queens."


@pytest.fixture
def keys_file(tmp_path: Path) -> Path:
    path = tmp_path / "keys.yaml"
    path.write_text("""tenants:
  analyst: {see_detections: true}
  app: {}
keys:
  - {key: sk-analyst-1, tenant: analyst}
  - {key: sk-app-0001, tenant: app}
""")
    return path


def test_spans_and_scores_only_for_tenants_allowed_to_see_them(gateway_for, keys_file: Path) -> None:
    with gateway_for(keys_file=keys_file) as (client, _):
        app = client.post("/v1/moderations", json={"input": TEXT}, headers={"authorization": "Bearer sk-app-0001"})
        analyst = client.post("/v1/moderations", json={"input": TEXT},
                              headers={"authorization": "Bearer sk-analyst-1"})  # fmt: skip
    plain, detailed = app.json(), analyst.json()
    assert plain["results"][0]["flagged"] and plain["results"][0]["categories"]["spider-man"]
    assert "quell" not in plain["results"][0] and all("@" not in p for p in plain["policies"])
    span = detailed["results"][0]["quell"]["detections"][0]["span"]
    assert TEXT[span[0] : span[1]] == "Peter Parker"


def test_too_much_text_in_all_is_413(gateway_for) -> None:
    with gateway_for(moderation_max_chars=1000) as (client, _):
        resp = client.post("/v1/moderations", json={"input": ["x" * 600, "y" * 600]})
    assert resp.status_code == 413 and resp.json()["error"]["param"] == "input"
